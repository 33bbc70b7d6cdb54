// Running another of our programs (ch-run, most often) as a child: the same executable, with
// argv[0] naming the program, as the symlinks do.
import { isSea } from "node:sea";

export interface SelfCommand {
  /** The file to execute. */
  file: string;
  /** Arguments that come before the program's own (the script, when not a single executable). */
  prefix: string[];
  /** argv[0], which picks the program (see main.ts). */
  argv0: string;
}

export function selfCommand(program: string): SelfCommand {
  if (isSea()) return { file: process.execPath, prefix: [], argv0: program };
  // node dist/ch.cjs, or a .ts entry under a loader: the script and Node's own options.
  return { file: process.execPath, prefix: [...process.execArgv, process.argv[1]], argv0: program };
}

/** Given to the bundle by the executable's loader (src/sea-main.cjs); absent under plain Node. */
declare const __chLoader: LoaderInfo | undefined;

export interface LoaderInfo {
  codeCache: string;
  bundle: string;
  /** ch-run: the key of a launch to remember (container/memo.ts), when none was replayed. */
  memo?: { key: string; slot: string } | null;
}

/** What the executable's loader ran: which bundle ("ch", every program; "ch-run", ch-run alone)
 * and whether V8 took its code cache ("accepted", "rejected", "none": an executable without one);
 * null when not run by the executable's loader. */
export function loaderInfo(): LoaderInfo | null {
  return typeof __chLoader === "undefined" ? null : __chLoader;
}
