// What the planner may look at on the host: a read-only view of the file system. The real one
// uses node:fs; tests use MemFs, a tree in memory.
import { lstatSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { posix } from "node:path";

export type FileType = "file" | "dir" | "link" | "other";

export interface Stat {
  type: FileType;
  uid: number;
  mode: number;
  /** An overlayfs whiteout (a character device 0:0): a deletion in an upper layer. */
  whiteout?: boolean;
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
    if (!st) return null;
    return st.isCharacterDevice() && st.rdev === 0
      ? { type: "other", uid: st.uid, mode: st.mode, whiteout: true }
      : { type: typeOf(st), uid: st.uid, mode: st.mode };
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

export type MemNode = string | { dir: true } | { link: string } | { other: true } | { whiteout: true };

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
    if ("whiteout" in n) return { type: "other", uid: 1000, mode: 0o020000, whiteout: true };
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

/** The view of an overlay mounted at `root` before it is mounted: a path under `root` is looked
 * up in the layers (`layers[0]` the upper, then the lower ones, top first) as overlayfs does:
 * the first layer holding it decides, a whiteout hides it, a directory merges with the same
 * directory below unless it is opaque (`opaque` holds those, as host paths in their layer). A
 * symbolic link is read in the layer that holds it (ContainerView resolves it in the image). */
export function layeredFs(fs: HostFs, root: string, layers: string[], opaque: ReadonlySet<string>): HostFs {
  const find = (p: string): string | null => {
    if (p !== root && !p.startsWith(`${root}/`)) return p;
    const parts = p
      .slice(root.length)
      .split("/")
      .filter((c) => c !== "");
    let dirs = layers; // the layers whose directory at this depth is part of the merged one
    let found: string | null = layers[0];
    let rel = "";
    for (const c of parts) {
      rel += `/${c}`;
      const next: string[] = [];
      found = null;
      let foundDir = false;
      for (const l of dirs) {
        const st = fs.lstat(`${l}${rel}`);
        if (st === null) continue;
        if (st.whiteout) break;
        const dir = st.type === "dir";
        if (found === null) {
          found = `${l}${rel}`;
          foundDir = dir;
        }
        if (!dir || !foundDir) break;
        next.push(l);
        if (opaque.has(`${l}${rel}`)) break;
      }
      if (found === null) return null;
      dirs = next;
    }
    return found;
  };
  return {
    lstat: (p) => {
      const f = find(p);
      return f === null ? null : fs.lstat(f);
    },
    stat(p) {
      // Symbolic links followed through the merged view, as the kernel would.
      let path = p;
      for (let i = 0; i < 40; i++) {
        const f = find(path);
        if (f === null) return null;
        const st = fs.lstat(f);
        if (st?.type !== "link") return st;
        path = posix.resolve(posix.dirname(path), fs.readlink(f));
      }
      return null;
    },
    readlink(p) {
      const f = find(p);
      if (f === null) throw Object.assign(new Error(`ENOENT: ${p}`), { errno: -2 });
      return fs.readlink(f);
    },
    readFile(p) {
      const f = find(p);
      return f === null ? null : fs.readFile(f);
    },
  };
}
