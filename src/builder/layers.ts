// Overlay layers on the host side, for the build cache (cache.ts): what the kernel's overlayfs
// does in the container, done here where the builder works outside it.
// - LayeredTree: COPY, ADD and WORKDIR write into a fresh upper directory while reading the
//   image through its lower layers (overlayfs's lookup: the top layer holding a name decides, a
//   whiteout hides it, a directory merges with the ones below unless opaque). A directory of a
//   lower layer that something is written into is made in the upper one first (copy-up of its
//   mode), nothing else is copied.
// - scanLayer(): what a finished upper directory holds: entries, bytes, its opaque directories
//   (ch-run's planner needs them to see the merged tree before it is mounted).
// - applyLayer(): a layer applied to a plain directory (whiteouts delete, opaque directories
//   replace, everything else is copied over): how an image in storage is made from its states,
//   or brought from one state to a later one. Extended attributes are not copied (overlayfs's
//   own user.overlay.* ones would mean something else in an image).
import {
  chmodSync,
  constants,
  copyFileSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  type Stats,
  symlinkSync,
  utimesSync,
} from "node:fs";
import { join } from "node:path";
import { forceRemove } from "../image/install.ts";
import { makeFifo, specialKind, warnLeftOut } from "../image/special.ts";
import { sysError } from "../sys/errors.ts";
import { LibcError, libc } from "../sys/libc.ts";
import { lstatOrNull, type Tree } from "./paths.ts";

export const OPAQUE_XATTR = "user.overlay.opaque";

/** Whether `st` is an overlayfs whiteout (a character device 0:0). */
export function isWhiteout(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/** Whether directory `path` is opaque (hides the layers below it). */
export function isOpaque(path: string): boolean {
  try {
    return libc().lgetxattr(path, OPAQUE_XATTR).toString() === "y";
  } catch (e) {
    if (e instanceof LibcError) return false; // ENODATA: not set; ENOTSUP: not an overlay's
    throw e;
  }
}

/** The merged view of `layers` (top first; `layers[0]` the upper, where writes go). */
export class LayeredTree implements Tree {
  readonly root: string;
  private readonly layers: string[];
  private readonly opaque = new Map<string, boolean>();

  constructor(layers: string[]) {
    this.layers = layers;
    this.root = layers[0];
  }

  private opaqueDir(path: string): boolean {
    let o = this.opaque.get(path);
    if (o === undefined) {
      o = isOpaque(path);
      this.opaque.set(path, o);
    }
    return o;
  }

  /** The host path that shows `rel`, or null. */
  find(rel: string): string | null {
    if (rel === "") return this.root;
    let dirs = this.layers;
    let found: string | null = null;
    let path = "";
    for (const c of rel.split("/")) {
      if (c === "") continue;
      path += `/${c}`;
      const next: string[] = [];
      found = null;
      let foundDir = false;
      for (const l of dirs) {
        const st = lstatOrNull(`${l}${path}`);
        if (st === null) continue;
        if (isWhiteout(st)) break;
        if (found === null) {
          found = `${l}${path}`;
          foundDir = st.isDirectory();
        }
        if (!st.isDirectory() || !foundDir) break;
        next.push(l);
        if (this.opaqueDir(`${l}${path}`)) break;
      }
      if (found === null) return null;
      dirs = next;
    }
    return found;
  }

  lstat(rel: string): Stats | null {
    const f = this.find(rel);
    return f === null ? null : lstatOrNull(f);
  }

  readlink(rel: string): string {
    const f = this.find(rel);
    if (f === null) throw sysError(`can't read link: /${rel}`, Object.assign(new Error("ENOENT"), { code: "ENOENT" }));
    return readlinkSync(f);
  }

  mkdir(rel: string, mode: number): void {
    const up = join(this.root, rel);
    const st = lstatOrNull(up);
    // A whiteout in the upper layer (none is made here, but be exact): replaced, and the new
    // directory hides what was below.
    if (st && isWhiteout(st)) forceRemove(up);
    mkdirSync(up, mode);
  }

  copyUp(rel: string): void {
    const up = join(this.root, rel);
    if (lstatOrNull(up)?.isDirectory()) return;
    const st = this.lstat(rel);
    mkdirSync(up, st ? st.mode & 0o7777 : 0o755);
    if (st) utimesSync(up, st.atime, st.mtime);
  }
}

export interface LayerScan {
  /** Entries (files, directories, links, whiteouts), the root not counted. */
  entries: number;
  /** Bytes of regular files. */
  bytes: number;
  /** Opaque directories, as host paths. */
  opaque: string[];
}

/** Walks a finished layer. */
export function scanLayer(dir: string): LayerScan {
  const out: LayerScan = { entries: 0, bytes: 0, opaque: [] };
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      out.entries++;
      if (e.isDirectory()) {
        if (isOpaque(p)) out.opaque.push(p);
        walk(p);
      } else if (e.isFile()) out.bytes += lstatSync(p).size;
    }
  };
  walk(dir);
  return out;
}

