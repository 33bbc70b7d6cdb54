// COPY and ADD, by Docker's rules:
// - Sources are paths in the build context (or, with --from, in a stage or image), wildcards
//   expanded (Go's filepath.Match); a source that is a symlink is followed, symlinks inside a
//   copied directory are copied as symlinks. A directory's contents are copied, not the
//   directory itself. Context sources that leave the context ("../x", a symlink out of it) are
//   refused; paths in an image are resolved inside the image. .dockerignore applies to the
//   context.
// - The destination is relative to WORKDIR. It is a directory when it ends with "/", when there
//   are several sources, or when it is an existing directory; else the one file is written there.
//   Missing parents are made; symlinks on the way are followed inside the image, never out of it;
//   a symlink in the place of a copied file is replaced, not written through.
// - --chmod (octal) applies to everything copied; --chown is accepted and has no effect (files
//   belong to the user building); ADD extracts a local tarball (plain, gzip, bzip2, xz, zstd)
//   into the destination directory with the safe unpacker.
// - ADD of an http(s) URL downloads it (download.ts), never unpacked: into DEST/NAME when the
//   destination is a directory (NAME: the URL path's last element), else at DEST; mode 600
//   unless --chmod; --checksum=ALGO:HEX checks it (and only URL sources take it). ADD from git,
//   and COPY from a URL (Docker refuses it), are errors.
import {
  chmodSync,
  closeSync,
  constants,
  copyFileSync,
  lstatSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
  renameSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join, posix } from "node:path";
import { gunzipSync, constants as zc } from "node:zlib";
import { extractTar, reportStats, sniffCompression } from "../image/unpack.ts";
import { ChError, sysError, warn } from "../sys/errors.ts";
import type { Instruction } from "./dockerfile.ts";
import { isHeredoc } from "./dockerfile.ts";
import { type Checksum, type Downloader, isGitSource, isUrl, parseChecksum, urlFileName } from "./download.ts";
import { expandGlob, hasMeta, type IgnoreMatcher, lstatOrNull, mkdirsIn, resolveIn, type Tree, treeOf } from "./paths.ts";
import type { Expanded } from "./vars.ts";

export interface CopySource {
  /** Directory the sources are in: the context, a stage's or an image's root. */
  root: string;
  /** The build context (sources may not leave it); false for an image. */
  isContext: boolean;
  ignore: IgnoreMatcher | null;
  /** A directory never copied: the storage directory, when it is in the context (a build
   * would copy itself, forever). */
  skip: string | null;
}

export interface CopyRequest {
  e: Expanded;
  /** The image being built: a directory, or the upper layer of a cached build (cache.ts). */
  dest: string | Tree;
  /** Its working directory (WORKDIR). */
  cwd: string;
  /** null when there is no context (Dockerfile on standard input). */
  from: CopySource | null;
  /** For ADD's URL sources. */
  download: Downloader | null;
}

function where(inst: Instruction): string {
  return `${inst.file}:${inst.line}`;
}

/** --chmod's octal mode, or null. */
function parseChmod(inst: Instruction, v: string | boolean | string[] | undefined): number | null {
  if (typeof v !== "string" || v === "") return null;
  if (!/^[0-7]{1,4}$/.test(v)) throw new ChError(`${where(inst)}: --chmod: invalid mode (octal expected): ${v}`);
  return Number.parseInt(v, 8);
}

/** One thing to copy: a file or directory on the host, or heredoc content. */
type Item =
  | { name: string; host: string; rel: string; st: import("node:fs").Stats }
  | { name: string; content: string }
  | { name: string; url: string };

