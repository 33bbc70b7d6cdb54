/** Content to keep in a private directory (private-file.cjs). */
export interface PrivateContent {
  /** What it is, for messages ("native module"). */
  what: string;
  /** The file's name in the directory. */
  name: string;
  sha256: string;
  bytes(): Uint8Array;
  mode: number;
}

/** Calls use(file, why) in each usable private directory in turn until it returns something
 * other than undefined (why: reasons so far, to add to); returns that. */
export function withPrivateFile<T>(c: PrivateContent, use: (file: string, why: string[]) => T | undefined): T;
/** Where a private file was found, and its identity() then. */
export interface PrivateFileAt {
  file: string;
  stamp: string;
}
/** The exports of the Node-API module c, loaded from the first private directory where it loads;
 * `at` (a remembered launch's: where it was, as it was) first; seen() told where. */
export function loadPrivateModule(
  c: PrivateContent,
  at?: PrivateFileAt | null,
  seen?: (file: string, stamp: string) => void,
): unknown;
export function sha256(buf: Uint8Array): string;
/** Writes file whole: aside (a name unique across hosts), then renamed into place. */
export function writeAtomically(file: string, data: string | Uint8Array, mode?: number): void;
/** The private directories to try, in order: [path, whether to make its parents]. */
export function candidates(): [string, boolean][];
/** Why the existing directory can't be a private one of ours, or null; throws if it can't be
 * looked at. */
export function usableDir(dir: string): string | null;
/** The stamp of file as verified to hold the content whose SHA-256 is `expected`: what
 * identifies it without reading it (throws if another user owns it). */
export function identity(file: string, expected: string): string;
