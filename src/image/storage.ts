// ch-image storage: where images live and how names map to directories.
//
// The layout is Charliecloud's storage version 7 (Charliecloud 0.39's), so that one storage
// directory serves both tools, each reading what the other wrote:
//   version   "7"
//   img/      images, one directory each, named by reference: "/" is "%", ":" is "+"
//   dlcache/  download cache (ours: sha256-HEX blobs; Charliecloud's own files are left alone)
//   ulcache/  push's temporary files
//   bucache/  Charliecloud's build cache (a Git repository), bularge/ its large files: made
//             empty when we make a storage directory (Charliecloud requires them), never
//             touched otherwise, except that `list -u` reads the names of deleted images there
//   lock      the storage lock: fcntl(2), as Charliecloud's lockf(), so each excludes the other
//   mnt/      SquashFS mount point (ch-run)
// Charliecloud refuses a storage directory with anything else at its top, so we make nothing
// else there. Our own storage version 1 (img/, dlcache/, tmp/) is upgraded to version 7 in
// place when ch-image or ch-convert first uses it: image directories are renamed to the names
// of their references in storage (img/busybox becomes img/busybox+latest).
//
// The storage directory is trusted: what is in it is run (images) and unpacked (the download
// cache). So it must be the user's own, and writable by no one else: the default,
// /var/tmp/$USER.ch, is in a world-writable directory, where another user can make it first.
// Every use checks the directory and the parts of it we use (lstat: a symlink planted in its
// place is not followed), and a storage directory is made only when something is about to be
// written in it, so that a failing command leaves none behind.