/** Applies layer `src` to directory `dst` (see the top of this file). */
export function applyLayer(src: string, dst: string): void {
  try {
    applyDir(src, dst, "");
  } catch (e) {
    if (e instanceof Error && "code" in e) throw sysError(`can't apply build layer ${src} to ${dst}`, e);
    throw e;
  }
}

function applyDir(src: string, dst: string, rel: string): void {
  for (const name of readdirSync(src).sort()) {
    const s = join(src, name);
    const d = join(dst, name);
    const st = lstatSync(s);
    const old = lstatOrNull(d);
    if (isWhiteout(st)) {
      if (old) forceRemove(d);
      continue;
    }
    if (st.isDirectory()) {
      const keep = old?.isDirectory() && !isOpaque(s);
      if (old && !keep) forceRemove(d);
      if (keep && old)
        chmodSync(d, (old.mode & 0o7777) | 0o700); // writable while we write in it
      else mkdirSync(d, 0o700);
      applyDir(s, d, `${rel}/${name}`);
      chmodSync(d, st.mode & 0o7777);
      utimesSync(d, st.atime, st.mtime);
      continue;
    }
    if (old) forceRemove(d);
    copyEntry(s, d, st, `${rel}/${name}`);
  }
}

/** Copies one entry that is not a directory (a file or a symbolic link) from `s` to `d`. */
function copyEntry(s: string, d: string, st: Stats, rel: string): void {
  if (st.isFile()) {
    copyFileSync(s, d, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE); // reflinked where it can be
    chmodSync(d, st.mode & 0o7777);
    utimesSync(d, st.atime, st.mtime);
  } else if (st.isSymbolicLink()) symlinkSync(readlinkSync(s), d);
  else {
    // As special.ts's copyTree: a FIFO stays one (ch-image has loaded libc for the storage lock).
    const kind = specialKind(st);
    if (kind === "fifo") makeFifo(d, st);
    else if (kind) warnLeftOut(rel, st, kind);
  }
}

/** Puts `rel` of directory `dst` back to what it is in the tree of `chain` (layers, top first):
 * removed, or copied from the layer that shows it (a directory: the layers applied to it
 * bottom up, as overlayfs merges them). Its parent is in `dst` already. */
export function restorePath(chain: string[], rel: string, dst: string): void {
  const d = join(dst, rel);
  if (lstatOrNull(d)) forceRemove(d);
  const tree = new LayeredTree(chain);
  const top = tree.find(rel);
  if (top === null) return;
  const st = lstatSync(top);
  if (!st.isDirectory()) {
    copyEntry(top, d, st, rel);
    return;
  }
  mkdirSync(d, 0o700);
  const parts = rel.split("/");
  for (const l of [...chain].reverse()) {
    // What this layer does to rel: nothing (it lacks a parent), hides it (a whiteout or a file
    // in the place of a parent, an opaque parent), then what it has at rel itself.
    let cur = l;
    let skip = false;
    for (const c of parts.slice(0, -1)) {
      cur = join(cur, c);
      const p = lstatOrNull(cur);
      if (!p?.isDirectory()) {
        skip = true;
        if (p) {
          forceRemove(d);
          mkdirSync(d, 0o700);
        }
        break;
      }
      if (isOpaque(cur)) {
        forceRemove(d);
        mkdirSync(d, 0o700);
      }
    }
    if (skip) continue;
    const s = join(l, rel);
    const sst = lstatOrNull(s);
    if (sst === null) continue;
    if (!sst.isDirectory() || isOpaque(s)) {
      forceRemove(d);
      mkdirSync(d, 0o700);
      if (!sst.isDirectory()) continue; // hidden below what the top layer shows
    }
    applyDir(s, d, rel);
  }
  chmodSync(d, st.mode & 0o7777);
  utimesSync(d, st.atime, st.mtime);
}

/** Undoes layer `layer` in directory `dst`: each path it changed put back to what the tree of
 * `chain` (the state it was made on, or any earlier one) has there. */
export function revertLayer(layer: string, chain: string[], dst: string): void {
  const tree = new LayeredTree(chain);
  const walk = (src: string, rel: string) => {
    for (const name of readdirSync(src).sort()) {
      const s = join(src, name);
      const r = rel === "" ? name : `${rel}/${name}`;
      const st = lstatSync(s);
      if (st.isDirectory() && !isOpaque(s)) {
        const before = tree.lstat(r);
        const now = lstatOrNull(join(dst, r));
        if (before?.isDirectory() && now?.isDirectory()) {
          chmodSync(join(dst, r), (now.mode & 0o7777) | 0o700);
          walk(s, r);
          chmodSync(join(dst, r), before.mode & 0o7777);
          utimesSync(join(dst, r), before.atime, before.mtime);
          continue;
        }
      }
      restorePath(chain, r, dst);
    }
  };
  try {
    walk(layer, "");
  } catch (e) {
    if (e instanceof Error && "code" in e) throw sysError(`can't undo build layer ${layer} in ${dst}`, e);
    throw e;
  }
}
