// Paths the builder reads and writes, all of them names that come from a Dockerfile, a build
// context or an image (attack surface):
// - resolveIn(): a path inside a root directory as if that root were "/": symlinks are read and
//   followed inside the root, ".." stops at the root. For an image (COPY's destination, COPY
//   --from) that is what the path means; for the build context an attempt to leave it (a ".."
//   above it, an absolute symlink, one whose ".." climbs out) is reported, and refused by COPY.
// - Wildcards in COPY and ADD sources: Go's filepath.Match, one path component at a time.
// - .dockerignore: Docker's rules (moby/patternmatcher): one pattern a line, "#" comments,
//   cleaned paths relative to the context, filepath.Match plus "**" for any number of
//   directories, "!" for exceptions, the last matching line wins, a match on a directory
//   excludes what is in it.
import { lstatSync, mkdirSync, readdirSync, readlinkSync, type Stats } from "node:fs";
import { join, posix } from "node:path";
import { ChError } from "../sys/errors.ts";

const MAX_HOPS = 40;

export interface Resolved {
  /** The host path: root joined with rel. */
  host: string;
  /** Path from the root, no symlinks in it (except possibly the last component when not
   * followed); "" is the root. */
  rel: string;
  /** Whether the path tried to leave the root (".." above it, an absolute symlink target). */
  escaped: boolean;
  /** lstat of the result; null when it doesn't exist. */
  st: Stats | null;
}

export function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
}

/** A tree the builder writes into: a plain directory, or (cache.ts) the upper directory of an
 * overlay whose lower layers it reads through (see layers.ts). Paths are relative, "" the root. */
export interface Tree {
  /** The host directory the tree is written in. */
  readonly root: string;
  /** lstat(2) of `rel` as the tree shows it; null if absent. */
  lstat(rel: string): Stats | null;
  readlink(rel: string): string;
  /** Makes directory `rel` where the tree is written; its parent exists there already. */
  mkdir(rel: string, mode: number): void;
  /** Makes sure directory `rel`, which the tree shows, is also where the tree is written (a
   * lower layer's: made in the upper one, its mode kept); its parent is already. */
  copyUp(rel: string): void;
}

/** A plain directory as a Tree. */
export function dirTree(root: string): Tree {
  return {
    root,
    lstat: (rel) => lstatOrNull(rel === "" ? root : join(root, rel)),
    readlink: (rel) => readlinkSync(join(root, rel)),
    mkdir: (rel, mode) => mkdirSync(join(root, rel), mode),
    copyUp: () => {},
  };
}

export const treeOf = (root: string | Tree): Tree => (typeof root === "string" ? dirTree(root) : root);

/** Resolves `path` inside `root` (see the top of this file); the last component's symlink is
 * followed only when `followLast`. A missing component ends nothing: the rest is appended. */
export function resolveIn(root: string | Tree, path: string, followLast: boolean): Resolved {
  const t = treeOf(root);
  let queue = path.split("/");
  const stack: string[] = [];
  let escaped = false;
  let hops = 0;
  while (queue.length) {
    const c = queue.shift() as string;
    if (c === "" || c === ".") continue;
    if (c === "..") {
      if (stack.length === 0) escaped = true;
      else stack.pop();
      continue;
    }
    const last = !queue.some((q) => q !== "" && q !== ".");
    const st = t.lstat([...stack, c].join("/"));
    if (st?.isSymbolicLink() && (!last || followLast)) {
      if (++hops > MAX_HOPS) throw new ChError(`too many levels of symbolic links: ${path}`, { errno: 40 });
      const target = t.readlink([...stack, c].join("/"));
      if (target.startsWith("/")) {
        escaped = true;
        stack.length = 0;
      }
      queue = [...target.split("/"), ...queue];
      continue;
    }
    stack.push(c);
  }
  const rel = stack.join("/");
  const host = rel === "" ? t.root : join(t.root, rel);
  return { host, rel, escaped, st: t.lstat(rel) };
}

/** Makes directory `path` inside `root` and its missing parents, following symlinks inside the
 * root (an image's /lib -> usr/lib is merged into, not replaced); returns it resolved. */
export function mkdirsIn(root: string | Tree, path: string, mode = 0o755): Resolved {
  const t = treeOf(root);
  const r = resolveIn(t, path, true);
  const parts = r.rel === "" ? [] : r.rel.split("/");
  for (let i = 1; i <= parts.length; i++) {
    const p = parts.slice(0, i).join("/");
    const st = t.lstat(p);
    if (!st) t.mkdir(p, mode);
    else if (!st.isDirectory()) throw new ChError(`not a directory: /${p}`, { errno: 20 });
    else t.copyUp(p);
  }
  return { ...r, st: t.lstat(r.rel) };
}

