// Where a path inside the container lives on the host, before the container exists. The
// planner uses this to check bind destinations and image files: symlinks are followed as the
// container will see them (absolute links from the image root, never out of it), and paths
// under an earlier bind mount lead to that bind's source on the host.
import { posix } from "node:path";
import type { FileType, HostFs } from "./hostfs.ts";

export interface Mounted {
  /** Container path of the mount point. */
  dst: string;
  /** Host path of what is mounted there, or null for a file system of its own (tmpfs). */
  src: string | null;
  /** With src null: what the mount point is (a tmpfs is a directory). */
  type?: FileType;
}

export interface Resolved {
  /** The container path with every symlink resolved. */
  path: string;
  /** Where it lives on the host, or null if inside a file system of its own. */
  host: string | null;
  type: FileType | null;
  /** The earlier mount the path is under, if any. */
  under: Mounted | null;
  /** First missing component (container path), when the path does not exist. */
  missing: string | null;
}

const MAX_LINKS = 40;

export class ContainerView {
  readonly mounts: Mounted[] = [];
  /** Directories the plan creates before the point of view (container paths). */
  readonly created = new Set<string>();
  readonly root: string;
  readonly fs: HostFs;

  constructor(root: string, fs: HostFs) {
    this.root = root;
    this.fs = fs;
  }

  /** The innermost mount covering a container path. */
  mountOf(path: string): Mounted | null {
    let best: Mounted | null = null;
    for (const m of this.mounts)
      if ((path === m.dst || path.startsWith(m.dst === "/" ? "/" : `${m.dst}/`)) && (!best || m.dst.length >= best.dst.length))
        best = m;
    return best;
  }

  private host(path: string): { host: string | null; under: Mounted | null } {
    const m = this.mountOf(path);
    if (!m) return { host: posix.join(this.root, path), under: null };
    if (m.src === null) return { host: null, under: m };
    return { host: posix.join(m.src, posix.relative(m.dst, path)), under: m };
  }

  private stat(path: string): { type: FileType | null; host: string | null; under: Mounted | null } {
    const h = this.host(path);
    if (this.created.has(path)) return { type: "dir", ...h };
    if (h.host === null) return { type: h.under?.dst === path ? (h.under.type ?? null) : null, ...h };
    const st = this.fs.lstat(h.host);
    return { type: st ? st.type : null, ...h };
  }

  resolve(path: string): Resolved {
    let rest = posix.normalize(`/${path}`).split("/").filter(Boolean);
    let cur = "/";
    let links = 0;
    while (rest.length) {
      const comp = rest.shift() as string;
      const next = comp === ".." ? posix.dirname(cur) : posix.join(cur, comp);
      if (comp === "." || comp === "..") {
        cur = next;
        continue;
      }
      const st = this.stat(next);
      if (st.type === null) {
        const full = posix.join(next, ...rest);
        return { path: full, host: this.host(full).host, type: null, under: this.host(full).under, missing: next };
      }
      if (st.type === "link" && st.host !== null) {
        if (++links > MAX_LINKS) return { path: next, host: st.host, type: "link", under: st.under, missing: null };
        const target = this.fs.readlink(st.host);
        const base = target.startsWith("/") ? "/" : cur;
        rest = [...posix.join(base, target).split("/").filter(Boolean), ...rest];
        cur = "/";
        continue;
      }
      if (rest.length && st.type !== "dir") {
        const full = posix.join(next, ...rest);
        return { path: full, host: this.host(full).host, type: null, under: st.under, missing: posix.join(next, rest[0]) };
      }
      cur = next;
    }
    const st = this.stat(cur);
    return { path: cur, host: st.host, type: st.type, under: st.under, missing: null };
  }
}

/** The directories `mkdir -p` must make for a path that resolved to missing (container paths,
 * outermost first): from its first missing component down to the path itself. */
export function missingDirs(r: Pick<Resolved, "path" | "missing">): string[] {
  if (r.missing === null) return [];
  const dirs: string[] = [];
  for (let p = r.path; p !== posix.dirname(r.missing); p = posix.dirname(p)) dirs.unshift(p);
  return dirs;
}
