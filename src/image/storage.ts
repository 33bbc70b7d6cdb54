// ch-image storage: where images live and how names map to directories.
//
// The storage directory is trusted: what is in it is run (images) and unpacked (the download
// cache). So it must be the user's own, and writable by no one else: the default,
// /var/tmp/$USER.ch, is in a world-writable directory, where another user can make it first.
// Every use checks the directory and the parts of it we use (lstat: a symlink planted in its
// place is not followed), and a storage directory is made only when something is about to be
// written in it, so that a failing command leaves none behind.

import {
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  type Stats,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { hostname } from "node:os";
import { posix } from "node:path";
import { info } from "../cli/log.ts";
import { parseRef, storageName } from "../registry/reference.ts";
import { ChError, sysError } from "../sys/errors.ts";
import { startTime } from "../sys/proc.ts";
import { forceRemove, isPartialName, partialPath } from "./install.ts";

/** The storage directory: -s, else $CH_IMAGE_STORAGE, else /var/tmp/$USER.ch. */
export function storageDir(option: string | null, env: Record<string, string | undefined>, user: string): string {
  if (option) return posix.resolve(option);
  if (env.CH_IMAGE_STORAGE) return posix.resolve(env.CH_IMAGE_STORAGE);
  return `/var/tmp/${user}.ch`;
}

/** Directory name of an image reference in storage: "/" becomes "%", ":" becomes "+". */
export function nameToDir(name: string): string {
  return name.replaceAll("/", "%").replaceAll(":", "+");
}

export function dirToName(dir: string): string {
  return dir.replaceAll("%", "/").replaceAll("+", ":");
}

/** The directory of an image in storage; name must be a storage name (see imageName()). */
export function imagePath(storage: string, name: string): string {
  return posix.join(storage, "img", nameToDir(name));
}

const REF_SYNTAX = "[HOST[:PORT]/][PATH/]NAME[:TAG][@sha256:DIGEST]";

/** The one check of an image name given anywhere (ch-image, ch-convert, ch-run, the builder):
 * returns the name in storage of image reference `text` (storageName(): equivalent spellings
 * give one name), or throws a ChError if `text` is no reference. "%" and "+", which stand for "/"
 * and ":" in directory names, are refused, and so is anything that would be an odd directory. */
export function imageName(text: string): string {
  const invalid = (why: string) => new ChError(`invalid image name: ${text === "" ? '""' : text}: ${why}`);
  if (text === "") throw invalid(`empty (expected ${REF_SYNTAX})`);
  if (/[%+]/.test(text)) throw invalid(`"%" and "+" are not allowed (expected ${REF_SYNTAX})`);
  let name: string;
  try {
    name = storageName(parseRef(text));
  } catch (e) {
    if (e instanceof ChError) throw invalid(e.message);
    throw e;
  }
  // Belt and braces: what the grammar allows is always one plain directory name.
  const dir = nameToDir(name);
  if (dir.startsWith(".") || dir.includes("\0") || isPartialName(dir)) throw invalid(`not usable as a directory name: ${dir}`);
  return name;
}

/** Whether text is a valid image name (imageName() accepts it). */
export function validImageName(text: string): boolean {
  try {
    imageName(text);
    return true;
  } catch {
    return false;
  }
}

// ---- Who may have written it. ----

/** What unsafe() looks at, as lstat gives it (injectable for tests). */
export type StatFacts = Pick<Stats, "uid" | "mode" | "isDirectory" | "isFile" | "isSymbolicLink">;

/** Why a part of storage (lstat facts st) can't be trusted by user uid, or null if it can: it
 * must be a directory (or a regular file), not a symlink, owned by uid, and writable by neither
 * group nor others. */
export function unsafe(st: StatFacts, uid: number, kind: "directory" | "file"): string | null {
  if (st.isSymbolicLink()) return "is a symbolic link";
  if (kind === "directory" && !st.isDirectory()) return "is not a directory";
  if (kind === "file" && !st.isFile()) return "is not a regular file";
  if (st.uid !== uid) return `is owned by UID ${st.uid}, not by you (UID ${uid})`;
  const w = st.mode & 0o022;
  if (w !== 0) {
    const who = w === 0o022 ? "group and others" : w === 0o020 ? "group" : "others";
    return `is writable by ${who} (mode ${(st.mode & 0o7777).toString(8).padStart(4, "0")})`;
  }
  return null;
}

/** What to do about an unsafe storage part. */
function advice(reason: string, path: string): string {
  if (reason.startsWith("is writable")) return `fix: chmod go-w ${path}`;
  if (reason.startsWith("is owned"))
    return "someone else may have made it: use another storage directory (-s DIR or $CH_IMAGE_STORAGE)";
  return "use another storage directory (-s DIR or $CH_IMAGE_STORAGE), or remove it";
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw sysError(`can't use storage directory: ${path}`, e);
  }
}

