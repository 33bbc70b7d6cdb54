// Safe, single-pass, streaming tarball unpacking. node-tar's Parser reads the archive; every
// member is written by us, under our rules:
//   - no absolute paths, no "..", nothing through a symlink that leaves the image, hard links
//     only to members already inside it: any of these refuses the whole archive;
//   - device files and FIFOs are dropped, setuid/setgid bits stripped, directories made u+rwx
//     and files u+rw, ownership left to the invoking user;
//   - in layer mode, OCI whiteouts (.wh.NAME, .wh..wh..opq) are applied.
// Decompression happens off the main thread: zlib (gzip, zstd) or a child process (xz, bzip2).
import { spawn } from "node:child_process";
import {
  chmodSync,
  closeSync,
  constants,
  createReadStream,
  futimesSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
  rmSync,
  type Stats,
  symlinkSync,
  utimesSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { createGunzip, createZstdDecompress } from "node:zlib";
import { Parser, type ReadEntry } from "tar";
import { info } from "../cli/log.ts";
import { ChError, sysError } from "../sys/errors.ts";
import { checkImageShape } from "./fixup.ts";
import { type InstallOptions, installImage } from "./install.ts";
import { commandPath } from "./tools.ts";

export type Compression = "none" | "gzip" | "xz" | "zstd" | "bzip2";

export interface ExtractOptions {
  /** Apply OCI whiteouts (unpacking image layers one over another). */
  layer?: boolean;
}

export interface ExtractStats {
  members: number;
  /** Device files and FIFOs, which an unprivileged image can't have. */
  dropped: number;
  /** Members of types we don't unpack (sparse files, tape headers, ...). */
  ignored: number;
  whiteouts: number;
}

const WHITEOUT = ".wh.";
const OPAQUE = ".wh..wh..opq";
const MAX_SYMLINK_HOPS = 40;

/** An archive member that would write outside the image, or otherwise can't be trusted. */
export function unsafeMember(member: string, why: string): ChError {
  return new ChError(`refusing unsafe member ${JSON.stringify(member)}: ${why}`);
}

/** Path components of a member name, with "." and empty ones removed; [] is the image root.
 * Throws for absolute paths and "..", which no image member needs. */
export function memberParts(name: string): string[] {
  if (name.startsWith("/")) throw unsafeMember(name, "absolute path");
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw unsafeMember(name, 'path contains ".."');
  return parts;
}

/** Mode of an unpacked member: no setuid/setgid, u+rwx for directories, u+rw otherwise. */
export function memberMode(mode: number | undefined, dir: boolean): number {
  const base = mode ?? (dir ? 0o755 : 0o644);
  return (base & 0o1777) | (dir ? 0o700 : 0o600);
}

/** Compression of a file from its first bytes. */
export function sniffCompression(head: Buffer): Compression {
  const starts = (...bytes: number[]) => bytes.every((b, i) => head[i] === b);
  if (starts(0x1f, 0x8b)) return "gzip";
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return "xz";
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return "zstd";
  if (starts(0x42, 0x5a, 0x68)) return "bzip2";
  return "none";
}

function readHead(path: string): Buffer {
  const head = Buffer.alloc(8);
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw sysError(`can't open: ${path}`, e);
  }
  try {
    readSync(fd, head, 0, head.length, 0);
  } catch (e) {
    throw sysError(`can't read: ${path}`, e);
  } finally {
    closeSync(fd);
  }
  return head;
}

function isErrno(e: unknown, code: string): boolean {
  return typeof e === "object" && e !== null && "code" in e && e.code === code;
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch (e) {
    if (isErrno(e, "ENOENT")) return null;
    throw e;
  }
}

/** Writes the members of one archive into an existing directory. */
class Extractor {
  readonly root: string;
  readonly layer: boolean;
  readonly stats: ExtractStats = { members: 0, dropped: 0, ignored: 0, whiteouts: 0 };
  /** Relative paths (symlinks resolved) known to be real directories. */
  private readonly dirs = new Set<string>([""]);
  /** Paths created by this archive (opaque whiteouts spare them). */
  private readonly created = new Set<string>();
  /** Directories that were empty when this archive started: in them, only what it created
   * can exist, which saves an lstat(2) per member. */
  private readonly fresh = new Set<string>();
  private readonly dirTimes: [string, Date][] = [];
  failure: ChError | null = null;
  /** Name of the member being written, for error messages. */
  current = "";

  constructor(root: string, layer: boolean) {
    this.root = root;
    this.layer = layer;
    if (readdirSync(root).length === 0) this.fresh.add("");
  }