// ---- Wildcards ----

/** Whether a path has Go filepath.Match metacharacters. */
export function hasMeta(s: string): boolean {
  return /[*?[\\]/.test(s);
}

/** Go's filepath.Match pattern (one component: * ? [class] [^class] \x) as a RegExp body;
 * `doubleStar` adds .dockerignore's "**". Throws on a malformed class. */
function patternBody(p: string, doubleStar: boolean): string {
  let re = "";
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === "*") {
      if (doubleStar && p[i + 1] === "*") {
        i++;
        if (p[i + 1] === "/") {
          i++;
          re += i + 1 === p.length ? ".*" : "(?:.*/)?";
        } else re += ".*";
      } else re += "[^/]*";
    } else if (c === "?") re += "[^/]";
    else if (c === "[") {
      let j = i + 1;
      let cls = "";
      if (p[j] === "^" || p[j] === "!") {
        cls += "^";
        j++;
      }
      let closed = false;
      for (; j < p.length; j++) {
        if (p[j] === "]" && cls.replace(/^\^/, "") !== "") {
          closed = true;
          break;
        }
        if (p[j] === "\\" && j + 1 < p.length) j++;
        cls += p[j] === "-" ? "-" : p[j].replace(/[\]\\^]/g, "\\$&");
      }
      if (!closed) throw new ChError(`syntax error in pattern: ${p}`);
      re += `[${cls}]`;
      i = j;
    } else if (c === "\\" && i + 1 < p.length) {
      i++;
      re += p[i].replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    } else re += c.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  }
  return re;
}

export function goGlobRegExp(component: string): RegExp {
  return new RegExp(`^${patternBody(component, false)}$`, "s");
}

/** A pattern's literal text (backslash escapes undone). */
function literal(s: string): string {
  return s.replace(/\\(.)/g, "$1");
}

/** Expands the wildcards of `pattern` (a path inside root, absolute or not) against what is
 * there; the matches, sorted, as paths from the root as written (not resolved). A pattern
 * without wildcards is returned as it is, whether or not it exists. */
export function expandGlob(root: string, pattern: string): string[] {
  const parts = pattern.split("/").filter((p) => p !== "" && p !== ".");
  if (!hasMeta(pattern)) return [parts.join("/")];
  let found: string[] = [""];
  for (const part of parts) {
    const next: string[] = [];
    for (const dir of found) {
      if (!hasMeta(part)) {
        next.push(dir === "" ? literal(part) : `${dir}/${literal(part)}`);
        continue;
      }
      const r = resolveIn(root, dir, true);
      if (!r.st?.isDirectory()) continue;
      const re = goGlobRegExp(part);
      for (const name of readdirSync(r.host).sort()) if (re.test(name)) next.push(dir === "" ? name : `${dir}/${name}`);
    }
    found = next;
  }
  return found;
}

// ---- .dockerignore ----

interface IgnorePattern {
  re: RegExp;
  exclusion: boolean;
  /** Number of path components: a path's parents are matched at this depth. */
  depth: number;
}

export class IgnoreMatcher {
  private readonly patterns: IgnorePattern[] = [];

  constructor(text: string) {
    for (const raw of text.split("\n")) {
      let line = raw.replace(/\r$/, "").trim();
      if (line === "" || line.startsWith("#")) continue;
      let exclusion = false;
      if (line.startsWith("!")) {
        exclusion = true;
        line = line.slice(1).trim();
      }
      let p = posix.normalize(line);
      p = p.replace(/^\/+/, "");
      if (p === "" || p === "." || p === "/") continue;
      p = p.replace(/\/+$/, "");
      this.patterns.push({ re: new RegExp(`^${patternBody(p, true)}$`, "s"), exclusion, depth: p.split("/").length });
    }
  }

  get hasExceptions(): boolean {
    return this.patterns.some((p) => p.exclusion);
  }

  get empty(): boolean {
    return this.patterns.length === 0;
  }

  /** Whether `rel` (a path from the context root) is excluded. */
  excluded(rel: string): boolean {
    if (rel === "") return false;
    const dirs = rel.split("/");
    let matched = false;
    for (const p of this.patterns) {
      if (p.exclusion !== matched) continue;
      let m = p.re.test(rel);
      if (!m && dirs.length > 1 && p.depth < dirs.length) m = p.re.test(dirs.slice(0, p.depth).join("/"));
      if (m) matched = !p.exclusion;
    }
    return matched;
  }
}