/** A COPY or ADD instruction, carried out. */
export async function copyInstruction(req: CopyRequest): Promise<void> {
  const { e } = req;
  const inst = e.inst;
  const add = inst.keyword === "add";
  const K = inst.keyword.toUpperCase();
  for (const f of ["parents", "exclude", "keep-git-dir"])
    if (e.flags[f] !== undefined && e.flags[f] !== false)
      throw new ChError(`${where(inst)}: ${K} --${f}: not supported yet in this version`);
  if (e.flags.unpack === false) throw new ChError(`${where(inst)}: ADD --unpack=false: not supported yet in this version`);
  if (typeof e.flags.chown === "string" && e.flags.chown !== "")
    warn(`${where(inst)}: ${K} --chown=${e.flags.chown} ignored: files belong to the user building the image`);
  const mode = parseChmod(inst, e.flags.chmod);
  const args = e.args;
  const destArg = args[args.length - 1];
  let sum: Checksum | null = null;
  if (typeof e.flags.checksum === "string") {
    sum = parseChecksum(e.flags.checksum, `${where(inst)}: ${K}`);
    const local = args.slice(0, -1).find((a) => !isUrl(a) || isGitSource(a));
    if (local !== undefined) throw new ChError(`${where(inst)}: ${K} --checksum: only for http(s) URL sources, not: ${local}`);
  }
  const items: Item[] = [];
  let heredocIndex = 0;
  for (const src of args.slice(0, -1)) {
    if (inst.heredocs.length && isHeredoc(src)) {
      const h = e.heredocs[heredocIndex++];
      items.push({ name: h.name, content: h.content });
      continue;
    }
    if (isGitSource(src))
      throw new ChError(`${where(inst)}: ${K} from a git repository: not supported yet in this version: ${src}`);
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(src)) {
      if (!add) throw new ChError(`${where(inst)}: COPY: source can't be a URL for COPY (use ADD): ${src}`);
      if (!isUrl(src)) throw new ChError(`${where(inst)}: ADD: only http and https URLs can be downloaded: ${src}`);
      items.push({ name: urlFileName(src), url: src });
      continue;
    }
    const from = req.from;
    if (from === null) throw new ChError(`${where(inst)}: ${K}: no build context (the Dockerfile came from standard input)`);
    const matches = expandGlob(from.root, src);
    let n = 0;
    for (const m of matches) {
      const r = resolveIn(from.root, m, true);
      if (from.isContext && r.escaped)
        throw new ChError(`${where(inst)}: ${K}: can't copy from outside the build context: ${src}${m !== src ? ` (${m})` : ""}`);
      // An excluded directory may still hold exceptions ("!dir/keep"): copyTree decides.
      const excluded = from.isContext && !!from.ignore?.excluded(r.rel) && !(r.st?.isDirectory() && from.ignore?.hasExceptions);
      if (!r.st || excluded) {
        if (!hasMeta(src))
          throw new ChError(
            `${where(inst)}: ${K}: source not found${from.isContext ? " in build context or excluded by .dockerignore" : ""}: ${src}`,
            { errno: 2 },
          );
        continue;
      }
      items.push({ name: posix.basename(m) || ".", host: r.host, rel: r.rel, st: r.st });
      n++;
    }
    if (n === 0)
      throw new ChError(
        `${where(inst)}: ${K}: no source files were specified${from.isContext && from.ignore && !from.ignore.empty ? " (or all excluded by .dockerignore)" : ""}: ${src}`,
        { errno: 2 },
      );
  }

  const destPath = posix.resolve(req.cwd, destArg);
  const slash = destArg.endsWith("/") || destArg === "." || destArg.endsWith("/.");
  const existing = resolveIn(req.dest, destPath, true);
  const many = items.length > 1;
  if (many && !slash && !existing.st?.isDirectory())
    throw new ChError(
      `${where(inst)}: When using ${K} with more than one source file, the destination must be a directory and end with a /`,
    );
  for (const item of items) {
    const intoDir = slash || many || !!existing.st?.isDirectory();
    if ("content" in item) {
      const target = intoDir ? posix.join(destPath, item.name) : destPath;
      writeFile(req.dest, target, (p) => writeFileSync(p, item.content, { flag: "wx", mode: 0o644 }), mode ?? 0o644, null);
    } else if ("url" in item) {
      if (req.download === null) throw new ChError(`${where(inst)}: ADD: can't download here: ${item.url}`);
      const target = intoDir ? posix.join(destPath, item.name) : destPath;
      const tmp = join(mkdirsIn(req.dest, posix.dirname(target)).host, `.ch-download.${process.pid}`);
      try {
        const got = await req.download.fetch(item.url, sum, tmp, `${where(inst)}: ADD`);
        const m = got.mtime;
        writeFile(
          req.dest,
          target,
          (p) => (got.cached ? copyFileSync(got.path, p, constants.COPYFILE_EXCL) : renameSync(got.path, p)),
          mode ?? 0o600,
          m ? { atime: m, mtime: m } : null,
        );
      } finally {
        rmSync(tmp, { force: true });
      }
    } else if (item.st.isDirectory()) {
      const dir = mkdirsIn(req.dest, destPath);
      if (item.host === req.from?.skip) throw new ChError(`${where(inst)}: ${K}: can't copy the storage directory: ${item.rel}`);
      copyTree(
        item.host,
        item.rel,
        req.dest,
        dir.rel,
        mode,
        req.from?.isContext ? req.from.ignore : null,
        req.from?.skip ?? null,
      );
    } else if (add && item.st.isFile() && isTarball(item.host)) {
      const dir = mkdirsIn(req.dest, destPath);
      reportStats(item.host, await extractTar(item.host, dir.host, { below: fromBelow(treeOf(req.dest), dir.rel) }));
    } else if (item.st.isFile()) {
      const target = intoDir ? posix.join(destPath, item.name) : destPath;
      writeFile(
        req.dest,
        target,
        (p) => copyFileSync(item.host, p, constants.COPYFILE_EXCL),
        mode ?? item.st.mode & 0o7777,
        item.st,
      );
    } else warn(`${where(inst)}: ${K}: not copying special file: ${item.rel}`);
  }
}