  fail(e: unknown): void {
    if (this.failure) return;
    this.failure = e instanceof ChError ? e : sysError(`can't unpack member ${JSON.stringify(this.current)}`, e);
  }

  onEntry(e: ReadEntry): void {
    if (this.failure) {
      e.resume();
      return;
    }
    this.current = e.path;
    this.stats.members++;
    try {
      this.member(e);
    } catch (err) {
      this.fail(err);
      e.resume();
    }
  }

  private member(e: ReadEntry): void {
    const parts = memberParts(e.path);
    if (parts.length === 0) {
      e.resume(); // the top-level "." directory
      return;
    }
    if (this.layer && parts[parts.length - 1].startsWith(WHITEOUT)) {
      this.whiteout(parts);
      e.resume();
      return;
    }
    switch (e.type) {
      case "Directory":
      case "GNUDumpDir":
        this.directory(parts, e);
        e.resume();
        return;
      case "File":
      case "OldFile":
      case "ContiguousFile":
        this.file(parts, e);
        return;
      case "SymbolicLink":
        this.symlink(parts, e.linkpath ?? "");
        e.resume();
        return;
      case "Link":
        this.hardlink(parts, e.linkpath ?? "");
        e.resume();
        return;
      case "CharacterDevice":
      case "BlockDevice":
      case "FIFO":
        this.stats.dropped++;
        e.resume();
        return;
      default:
        this.stats.ignored++;
        e.resume();
    }
  }

  /** Resolves the directory made of `parts` inside the image, following symlinks only while
   * they stay inside it; missing directories are created when `create`, else null returned. */
  private resolveDir(parts: string[], create: boolean): string | null {
    const out: string[] = [];
    const queue = [...parts];
    let hops = 0;
    while (queue.length > 0) {
      const c = queue.shift() as string;
      if (c === "" || c === ".") continue;
      if (c === "..") {
        if (out.length === 0) throw unsafeMember(this.current, "goes through a symlink out of the image");
        out.pop();
        continue;
      }
      out.push(c);
      const rel = out.join("/");
      if (this.dirs.has(rel)) continue;
      const abs = join(this.root, rel);
      const st = lstatOrNull(abs);
      if (!st) {
        if (!create) return null;
        mkdirSync(abs, 0o755);
        this.dirs.add(rel);
        this.created.add(rel);
        this.fresh.add(rel);
      } else if (st.isDirectory()) {
        this.dirs.add(rel);
      } else if (st.isSymbolicLink()) {
        if (++hops > MAX_SYMLINK_HOPS) throw unsafeMember(this.current, "too many levels of symbolic links");
        const target = readlinkSync(abs);
        if (target.startsWith("/")) throw unsafeMember(this.current, `goes through absolute symlink ${rel} -> ${target}`);
        out.pop();
        queue.unshift(...target.split("/"));
      } else {
        throw new ChError(`can't unpack member ${JSON.stringify(this.current)}: not a directory: ${rel}`);
      }
    }
    return out.join("/");
  }

  /** Relative path where the member `parts` goes, its parent directory resolved and created,
   * and whether nothing can be there yet. */
  private destination(parts: string[]): { rel: string; absent: boolean } {
    const parent = this.resolveDir(parts.slice(0, -1), true) as string;
    const rel = parent ? `${parent}/${parts[parts.length - 1]}` : parts[parts.length - 1];
    const absent = this.fresh.has(parent) && !this.created.has(rel);
    this.created.add(rel);
    return { rel, absent };
  }

  /** Removes whatever is at rel, unless it's a directory and a directory is wanted; returns
   * whether a directory was kept. Never follows a symlink found there. */
  private clear(rel: string, absent: boolean, wantDir: boolean): boolean {
    if (absent) return false;
    const abs = join(this.root, rel);
    const st = lstatOrNull(abs);
    if (!st) return false;
    if (wantDir && st.isDirectory()) return true;
    this.remove(rel, st.isDirectory());
    return false;
  }

  private remove(rel: string, dir: boolean): void {
    if (dir) {
      rmSync(join(this.root, rel), { recursive: true, force: true });
      for (const d of this.dirs) if (d === rel || d.startsWith(`${rel}/`)) this.dirs.delete(d);
    } else {
      rmSync(join(this.root, rel), { force: true });
    }
  }

  private directory(parts: string[], e: ReadEntry): void {
    const { rel, absent } = this.destination(parts);
    const abs = join(this.root, rel);
    const mode = memberMode(e.mode, true);
    if (this.clear(rel, absent, true)) {
      // Already there, e.g. implied by an earlier member: take the member's mode.
      chmodSync(abs, mode);
    } else {
      mkdirSync(abs, mode);
      this.fresh.add(rel);
    }
    this.dirs.add(rel);
    if (e.mtime) this.dirTimes.push([rel, e.mtime]);
  }

