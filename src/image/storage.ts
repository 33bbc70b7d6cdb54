// ch-image storage: where images live and how names map to directories.

import {
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { hostname } from "node:os";
import { posix } from "node:path";
import { info } from "../cli/log.ts";
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

export function imagePath(storage: string, name: string): string {
  return posix.join(storage, "img", nameToDir(name));
}

// ---- Storage directory: version file, lock, images. ----

/** Layout version of the storage directory; a different one is refused. */
export const STORAGE_VERSION = "1";

/** Whether name is an image reference we can store: no "%" or "+" (they encode "/" and ":"),
 * no empty or dot path components. */
export function validImageName(name: string): boolean {
  if (!/^[A-Za-z0-9][A-Za-z0-9._\-/:@]*$/.test(name)) return false;
  return name.split("/").every((c) => c !== "" && c !== "." && c !== "..");
}

export class Storage {
  readonly root: string;
  private lockPath: string | null = null;

  constructor(root: string) {
    this.root = root;
  }

  get imgDir(): string {
    return posix.join(this.root, "img");
  }

  private get versionFile(): string {
    return posix.join(this.root, "version");
  }

  /** Creates the storage directory if needed, and checks that it is one of ours. */
  init(): void {
    const entries = existsSync(this.root) ? readdirSync(this.root) : null;
    // ch-run makes STORAGE/mnt (SquashFS images' mount point) without making a storage: a
    // directory holding nothing else is still new.
    if (entries === null || entries.every((e) => e === "mnt" && lstatSync(posix.join(this.root, e)).isDirectory())) {
      try {
        mkdirSync(this.imgDir, { recursive: true, mode: 0o755 });
        writeFileAtomic(this.versionFile, `${STORAGE_VERSION}\n`);
      } catch (e) {
        throw sysError(`can't initialize storage directory: ${this.root}`, e);
      }
      info(`initialized storage directory: ${this.root}`);
      return;
    }
    if (!entries.includes("version")) throw new ChError(`storage directory seems invalid (no version file): ${this.root}`);
    const v = readFileSync(this.versionFile, "utf8").trim();
    if (v !== STORAGE_VERSION)
      throw new ChError(`incompatible storage directory v${v} (need v${STORAGE_VERSION}): ${this.root}; try "ch-image reset"`);
    mkdirSync(this.imgDir, { recursive: true, mode: 0o755 });
  }

  /** Takes the storage lock (a file holding HOST PID); a lock left by a dead process on this
   * host is taken over. Released at exit. */
  lock(): void {
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

  imagePath(name: string): string {
    return imagePath(this.root, name);
  }

  has(name: string): boolean {
    try {
      return lstatSync(this.imagePath(name)).isDirectory();
    } catch {
      return false;
    }
  }

  /** Names of the images stored, sorted. */
  list(): string[] {
    if (!existsSync(this.imgDir)) return [];
    return readdirSync(this.imgDir)
      .filter((d) => !isPartialName(d))
      .map(dirToName)
      .sort();
  }

  /** Deletes an image: renamed aside first, so that it disappears at once. */
  delete(name: string): void {
    if (!this.has(name)) throw new ChError(`no image to delete: ${name}`);
    const dir = this.imagePath(name);
    const aside = partialPath(dir, ".old");
    renameSync(dir, aside);
    forceRemove(aside);
  }

  /** Removes the whole storage directory. */
  reset(): void {
    if (!existsSync(this.root)) return;
    const entries = readdirSync(this.root);
    if (entries.length > 0 && !entries.includes("version"))
      throw new ChError(`not a storage directory, not deleting: ${this.root}`);
    info(`deleting storage directory: ${this.root}`);
    forceRemove(this.root);
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