// ---- Storage directory: version file, lock, images. ----

/** Layout version of the storage directory; a different one is refused. */
export const STORAGE_VERSION = "1";

/** Directories of the storage directory that are checked when there. */
const SUBDIRS = ["img", "dlcache", "tmp", "mnt"];
/** Files of the storage directory that are checked when there. */
const FILES = ["version", "lock"];

export class Storage {
  readonly root: string;
  private readonly uid: number;
  private lockPath: string | null = null;
  /** Whether the storage directory has been checked and exists (null: not checked yet). */
  private state: boolean | null = null;

  constructor(root: string, uid = process.geteuid?.() ?? 0) {
    this.root = root;
    this.uid = uid;
  }

  get imgDir(): string {
    return posix.join(this.root, "img");
  }

  private get versionFile(): string {
    return posix.join(this.root, "version");
  }

  /** Throws unless path (lstat facts st) is safe for us to use. */
  private checkPart(path: string, st: StatFacts, kind: "directory" | "file"): void {
    const why = unsafe(st, this.uid, kind);
    if (why) throw new ChError(`storage directory unusable: ${path} ${why}; ${advice(why, path)}`);
  }

  /** Throws if the storage directory is there but not safe to use: not ours, writable by
   * others, or so are the parts of it we use (see unsafe(); a symlink of ours is followed, one of
   * another user's is refused). Returns its entries, or null if it isn't there. Checks no
   * version: ch-run, which only reads images by name, needs no more. */
  safe(): string[] | null {
    const st = lstatOrNull(this.root);
    if (st === null) return null;
    if (st.isSymbolicLink()) {
      if (st.uid !== this.uid)
        throw new ChError(
          `storage directory unusable: ${this.root} is a symbolic link of UID ${st.uid}, not yours (UID ${this.uid}); ${advice("is owned", this.root)}`,
        );
      let target: Stats;
      try {
        target = statSync(this.root);
      } catch (e) {
        throw sysError(`can't use storage directory: ${this.root}`, e);
      }
      this.checkPart(this.root, target, "directory");
    } else this.checkPart(this.root, st, "directory");
    let entries: string[];
    try {
      entries = readdirSync(this.root);
    } catch (e) {
      throw sysError(`can't read storage directory: ${this.root}`, e);
    }
    for (const e of entries) {
      const kind = SUBDIRS.includes(e) ? "directory" : FILES.includes(e) ? "file" : null;
      if (kind === null) continue;
      const path = posix.join(this.root, e);
      const sub = lstatOrNull(path);
      if (sub) this.checkPart(path, sub, kind);
    }
    return entries;
  }

  /** Whether the storage directory exists, creating nothing; throws if it exists but is not
   * safe to use (see safe()) or is not a storage directory of this version. */
  exists(): boolean {
    if (this.state !== null) return this.state;
    const entries = this.safe();
    if (entries === null) return false;
    // ch-run makes STORAGE/mnt (SquashFS images' mount point) without making a storage: a
    // directory holding nothing else is still new.
    if (entries.some((e) => e !== "mnt")) {
      if (!entries.includes("version")) throw new ChError(`storage directory seems invalid (no version file): ${this.root}`);
      let v: string;
      try {
        v = readFileSync(this.versionFile, "utf8").trim();
      } catch (e) {
        throw sysError(`can't read: ${this.versionFile}`, e);
      }
      if (v !== STORAGE_VERSION)
        throw new ChError(`incompatible storage directory v${v} (need v${STORAGE_VERSION}): ${this.root}; try "ch-image reset"`);
    }
    this.state = true;
    return true;
  }