  private file(parts: string[], e: ReadEntry): void {
    const { rel, absent } = this.destination(parts);
    const abs = join(this.root, rel);
    this.clear(rel, absent, false);
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    const fd = openSync(abs, flags, memberMode(e.mode, false));
    let open = true;
    const close = () => {
      if (!open) return;
      open = false;
      closeSync(fd);
    };
    e.on("data", (chunk: Buffer) => {
      if (!open) return;
      try {
        writeAll(fd, chunk);
      } catch (err) {
        this.fail(err);
        close();
      }
    });
    e.on("end", () => {
      if (!open) return;
      try {
        if (e.mtime) futimesSync(fd, e.mtime, e.mtime);
        close();
      } catch (err) {
        this.fail(err);
        close();
      }
    });
  }

  private symlink(parts: string[], target: string): void {
    const { rel, absent } = this.destination(parts);
    this.clear(rel, absent, false);
    symlinkSync(target, join(this.root, rel));
  }

  private hardlink(parts: string[], target: string): void {
    let targetParts: string[];
    try {
      targetParts = memberParts(target);
    } catch {
      throw unsafeMember(this.current, `hard link to ${JSON.stringify(target)} is outside the image`);
    }
    if (targetParts.length === 0) throw unsafeMember(this.current, "hard link to the image root");
    const parent = this.resolveDir(targetParts.slice(0, -1), false);
    const name = targetParts[targetParts.length - 1];
    const targetRel = parent ? `${parent}/${name}` : name;
    const st = parent === null ? null : lstatOrNull(join(this.root, targetRel));
    if (!st) throw new ChError(`can't unpack member ${JSON.stringify(this.current)}: hard link target missing: ${target}`);
    if (st.isDirectory()) throw unsafeMember(this.current, `hard link to a directory: ${target}`);
    const { rel, absent } = this.destination(parts);
    if (rel === targetRel) return;
    this.clear(rel, absent, false);
    linkSync(join(this.root, targetRel), join(this.root, rel));
  }

  private whiteout(parts: string[]): void {
    this.stats.whiteouts++;
    const dir = this.resolveDir(parts.slice(0, -1), false);
    if (dir === null) return;
    const name = parts[parts.length - 1];
    if (name === OPAQUE) {
      for (const child of readdirSync(join(this.root, dir))) {
        const rel = dir ? `${dir}/${child}` : child;
        if (!this.created.has(rel)) this.remove(rel, lstatSync(join(this.root, rel)).isDirectory());
      }
      return;
    }
    const rel = dir ? `${dir}/${name.slice(WHITEOUT.length)}` : name.slice(WHITEOUT.length);
    const st = lstatOrNull(join(this.root, rel));
    if (st) this.remove(rel, st.isDirectory());
  }

  /** Sets directory times last, deepest first, since unpacking into them changed them. */
  finish(): void {
    for (let i = this.dirTimes.length - 1; i >= 0; i--) {
      const [rel, mtime] = this.dirTimes[i];
      try {
        utimesSync(join(this.root, rel), mtime, mtime);
      } catch {
        // removed by a later member or whiteout
      }
    }
  }
}

function writeAll(fd: number, chunk: Buffer): void {
  let off = 0;
  while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
}

/** The decompressed bytes of a tarball, and a function that reports how the decompressor
 * ended (a child's exit status). */
interface Source {
  stream: Readable;
  done: () => Promise<void>;
}