import {
  closeSync,
  constants,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmdirSync,
  rmSync,
  type Stats,
  statSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { posix } from "node:path";
import { info, verbose } from "../cli/log.ts";
import { parseRef, refString, storageName } from "../registry/reference.ts";
import { ChError, errorOut, formatError, sysError, warn } from "../sys/errors.ts";
import { LibcError, libc } from "../sys/libc.ts";
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

/** Layout version of the storage directory: Charliecloud's version 7. */
export const STORAGE_VERSION = "7";
/** Our own earlier layout, upgraded in place (see the top of this file). */
const OLD_VERSION = "1";

/** What a version 7 storage directory must have (Charliecloud checks), made if missing. */
const LAYOUT = ["img", "dlcache", "ulcache", "bucache", "bularge"];
/** Directories of the storage directory that we use, checked when there. */
const SUBDIRS = ["img", "dlcache", "ulcache", "mnt"];
/** Files of the storage directory that we use, checked when there. */
const FILES = ["version", "lock"];

/** The build cache in a storage directory (builder/cache.ts): in dlcache/, where Charliecloud
 * reads nothing it didn't write. */
export const BUILD_CACHE_DIR = "dlcache/build-cache";

/** Before an image in storage is changed other than by ch-image build (ch-run -w --unsafe,
 * ch-fromhost): the build cache forgets the state it recorded the image as holding, so the next
 * build makes the image whole again instead of trusting it (an all-hit rebuild would keep the
 * change, an update in place would mix both), and a build FROM it makes a new copy of it
 * (imageChanges()). `root` is the image's real path; nothing happens if it is not an image
 * directory of `storage`. */
export function forgetBuiltState(storage: string, root: string): void {
  const stores = [storage];
  try {
    stores.push(realpathSync(storage));
    // Nothing is written in a storage directory that isn't ours alone (ch-run by path checks
    // none): another user could have put a symlink where the build cache's records go.
    if (new Storage(storage).safe() === null) return;
  } catch {
    return; // no storage directory, or not ours: no build cache of ours either
  }
  for (const s of stores) {
    const img = `${s}/img/`;
    if (!root.startsWith(img)) continue;
    const dir = root.slice(img.length);
    if (dir === "" || dir.includes("/") || dir.startsWith(".")) return;
    const cache = `${s}/${BUILD_CACHE_DIR}`;
    try {
      unlinkSync(`${cache}/tags/${dir}.json`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT")
        throw sysError(`can't update the build cache's record of image ${dir}`, e);
    }
    // A build FROM this image must not reuse the copy it made of it before (imageChanges()).
    if (!lstatSync(cache, { throwIfNoEntry: false })?.isDirectory()) return;
    const file = `${cache}/changed/${dir}`;
    // Written aside under a name no image directory has (none starts with "."): DIR.PID is
    // image DIR.PID's own record (tag "latest.123"), which this would overwrite, then remove.
    const aside = `${cache}/changed/.${dir}.${process.pid}`;
    try {
      mkdirSync(`${cache}/changed`, { recursive: true, mode: 0o700 });
      writeFileSync(aside, `${Date.now()} ${process.pid} ${Math.random()}\n`, { mode: 0o600 });
      renameSync(aside, file);
    } catch (e) {
      throw sysError(`can't update the build cache: ${file}`, e);
    }
    return;
  }
}

/** What forgetBuiltState() last wrote for image directory `dir` ("" if nothing): part of the key
 * of a build FROM that image, so that a change made in place (ch-run -w, ch-fromhost) misses. */
export function imageChanges(cacheDir: string, dir: string): string {
  try {
    return readFileSync(`${cacheDir}/changed/${dir}`, "utf8");
  } catch {
    return "";
  }
}

/** Whether glob has any of the glob characters * ? [. */
export function isGlob(text: string): boolean {
  return /[*?[]/.test(text);
}

/** A regular expression for a shell glob as Python's fnmatch reads it: * any characters, ? one,
 * [SET] and [!SET] one of (not of) a set; everything else literal. */
export function globRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") re += "[^]*";
    else if (c === "?") re += "[^]";
    else if (c === "[") {
      let j = i + 1;
      if (glob[j] === "!") j++;
      if (glob[j] === "]") j++;
      j = glob.indexOf("]", j);
      if (j < 0) re += "\\[";
      else {
        let set = glob.slice(i + 1, j);
        const negated = set.startsWith("!");
        if (negated) set = set.slice(1);
        re += `[${negated ? "^" : ""}${set.replace(/[\\^\]]/g, (x) => `\\${x}`)}]`;
        i = j;
      }
    } else re += c.replace(/[.*+?^${}()|[\]\\/-]/g, (x) => `\\${x}`);
  }
  return new RegExp(`^${re}$`);
}

/** The directory name of text as Charliecloud spells it: the reference as written. */
function writtenDir(text: string): string {
  return nameToDir(refString(parseRef(text)));
}

/** The storage name of a directory in img/, or null if it is no image's. */
function dirStorageName(dir: string): string | null {
  if (dir.startsWith(".") || isPartialName(dir)) return null;
  try {
    return storageName(parseRef(dirToName(dir)));
  } catch {
    return null;
  }
}

export interface StorageOptions {
  /** Owner the storage must have (default: our effective UID). */
  uid?: number;
  /** Upgrade our own storage version 1 to version 7 when found (ch-image, ch-convert); without,
   * version 1 is only read (ch-run). */
  upgrade?: boolean;
}

export class Storage {
  readonly root: string;
  private readonly uid: number;
  private readonly upgrade: boolean;
  /** Descriptor of the lock file while we hold the lock. */
  private lockFd: number | null = null;
  /** Whether the storage directory has been checked and exists (null: not checked yet). */
  private state: boolean | null = null;
  /** Its version, once checked (null: none yet, a new storage directory). */
  private version: string | null = null;

  constructor(root: string, opts: StorageOptions = {}) {
    this.root = root;
    this.uid = opts.uid ?? process.geteuid?.() ?? 0;
    this.upgrade = opts.upgrade ?? false;
  }

  get imgDir(): string {
    return posix.join(this.root, "img");
  }

  /** Where push writes its temporary files. */
  get uploadDir(): string {
    return posix.join(this.root, "ulcache");
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

  /** The version in the version file. */
  private readVersion(): string {
    try {
      return readFileSync(this.versionFile, "utf8").trim();
    } catch (e) {
      throw sysError(`can't read: ${this.versionFile}`, e);
    }
  }

  /** The error for a storage directory of a version we don't read. Says what `ch-image reset`
   * would delete rather than advising it. */
  private incompatible(v: string): ChError {
    const newer = /^\d+$/.test(v) && Number(v) > Number(STORAGE_VERSION);
    const what = newer
      ? `made by a newer Charliecloud; this ch-image reads v${STORAGE_VERSION} (Charliecloud 0.39's)`
      : `this ch-image reads v${STORAGE_VERSION} (Charliecloud 0.39's layout; Charliecloud's own ch-image upgrades older ones in place, keeping the images)`;
    return new ChError(
      `incompatible storage directory v${v}: ${this.root}: ${what}; or use another storage directory (-s DIR or $CH_IMAGE_STORAGE); "ch-image reset" would delete it with all its images and caches`,
    );
  }

  /** Whether the storage directory exists, creating nothing; throws if it exists but is not
   * safe to use (see safe()) or is not a storage directory of a version we read. Our version 1
   * is upgraded here if this Storage was made with `upgrade`. */
  exists(): boolean {
    if (this.state !== null) return this.state;
    const entries = this.safe();
    if (entries === null) return false;
    // ch-run made STORAGE/mnt alone (SquashFS images' mount point) before it made whole storage
    // directories: a directory holding nothing else (or a lock) is still new.
    if (entries.some((e) => e !== "mnt" && e !== "lock")) {
      if (!entries.includes("version"))
        throw new ChError(
          `storage directory seems invalid (no version file): ${this.root}; if it is not a storage directory, use -s DIR or $CH_IMAGE_STORAGE for another one`,
        );
      const v = this.readVersion();
      if (v !== STORAGE_VERSION && v !== OLD_VERSION) throw this.incompatible(v);
      this.version = v;
    }
    this.state = true;
    if (this.version === OLD_VERSION && this.upgrade) this.migrate();
    return true;
  }

  /** Makes the storage directory ready to write in: checked, and created if it isn't there,
   * with the whole version 7 layout (Charliecloud's ch-image accepts it as its own); our version
   * 1 is upgraded. Takes the lock. Call only when something is about to be written. */
  init(opts: { quiet?: boolean } = {}): void {
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
    this.lock();
    if (this.version === OLD_VERSION) this.migrate();
    if (this.version === null) {
      // The version first: a run killed while making the layout leaves a storage directory
      // that the next run recognizes and completes (makeLayout() makes what is missing).
      try {
        writeFileAtomic(this.versionFile, `${STORAGE_VERSION}\n`);
      } catch (e) {
        throw sysError(`can't initialize storage directory: ${this.root}`, e);
      }
      this.version = STORAGE_VERSION;
      (opts.quiet ? verbose : info)(`initialized storage directory: v${STORAGE_VERSION} ${this.root}`);
    }
    this.makeLayout();
  }

  /** Makes the directories of the version 7 layout that are missing. */
  private makeLayout(): void {
    for (const d of LAYOUT) {
      const path = posix.join(this.root, d);
      try {
        mkdirSync(path, { mode: 0o755 });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw sysError(`can't create: ${path}`, e);
        const st = lstatOrNull(path);
        if (!st?.isDirectory()) throw new ChError(`storage directory unusable: ${path} is not a directory`);
      }
    }
  }

  /** Upgrades our storage version 1 to version 7 (the lock is taken): image directories are
   * renamed to their storage names (img/busybox to img/busybox+latest), unless one of that name
   * is there already; tmp/ (push's temporary tarball) is removed; the missing directories are
   * made; the version file says 7. What is done is said. */
  private migrate(): void {
    this.lock();
    info(`upgrading storage directory v${OLD_VERSION} to v${STORAGE_VERSION} (Charliecloud's layout): ${this.root}`);
    let dirs: string[] = [];
    try {
      dirs = readdirSync(this.imgDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw sysError(`can't read: ${this.imgDir}`, e);
    }
    for (const d of dirs.sort()) {
      const name = dirStorageName(d);
      if (name === null || nameToDir(name) === d) continue;
      const from = posix.join(this.imgDir, d);
      const to = posix.join(this.imgDir, nameToDir(name));
      if (!lstatSync(from).isDirectory()) continue;
      if (lstatOrNull(to) !== null) {
        warn(`not renaming image img/${d}: img/${nameToDir(name)} exists (both kept; ${dirToName(d)} names the first)`);
        continue;
      }
      try {
        renameSync(from, to);
      } catch (e) {
        throw sysError(`can't rename image: ${from} -> ${to}`, e);
      }
      info(`renamed image: img/${d} -> img/${nameToDir(name)}`);
    }
    const tmp = posix.join(this.root, "tmp");
    if (lstatOrNull(tmp)?.isDirectory()) {
      rmSync(posix.join(tmp, "push-layer.tar.gz"), { force: true });
      try {
        rmdirSync(tmp);
        info("removed tmp/ (push's temporary directory; push now uses ulcache/)");
      } catch {
        warn(`left in place, not empty: ${tmp} (Charliecloud refuses a storage directory with it: look inside, then remove it)`);
      }
    }
    this.makeLayout();
    const next = partialPath(this.versionFile);
    try {
      writeFileAtomic(next, `${STORAGE_VERSION}\n`);
      renameSync(next, this.versionFile);
    } catch (e) {
      rmSync(next, { force: true });
      throw sysError(`can't write: ${this.versionFile}`, e);
    }
    this.version = STORAGE_VERSION;
  }

  /** Takes the storage lock, as Charliecloud does: an exclusive fcntl(2) lock on STORAGE/lock,
   * which ends with the process (no stale lock to clean up); the file stays. The storage
   * directory must exist. Needs libc (loadLibc()). */
  lock(): void {
    if (this.lockFd !== null) return;
    const path = posix.join(this.root, "lock");
    let fd: number;
    try {
      fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o644);
    } catch (e) {
      throw sysError(`can't lock storage directory: ${path}`, e);
    }
    let got: boolean;
    try {
      got = libc().lockExclusive(fd);
    } catch (e) {
      closeSync(fd);
      if (e instanceof LibcError) throw new ChError(`can't lock storage directory: ${path}`, { errno: e.errno });
      throw e;
    }
    if (!got) {
      closeSync(fd);
      throw new ChError(
        `storage directory is already in use: ${this.root} (by another ch-image, ours or Charliecloud's: concurrent instances can't share one storage directory)`,
      );
    }
    this.lockFd = fd;
  }

  /** Releases the lock (the lock file stays, as Charliecloud leaves it). */
  unlock(): void {
    if (this.lockFd === null) return;
    try {
      closeSync(this.lockFd);
    } catch {
      // already closed
    }
    this.lockFd = null;
  }

  /** The image directory names in img/, not counting partial ones. */
  private entries(): string[] {
    try {
      return readdirSync(this.imgDir).filter((d) => !d.startsWith(".") && !isPartialName(d));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT" || (e as NodeJS.ErrnoException).code === "ENOTDIR") return [];
      throw sysError(`can't read: ${this.imgDir}`, e);
    }
  }

  /** The directory of image `text` (any spelling of its reference) in img/, or null if there
   * is none or text is no image name. Looks for, in order: the reference as written (how
   * Charliecloud names it: busybox is img/busybox), its storage name (img/busybox+latest, how
   * we name it), and any other spelling of it (img/docker.io%library%busybox+latest); two of
   * those last is an error. Symbolic links in img/ are not images. An image found is returned
   * only from a storage directory that is safe (see safe(); its version is not checked: ch-run
   * needs no more). */
  find(text: string): string | null {
    if (!validImageName(text)) return null;
    const name = imageName(text);
    const isImage = (d: string) => {
      try {
        return lstatSync(posix.join(this.imgDir, d)).isDirectory();
      } catch {
        return false;
      }
    };
    let found = [writtenDir(text), nameToDir(name)].find(isImage) ?? null;
    if (found === null) {
      let all: string[];
      try {
        all = readdirSync(this.imgDir);
      } catch {
        return null;
      }
      const others = all.filter((d) => dirStorageName(d) === name && isImage(d));
      if (others.length > 1)
        throw new ChError(
          `image name is ambiguous: ${text} is each of ${others.map((d) => `img/${d}`).join(", ")}; give the name as stored`,
        );
      if (others.length === 0) return null;
      found = others[0];
    }
    if (this.state !== true) this.safe();
    return posix.join(this.imgDir, found);
  }

  /** The directory of image `name` (any spelling of its reference): where it is (find()), else
   * where a new one goes; throws if name is no image name. */
  imagePath(name: string): string {
    const normal = imagePath(this.root, imageName(name));
    if (!this.exists()) return normal;
    return this.find(name) ?? normal;
  }

  /** Whether image `name` (any spelling) is in storage; false for an invalid name. Throws if
   * the storage directory is unsafe (see exists()). */
  has(name: string): boolean {
    if (!validImageName(name) || !this.exists()) return false;
    return this.find(name) !== null;
  }

  /** Names of the images stored, sorted. */
  list(): string[] {
    if (!this.exists()) return [];
    return this.entries().map(dirToName).sort();
  }

  /** Names of the images deleted that Charliecloud's build cache could restore (its "undelete"):
   * tags "&NAME" in bucache/, read only. */
  undeletable(): string[] {
    if (!this.exists()) return [];
    const bucache = posix.join(this.root, "bucache");
    const names = new Set<string>();
    try {
      for (const t of readdirSync(posix.join(bucache, "refs/tags"))) if (t.startsWith("&")) names.add(t.slice(1));
    } catch {
      // no build cache, or no tags
    }
    try {
      for (const line of readFileSync(posix.join(bucache, "packed-refs"), "utf8").split("\n")) {
        const m = /^[0-9a-f]+ refs\/tags\/&(.+)$/.exec(line);
        if (m) names.add(m[1]);
      }
    } catch {
      // none packed
    }
    return [...names].map(dirToName).sort();
  }

  /** Removes the image directory entry dir of img/ (a name, never a path): moved aside at once,
   * then removed without following any symbolic link inside; an entry that is not a directory
   * (a symbolic link, say) is unlinked, never followed. */
  private remove(dir: string): void {
    if (dir.includes("/") || dir === "." || dir === ".." || dir === "")
      throw new ChError(`internal: not an entry of img/: ${dir}`);
    const path = posix.join(this.imgDir, dir);
    const st = lstatOrNull(path);
    if (st === null) return;
    if (!st.isDirectory()) {
      unlinkSync(path);
      info(`deleted ${st.isSymbolicLink() ? "symbolic link (not what it points to)" : "file"}: img/${dir}`);
      return;
    }
    const aside = partialPath(path, ".old");
    renameSync(path, aside);
    forceRemove(aside);
    info(`deleted image: ${dirToName(dir)}`);
  }

  /** Deletes images: each of `globs` is an image name (any spelling) or a glob over the names
   * in storage (Charliecloud's: `foo*`; "/" and ":" as in names), and also takes the build
   * stages NAME_stageN. Only entries of img/ are ever removed. Every glob is checked before
   * anything is deleted; each that matches nothing is an error, after the others are done.
   * Charliecloud's build cache is left as it is. */
  deleteGlobs(globs: string[]): void {
    for (const g of globs) if (!isGlob(g)) imageName(g);
    const present = this.exists();
    // Locked (and, from our version 1, upgraded) before anything is matched.
    if (present && this.version !== null) this.init();
    const entries = present ? this.entries() : [];
    const matched = new Set<string>();
    const failed: string[] = [];
    for (const g of globs) {
      const found: string[] = [];
      if (isGlob(g)) {
        const re = globRegExp(nameToDir(g));
        found.push(...entries.filter((d) => re.test(d)));
      } else if (present) {
        const dir = this.find(g);
        // Symbolic links are no images to find(); by its exact name, one is still deleted.
        const exact = nameToDir(refString(parseRef(g)));
        if (dir !== null) found.push(posix.basename(dir));
        else if (lstatOrNull(posix.join(this.imgDir, exact))?.isSymbolicLink()) found.push(exact);
      }
      const stages = globRegExp(`${nameToDir(isGlob(g) ? g : refString(parseRef(g)))}_stage[0-9]*`);
      found.push(...entries.filter((d) => stages.test(d)));
      if (found.length === 0) failed.push(g);
      for (const d of found) matched.add(d);
    }
    for (const d of [...matched].sort()) this.remove(d);
    if (failed.length === 1) throw new ChError(`no matching image, can't delete: ${failed[0]}`);
    if (failed.length > 1) {
      for (const g of failed) errorOut(`${formatError(`no matching image, can't delete: ${g}`, 0, null)}\n`);
      throw new ChError(`unable to delete ${failed.length} invalid image(s)`);
    }
  }

  /** The SquashFS mount point STORAGE/mnt for ch-run: the storage directory is checked (and made,
   * whole, if absent: a lone mnt/ would be no storage directory Charliecloud accepts), then mnt/
   * is made if need be and checked. Its version isn't checked: ch-run needs no more. */
  mountPoint(): string {
    if (this.safe() === null) {
      this.init({ quiet: true });
      this.unlock(); // not held while the container runs
    }
    const mnt = posix.join(this.root, "mnt");
    try {
      mkdirSync(mnt, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw sysError(`can't create SquashFS mount point: ${mnt}`, e);
    }
    const st = lstatOrNull(mnt);
    if (st === null) throw new ChError(`can't create SquashFS mount point: ${mnt}`, { errno: 2 });
    this.checkPart(mnt, st, "directory");
    return mnt;
  }

  /** Removes the whole storage directory, if it is a safe one: everything in it goes, images,
   * caches and Charliecloud's build cache; says what it holds first. */
  reset(): void {
    const st = lstatOrNull(this.root);
    if (st === null) return;
    if (st.isSymbolicLink()) throw new ChError(`not deleting a symbolic link: ${this.root}; delete it or its target yourself`);
    this.checkPart(this.root, st, "directory");
    const entries = readdirSync(this.root);
    // As exists() decides: what holds more than ch-run's mnt/ and a lock needs a version file.
    if (entries.some((e) => e !== "mnt" && e !== "lock") && !entries.includes("version"))
      throw new ChError(`not a storage directory, not deleting: ${this.root}`);
    if (entries.includes("lock")) {
      this.state = true;
      this.lock();
    }
    const images = entries.includes("img") ? this.entries().length : 0;
    const parts = [`${images} image${images === 1 ? "" : "s"}`];
    if (entries.includes("dlcache")) parts.push("download cache");
    if (entries.includes("bucache")) parts.push("Charliecloud's build cache");
    info(`deleting storage directory: ${this.root} (${parts.join(", ")})`);
    forceRemove(this.root); // still locked: no other ch-image starts in it meanwhile
    this.unlock();
    this.state = null;
    this.version = null;
  }
}

function writeFileAtomic(path: string, text: string): void {
  const fd = openSync(path, "wx", 0o644);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}
