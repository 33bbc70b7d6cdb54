// What the planner may look at on the host: a read-only view of the file system. The real one
// uses node:fs; tests use MemFs, a tree in memory.
import { lstatSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { posix } from "node:path";

export type FileType = "file" | "dir" | "link" | "other";

export interface Stat {
  type: FileType;
  uid: number;
  mode: number;
}

export interface HostFs {
  lstat(path: string): Stat | null;
  /** As lstat(), but a symlink is followed (null if it dangles). */
  stat(path: string): Stat | null;
  readlink(path: string): string;
  /** The file's text, or null if it can't be read. */
  readFile(path: string): string | null;
}

function typeOf(st: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean }): FileType {
  if (st.isSymbolicLink()) return "link";
  if (st.isDirectory()) return "dir";
  if (st.isFile()) return "file";
  return "other";
}

export const realFs: HostFs = {
  lstat(path) {
    const st = lstatSync(path, { throwIfNoEntry: false });
    return st ? { type: typeOf(st), uid: st.uid, mode: st.mode } : null;
  },
  stat(path) {
    try {
      const st = statSync(path, { throwIfNoEntry: false });
      return st ? { type: typeOf(st), uid: st.uid, mode: st.mode } : null;
    } catch {
      return null; // ELOOP, EACCES on the way: not there for us
    }
  },
  readlink(path) {
    return readlinkSync(path);
  },
  readFile(path) {
    try {
      return readFileSync(path, "utf8");
    } catch {
      return null;
    }
  },
};

/** fs with lstat() and stat() remembered by path: for one plan, which looks at the same few
 * directories many times (ch-run's fast path: about half of its 40 lookups). */
export function rememberingFs(fs: HostFs): HostFs {
  const lstats = new Map<string, Stat | null>();
  const stats = new Map<string, Stat | null>();
  const once = (m: Map<string, Stat | null>, path: string, get: (p: string) => Stat | null): Stat | null => {
    let st = m.get(path);
    if (st === undefined) {
      st = get(path);
      m.set(path, st);
    }
    return st;
  };
  return {
    lstat: (path) => once(lstats, path, (p) => fs.lstat(p)),
    stat: (path) => once(stats, path, (p) => fs.stat(p)),
    readlink: (path) => fs.readlink(path),
    readFile: (path) => fs.readFile(path),
  };
}

export type MemNode = string | { dir: true } | { link: string } | { other: true };

/** A file system in memory: absolute paths to file contents, directories, links. Parent
 * directories of every entry exist implicitly. */
export class MemFs implements HostFs {
  private readonly nodes = new Map<string, MemNode>();

  constructor(tree: Record<string, MemNode>) {
    for (const [path, node] of Object.entries(tree)) {
      this.nodes.set(path, node);
      let p = path;
      while (p !== "/") {
        p = p.slice(0, p.lastIndexOf("/")) || "/";
        if (!this.nodes.has(p)) this.nodes.set(p, { dir: true });
      }
    }
  }

  lstat(path: string): Stat | null {
    const n = this.nodes.get(path);
    if (n === undefined) return null;
    if (typeof n === "string") return { type: "file", uid: 1000, mode: 0o100644 };
    if ("link" in n) return { type: "link", uid: 1000, mode: 0o120777 };
    if ("other" in n) return { type: "other", uid: 1000, mode: 0o020666 };
    return { type: "dir", uid: 1000, mode: 0o40755 };
  }

  stat(path: string): Stat | null {
    let p = path;
    for (let i = 0; i < 40; i++) {
      const n = this.nodes.get(p);
      if (n === undefined) return null;
      if (typeof n === "object" && "link" in n) p = posix.resolve(posix.dirname(p), n.link);
      else return this.lstat(p);
    }
    return null;
  }

  readlink(path: string): string {
    const n = this.nodes.get(path);
    if (n && typeof n === "object" && "link" in n) return n.link;
    throw Object.assign(new Error(`EINVAL: ${path}`), { errno: -22 });
  }

  readFile(path: string): string | null {
    const n = this.nodes.get(path);
    return typeof n === "string" ? n : null;
  }
}

/** A view in which paths under `root` are read through `prefix` (e.g. /proc/PID/root, to see
 * inside another mount namespace) and every other path as it is. */
export function prefixedFs(fs: HostFs, root: string, prefix: string): HostFs {
  const map = (p: string) => (p === root || p.startsWith(`${root}/`) ? `${prefix}${p}` : p);
  return {
    lstat: (p) => fs.lstat(map(p)),
    stat: (p) => fs.stat(map(p)),
    readlink: (p) => fs.readlink(map(p)),
    readFile: (p) => fs.readFile(map(p)),
  };
}