/** For the unpacker (extractTar()'s `below`): a path `rel` of directory `base` of tree `t` that
 * isn't where the tree is written, made there as the tree shows it: a lower layer's directory
 * copied up (its mode kept), its symbolic link made again, anything else refused as the
 * unpacker refuses it in a plain directory (no directory over an image's file); nothing for a
 * plain directory. */
function fromBelow(t: Tree, base: string): (rel: string) => void {
  return (rel) => {
    const r = base === "" ? rel : `${base}/${rel}`;
    const st = t.lstat(r);
    if (st?.isDirectory()) t.copyUp(r);
    else if (st?.isSymbolicLink()) symlinkSync(t.readlink(r), join(t.root, r));
    else if (st) throw new ChError(`not a directory: /${r}`, { errno: 20 });
  };
}

/** Writes one file at `path` in the image (parents made, symlinks on the way followed inside
 * it; one at the file's own place replaced). */
function writeFile(
  root: string | Tree,
  path: string,
  make: (host: string) => void,
  mode: number | null,
  st: { atime: Date; mtime: Date } | null,
): void {
  const t = treeOf(root);
  const parent = mkdirsIn(t, posix.dirname(path));
  const host = join(parent.host, posix.basename(path));
  // As the image shows it (a lower layer's too), and where it is written.
  const old = t.lstat(parent.rel === "" ? posix.basename(path) : `${parent.rel}/${posix.basename(path)}`);
  if (old?.isDirectory())
    throw new ChError(`can't replace a directory with a file: ${posix.join("/", parent.rel, posix.basename(path))}`);
  try {
    if (lstatOrNull(host)) unlinkSync(host);
    make(host);
    if (mode !== null) chmodSync(host, mode);
    if (st) utimesSync(host, st.atime, st.mtime);
  } catch (e) {
    throw sysError(`can't write: ${posix.join("/", parent.rel, posix.basename(path))}`, e);
  }
}

/** Copies the contents of directory `src` (context path `srcRel`) into directory `destRel`
 * of the image at `root`. Returns whether anything was copied. */
function copyTree(
  src: string,
  srcRel: string,
  root: string | Tree,
  destRel: string,
  mode: number | null,
  ignore: IgnoreMatcher | null,
  skip: string | null,
): boolean {
  let any = false;
  let names: string[];
  try {
    names = readdirSync(src).sort();
  } catch (e) {
    throw sysError(`can't read directory: ${srcRel || "."}`, e);
  }
  for (const name of names) {
    const s = join(src, name);
    const rel = srcRel === "" ? name : `${srcRel}/${name}`;
    if (s === skip) {
      warn(`not copying the storage directory: ${rel}`);
      continue;
    }
    const st = lstatSync(s);
    const excluded = ignore?.excluded(rel) ?? false;
    if (excluded && !(st.isDirectory() && ignore?.hasExceptions)) continue;
    const d = `${destRel}/${name}`;
    if (st.isDirectory()) {
      const created = resolveIn(root, d, true).st === null;
      const dir = mkdirsIn(root, d);
      const copied = copyTree(s, rel, root, dir.rel, mode, ignore, skip);
      if (excluded && !copied) {
        if (created) rmdirSync(dir.host);
        continue;
      }
      if (created || mode !== null) chmodSync(dir.host, mode ?? st.mode & 0o7777);
      any = true;
    } else if (excluded) {
    } else if (st.isSymbolicLink()) {
      const target = readlinkSync(s);
      writeFile(root, d, (p) => symlinkSync(target, p), null, null);
      any = true;
    } else if (st.isFile()) {
      writeFile(root, d, (p) => copyFileSync(s, p, constants.COPYFILE_EXCL), mode ?? st.mode & 0o7777, st);
      any = true;
    } else warn(`not copying special file: ${rel}`);
  }
  return any;
}

/** Whether ADD unpacks a file: a tar archive, plain or compressed (as Docker decides: by
 * content, not by name). */
export function isTarball(path: string): boolean {
  const head = Buffer.alloc(64 << 10);
  let n = 0;
  try {
    const fd = openSync(path, "r");
    try {
      n = readSync(fd, head, 0, head.length, 0);
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
  const buf = head.subarray(0, n);
  const ustar = (b: Buffer) => b.length >= 262 && b.subarray(257, 262).toString("latin1") === "ustar";
  const c = sniffCompression(buf);
  if (c === "none") return ustar(buf);
  if (c === "gzip") {
    try {
      return ustar(gunzipSync(buf, { finishFlush: zc.Z_SYNC_FLUSH }));
    } catch {
      return false;
    }
  }
  return c === "xz" || c === "bzip2" || c === "zstd";
}