  /** Makes the storage directory ready to write in: checked, and created (with its version file
   * and img/) if it isn't there. Call only when something is about to be written. */
  init(): void {
    if (!this.exists()) {
      try {
        mkdirSync(posix.dirname(this.root), { recursive: true, mode: 0o755 });
        mkdirSync(this.root, { mode: 0o700 });
      } catch (e) {
        // Made meanwhile: exists() below says whose it is.
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw sysError(`can't create storage directory: ${this.root}`, e);
      }
      this.state = null;
      this.exists();
    }
    if (lstatOrNull(this.versionFile) === null) {
      try {
        mkdirSync(this.imgDir, { recursive: true, mode: 0o755 });
        writeFileAtomic(this.versionFile, `${STORAGE_VERSION}\n`);
      } catch (e) {
        throw sysError(`can't initialize storage directory: ${this.root}`, e);
      }
      info(`initialized storage directory: ${this.root}`);
      return;
    }
    try {
      mkdirSync(this.imgDir, { mode: 0o755 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw sysError(`can't create: ${this.imgDir}`, e);
    }
  }

  /** Takes the storage lock (a file holding HOST PID); a lock left by a dead process on this
   * host is taken over. Released at exit. The storage directory must exist (init()). */
  lock(): void {
    if (this.lockPath !== null) return; // held already (a build pulls its base images, then builds)
    const path = posix.join(this.root, "lock");
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(path, "wx", 0o644);
        writeSync(fd, `${hostname()} ${process.pid} ${startTime(process.pid)}\n`);
        closeSync(fd);
        this.lockPath = path;
        process.once("exit", () => this.unlock());
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw sysError(`can't lock storage: ${path}`, e);
      }
      const [host, pid, start] = readLock(path);
      // Stale: its process is gone, a zombie, or a later one with the same PID.
      const now = pid > 0 ? startTime(pid) : null;
      if (host === hostname() && pid > 0 && (now === null || (start !== null && now !== start))) {
        info(`removing stale storage lock of PID ${pid}`);
        unlinkSync(path);
        continue;
      }
      throw new ChError(`storage is locked by PID ${pid} on ${host} (another ch-image running?): ${path}`);
    }
    throw new ChError(`can't lock storage: ${path}`);
  }

  unlock(): void {
    if (!this.lockPath) return;
    try {
      unlinkSync(this.lockPath);
    } catch {
      // already gone
    }
    this.lockPath = null;
  }

  /** The directory of image `name`, any spelling of its reference; throws if it is none. */
  imagePath(name: string): string {
    return imagePath(this.root, imageName(name));
  }

  /** Whether image `name` (any spelling) is in storage; false for an invalid name. Throws if
   * the storage directory is unsafe (see exists()). */
  has(name: string): boolean {
    if (!validImageName(name) || !this.exists()) return false;
    try {
      return lstatSync(this.imagePath(name)).isDirectory();
    } catch {
      return false;
    }
  }

  /** Names of the images stored, sorted. */
  list(): string[] {
    if (!this.exists() || lstatOrNull(this.imgDir) === null) return [];
    return readdirSync(this.imgDir)
      .filter((d) => !isPartialName(d))
      .map(dirToName)
      .sort();
  }

  /** Deletes an image: renamed aside first, so that it disappears at once. Takes the lock. */
  delete(name: string): void {
    if (!this.has(name)) throw new ChError(`no image to delete: ${name}`);
    this.init();
    this.lock();
    const dir = this.imagePath(name);
    const aside = partialPath(dir, ".old");
    renameSync(dir, aside);
    forceRemove(aside);
  }

  /** Removes the whole storage directory, if it is a safe one of ours. */
  reset(): void {
    const st = lstatOrNull(this.root);
    if (st === null) return;
    if (st.isSymbolicLink()) throw new ChError(`not deleting a symbolic link: ${this.root}; delete it or its target yourself`);
    this.checkPart(this.root, st, "directory");
    const entries = readdirSync(this.root);
    if (entries.length > 0 && !entries.includes("version"))
      throw new ChError(`not a storage directory, not deleting: ${this.root}`);
    info(`deleting storage directory: ${this.root}`);
    forceRemove(this.root);
    this.state = null;
  }
}

function writeFileAtomic(path: string, text: string): void {
  const fd = openSync(path, "wx", 0o644);
  writeSync(fd, text);
  closeSync(fd);
}

function readLock(path: string): [string, number, string | null] {
  try {
    const [host = "?", pid = "0", start] = readFileSync(path, "utf8").trim().split(/\s+/);
    return [host, Number(pid) || 0, start ?? null];
  } catch {
    return ["?", 0, null];
  }
}