function childSource(tool: string, path: string): Source {
  const exe = commandPath(tool);
  if (!exe) throw new ChError(`can't decompress ${path}: ${tool} not found (install it, or decompress first)`);
  const fd = openSync(path, "r");
  const child = spawn(exe, ["-dc"], { stdio: [fd, "pipe", "pipe"] });
  closeSync(fd);
  const { stdout, stderr: errStream } = child;
  if (!stdout || !errStream) throw new ChError(`can't run ${tool}`);
  let stderr = "";
  errStream.on("data", (c: Buffer) => {
    stderr += c.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  return {
    stream: stdout,
    done: async () => {
      if (child.exitCode === null && !stdout.readableEnded) child.kill();
      const code = await exited;
      if (code !== 0 && code !== null)
        throw new ChError(`${path}: ${tool} failed (exit ${code}): ${stderr.trim().split("\n")[0] ?? ""}`);
    },
  };
}

function openSource(path: string): Source {
  const compression = sniffCompression(readHead(path));
  const file = () => createReadStream(path, { highWaterMark: 1 << 20 });
  switch (compression) {
    case "gzip":
      return { stream: file().pipe(createGunzip({ chunkSize: 1 << 17 })), done: async () => {} };
    case "zstd":
      return { stream: file().pipe(createZstdDecompress({ chunkSize: 1 << 17 })), done: async () => {} };
    case "xz":
      return childSource("xz", path);
    case "bzip2":
      return childSource("bzip2", path);
    default:
      return { stream: file(), done: async () => {} };
  }
}

function corrupt(path: string, offset: number, member: string, detail: string): ChError {
  const where = member ? `at byte ${offset}, in or after member ${JSON.stringify(member)}` : `at byte ${offset}`;
  return new ChError(`${path}: corrupt or truncated archive ${where}: ${detail}`);
}

/** Unpacks the tarball at `path` into the existing directory `root`. */
export async function extractTar(path: string, root: string, opts: ExtractOptions = {}): Promise<ExtractStats> {
  const ex = new Extractor(root, opts.layer ?? false);
  const source = openSource(path);
  const parser = new Parser({ strict: true, zstd: false, brotli: false });
  let offset = 0;
  let sawEof = false;
  let parseError: string | null = null;
  parser.on("entry", (e: ReadEntry) => ex.onEntry(e));
  parser.on("ignoredEntry", () => {
    ex.stats.ignored++;
  });
  parser.on("eof", () => {
    sawEof = true;
  });
  parser.on("error", (err: Error) => {
    parseError ??= err.message.replace(/^TAR_[A-Z_]+: /, "");
  });
  const umask = process.umask(0);
  try {
    await feed(
      parser,
      source,
      ex,
      () => parseError !== null,
      (n) => {
        offset += n;
      },
    );
  } catch (e) {
    if (!ex.failure) throw corrupt(path, offset, ex.current, (e as Error).message);
  } finally {
    process.umask(umask);
  }
  if (ex.failure) throw new ChError(`${path}: ${ex.failure.message}`, { errno: ex.failure.errno, at: ex.failure.at });
  if (parseError) throw corrupt(path, offset, ex.current, parseError);
  if (!sawEof && ex.stats.members > 0) info(`${path}: warning: no end-of-archive marker; archive may be truncated`);
  ex.finish();
  return ex.stats;
}

async function feed(
  parser: Parser,
  source: Source,
  ex: Extractor,
  broken: () => boolean,
  count: (n: number) => void,
): Promise<void> {
  try {
    for await (const chunk of source.stream) {
      count((chunk as Buffer).length);
      parser.write(chunk as Buffer);
      if (ex.failure || broken()) break;
    }
  } finally {
    source.stream.destroy();
    await source.done();
  }
  if (ex.failure || broken()) return;
  await new Promise<void>((resolve) => {
    parser.once("end", resolve);
    parser.once("error", () => resolve());
    parser.end();
  });
}

/** Reports dropped and ignored members, once per archive. */
export function reportStats(path: string, stats: ExtractStats): void {
  if (stats.dropped > 0) info(`${path}: ignored ${stats.dropped} device files and FIFOs`);
  if (stats.ignored > 0) info(`${path}: ignored ${stats.ignored} members of unsupported types`);
}

/** Top-level names that are part of an image, never a wrapper directory to strip. */
const IMAGE_TOP = new Set(["bin", "boot", "dev", "etc", "home", "lib", "lib64", "opt", "root", "sbin", "srv", "usr", "var"]);

/** If everything landed in one top-level directory (`tar czf x.tar.gz mydir`), that
 * directory is the image root; else the partial itself is. */
export function imageRoot(partial: string, what: string): string {
  const entries = readdirSync(partial);
  if (entries.length !== 1 || IMAGE_TOP.has(entries[0])) return partial;
  const only = join(partial, entries[0]);
  if (!lstatSync(only).isDirectory()) return partial;
  info(`${what}: stripping single top-level directory: ${entries[0]}`);
  return only;
}

/** Unpacks an image tarball into the directory target, atomically (see install.ts). */
export async function unpackImage(tarball: string, target: string, opts: InstallOptions = {}): Promise<void> {
  await installImage(
    target,
    async (partial) => {
      reportStats(tarball, await extractTar(tarball, partial));
      const root = imageRoot(partial, tarball);
      checkImageShape(root, tarball);
      return root;
    },
    opts,
  );
}

/** Unpacks image layers, lowest first, applying OCI whiteouts, into target atomically. */
export async function unpackLayers(layers: string[], target: string, opts: InstallOptions = {}): Promise<void> {
  await installImage(
    target,
    async (partial) => {
      for (const layer of layers) reportStats(layer, await extractTar(layer, partial, { layer: true }));
      return partial;
    },
    opts,
  );
}
