// Safe, single-pass, streaming tarball unpacking. node-tar's Parser reads the archive; every
// member is written by us, under our rules:
//   - no absolute paths, no "..", nothing through a symlink that leaves the image, hard links
//     only to members already inside it: any of these refuses the whole archive;
//   - FIFOs are made again with mkfifo(3), where a regular file would be written (the same
//     rules for the path: nothing through a symlink that leaves the image), their mode and
//     mtime kept, as GNU tar does unprivileged; device files, which mknod(2) makes only with
//     privilege, are left out with a warning naming them;
//   - setuid/setgid bits stripped, directories made u+rwx and files u+rw, ownership left to
//     the invoking user;
//   - in layer mode, OCI whiteouts (.wh.NAME, .wh..wh..opq) are applied, to what lower layers
//     left only, and a whiteout of "", "." or ".." is refused;
//   - GNU sparse members (old GNU, pax 0.0, 0.1, 1.0) become sparse files (see sparse.ts);
//   - removals only ever touch paths inside the image, found without following symlinks.
// Decompression happens off the main thread: zlib in a worker (gzip, zstd) or a child process
// (xz, bzip2, and the rarer compress, lzip, lz4, lzop).
import { spawn } from "node:child_process";
import {
  chmodSync,
  closeSync,
  constants,
  createReadStream,
  futimesSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  rmSync,
  type Stats,
  statSync,
  symlinkSync,
  writeSync,
} from "node:fs";
import { basename, join } from "node:path";
import { Worker } from "node:worker_threads";
import { Parser, type ReadEntry } from "tar";
import { info } from "../cli/log.ts";
import { type Progress, startProgress } from "../cli/progress.ts";
import { ChError, sysError, warn } from "../sys/errors.ts";
import { libc, loadLibc } from "../sys/libc.ts";
import { checkImageShape } from "./fixup.ts";
import { MAX_META, type MemberExtra, MemberScanner } from "./headers.ts";
import type { InflateJob, InflateMessage } from "./inflate-protocol.ts";
import { forceRemove, type InstallOptions, installImage } from "./install.ts";
import { badSparse, type SparseInfo, SparseSink } from "./sparse.ts";
import { commandPath } from "./tools.ts";
import { applyXattrs, loadXattrs, XattrReport } from "./xattrs.ts";

export type Compression = "none" | "gzip" | "xz" | "zstd" | "bzip2" | "compress" | "lzip" | "lz4" | "lzop";
/** Compressions undone by a program (zlib does gzip and zstd). */
type ToolCompression = Exclude<Compression, "none" | "gzip" | "zstd">;

export interface ExtractOptions {
  /** Apply OCI whiteouts (unpacking image layers one over another). */
  layer?: boolean;
  /** Set the extended attributes in the archive's pax records (--xattrs). */
  xattrs?: boolean;
  /** Makes the progress display (default: one line on stderr if it's a terminal). */
  progress?: (label: string, total: number | null) => Progress;
  /** Called with a path (relative to the directory unpacked into) that a member goes through
   * and that isn't there: where that directory is the upper layer of an overlay (the build
   * cache's), it brings up what the layers below show there (a directory, a symbolic link),
   * so that a member follows the image's symlinks and keeps its directories' modes. */
  below?: (rel: string) => void;
}

export interface UnpackOptions extends InstallOptions {
  xattrs?: boolean;
}

export interface ExtractStats {
  members: number;
  /** Device files left out (an unprivileged user can't make them): "NAME (character device 1,3)". */
  devices: string[];
  /** Members of types we don't unpack (tape headers, ...). */
  ignored: number;
  whiteouts: number;
  /** With --xattrs: attributes set, and those that couldn't be. */
  xattrs: XattrReport | null;
}

const WHITEOUT = ".wh.";
const OPAQUE = ".wh..wh..opq";
/** Prefix of whiteout names reserved for metadata (aufs writes .wh..wh.plnk and the like). */
const WHITEOUT_META = ".wh..wh.";
const MAX_SYMLINK_HOPS = 40;
/** Size of the read buffers, and the least the parser is given at once. */
const CHUNK = 1 << 20;
const FEED = 1 << 16;

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
  if (starts(0x1f, 0x9d)) return "compress";
  if (starts(0x4c, 0x5a, 0x49, 0x50)) return "lzip";
  if (starts(0x04, 0x22, 0x4d, 0x18)) return "lz4";
  if (starts(0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a)) return "lzop";
  return "none";
}

/** Whether rel (from the image root) names something inside the image other than the root:
 * no absolute path, no empty, "." or ".." component. Every removal checks it. */
export function isInsideRel(rel: string): boolean {
  return rel !== "" && !rel.startsWith("/") && rel.split("/").every((p) => p !== "" && p !== "." && p !== "..");
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
  readonly stats: ExtractStats;
  /** What the parser drops (attributes with --xattrs, sparse maps), from the same stream, which
   * it also edits on its way to the parser (see headers.ts). */
  readonly scanner: MemberScanner;
  /** Members (not meta headers) seen so far, ignored ones included: the scanner's ordinals. */
  ordinal = 0;
  /** Where the current member was written, if it was. */
  private written: string | null = null;
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

  /** mkfifo(3), or why libc couldn't be loaded for it. */
  private readonly mkfifo: ((path: string, mode: number) => void) | ChError;

  private readonly below: ((rel: string) => void) | null;

  constructor(
    root: string,
    layer: boolean,
    xattrs: boolean,
    mkfifo: ((path: string, mode: number) => void) | ChError,
    below: ((rel: string) => void) | null = null,
  ) {
    this.root = root;
    this.below = below;
    this.layer = layer;
    this.mkfifo = mkfifo;
    this.scanner = new MemberScanner(xattrs);
    this.stats = { members: 0, devices: [], ignored: 0, whiteouts: 0, xattrs: xattrs ? new XattrReport() : null };
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
    this.ordinal++;
    this.written = null;
    try {
      const extra = this.scanner.take(this.ordinal, e.header.cksum);
      this.member(e, extra);
      if (extra?.xattrs && this.written !== null && this.stats.xattrs)
        applyXattrs(join(this.root, this.written), extra.xattrs, this.stats.xattrs);
    } catch (err) {
      this.fail(err);
      e.resume();
    }
  }

  private member(e: ReadEntry, extra: MemberExtra | null): void {
    if (extra?.oversized)
      throw unsafeMember(
        this.current,
        `its extended header (${extra.oversized} bytes) is over the ${MAX_META} bytes read, so its name, size or link would be wrong`,
      );
    // A sparse file's real name, if its header has another (GNUSparseFile.PID/NAME).
    const sparse = FILE_TYPES.has(e.type) ? (extra?.sparse ?? null) : null;
    if (sparse?.name !== null && sparse?.name !== undefined) this.current = sparse.name;
    const parts = memberParts(this.current);
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
        this.file(parts, e, sparse);
        return;
      case "SymbolicLink":
        this.symlink(parts, e.linkpath ?? "");
        e.resume();
        return;
      case "Link":
        this.hardlink(parts, e.linkpath ?? "");
        e.resume();
        return;
      case "FIFO":
        this.fifo(parts, e);
        e.resume();
        return;
      case "CharacterDevice":
      case "BlockDevice": {
        const kind = e.type === "CharacterDevice" ? "character" : "block";
        const { devmaj, devmin } = e.header;
        // The archive's name, quoted if it has control characters (a newline would fake a log line).
        const name = parts.join("/");
        const shown = [...name].some((c) => c < " " || c === "\x7f") ? JSON.stringify(name) : name;
        this.stats.devices.push(`${shown} (${kind} device ${devmaj ?? 0},${devmin ?? 0})`);
        e.resume();
        return;
      }
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
      let st = lstatOrNull(abs);
      if (!st && this.below) {
        this.below(rel);
        st = lstatOrNull(abs);
      }
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
    if (!isInsideRel(rel)) throw unsafeMember(this.current, `would remove ${JSON.stringify(rel)}, which is not inside the image`);
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
    this.written = rel;
    if (e.mtime) this.dirTimes.push([rel, e.mtime]);
  }

  private file(parts: string[], e: ReadEntry, sparse: SparseInfo | null): void {
    if (sparse?.error) throw badSparse(this.current, sparse.kind, sparse.error);
    const { rel, absent } = this.destination(parts);
    const abs = join(this.root, rel);
    this.clear(rel, absent, false);
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    const fd = openSync(abs, flags, memberMode(e.mode, false));
    this.written = rel;
    let sink: SparseSink | null;
    try {
      sink = sparse ? new SparseSink(fd, sparse, e.size ?? 0, this.current) : null;
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    let open = true;
    const close = () => {
      if (!open) return;
      open = false;
      closeSync(fd);
    };
    e.on("data", (chunk: Buffer) => {
      if (!open) return;
      try {
        if (sink) sink.write(chunk);
        else writeAll(fd, chunk);
      } catch (err) {
        this.fail(err);
        close();
      }
    });
    e.on("end", () => {
      if (!open) return;
      try {
        sink?.end();
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
    this.written = rel;
  }

  /** A FIFO, made where a regular file of that name would be written, and as safely: its
   * directory resolved inside the image, whatever is at its name removed (never followed). */
  private fifo(parts: string[], e: ReadEntry): void {
    if (this.mkfifo instanceof ChError)
      throw new ChError(`can't make FIFO ${JSON.stringify(this.current)}: ${this.mkfifo.message}`, { errno: this.mkfifo.errno });
    const { rel, absent } = this.destination(parts);
    const abs = join(this.root, rel);
    this.clear(rel, absent, false);
    // The archive's mode (umask is 0 meanwhile), less setuid and setgid, as for every member.
    this.mkfifo(abs, (e.mode ?? 0o644) & 0o1777);
    this.written = rel;
    if (e.mtime) lutimesSync(abs, e.mtime, e.mtime);
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
    this.written = rel;
    if (rel === targetRel) return;
    this.clear(rel, absent, false);
    linkSync(join(this.root, targetRel), join(this.root, rel));
  }

  /** Applies a whiteout: .wh..wh..opq empties its directory, .wh.NAME removes NAME, of what
   * lower layers left (this layer's own files stay). */
  private whiteout(parts: string[]): void {
    this.stats.whiteouts++;
    const name = parts[parts.length - 1];
    const target = name.slice(WHITEOUT.length);
    if (target === "" || target === "." || target === "..")
      throw unsafeMember(this.current, `whiteout of ${JSON.stringify(target)}`);
    if (name !== OPAQUE && name.startsWith(WHITEOUT_META)) return; // reserved, nothing to remove
    const dir = this.resolveDir(parts.slice(0, -1), false);
    if (dir === null) return;
    if (name === OPAQUE) {
      for (const child of readdirSync(join(this.root, dir))) {
        const rel = dir ? `${dir}/${child}` : child;
        if (!this.created.has(rel)) this.remove(rel, lstatSync(join(this.root, rel)).isDirectory());
      }
      return;
    }
    const rel = dir ? `${dir}/${target}` : target;
    if (this.created.has(rel)) return;
    const st = lstatOrNull(join(this.root, rel));
    if (st) this.remove(rel, st.isDirectory());
  }

  /** Sets directory times last, deepest first, since unpacking into them changed them; only on
   * directories still there, reached through directories only (a later member may have put a
   * symlink in the way). */
  finish(): void {
    const real = new Map<string, boolean>([["", true]]);
    const isRealDir = (rel: string): boolean => {
      let r = real.get(rel);
      if (r === undefined) {
        const slash = rel.lastIndexOf("/");
        r = isRealDir(slash < 0 ? "" : rel.slice(0, slash)) && !!lstatOrNull(join(this.root, rel))?.isDirectory();
        real.set(rel, r);
      }
      return r;
    };
    for (let i = this.dirTimes.length - 1; i >= 0; i--) {
      const [rel, mtime] = this.dirTimes[i];
      if (isRealDir(rel)) lutimesSync(join(this.root, rel), mtime, mtime);
    }
  }
}

/** Types of the members that are regular files. */
const FILE_TYPES = new Set(["File", "OldFile", "ContiguousFile"]);

function writeAll(fd: number, chunk: Buffer): void {
  let off = 0;
  while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
}

/** The decompressed bytes of a tarball; how much of the file was read so far (for progress);
 * and a function that stops the decompressor and reports how it ended. */
interface Source {
  chunks: AsyncIterable<Buffer>;
  read: () => number;
  done: () => Promise<void>;
}

/** Position of an open file (shared with a child that reads it), from /proc. */
function filePosition(fd: number): number {
  try {
    const m = /^pos:\s*(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "latin1"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

function childSource(compression: ToolCompression, path: string): Source {
  const exe = TOOLS[compression].map((t) => commandPath(t)).find((p) => p !== null);
  const tool = TOOLS[compression][0];
  if (!exe) throw new ChError(`can't decompress ${path}: ${tool} not found (install it, or decompress first)`);
  const fd = openSync(path, "r");
  const child = spawn(exe, ["-dc"], { stdio: [fd, "pipe", "pipe"] });
  const { stdout, stderr: errStream } = child;
  if (!stdout || !errStream) {
    closeSync(fd);
    throw new ChError(`can't run ${tool}`);
  }
  let stderr = "";
  errStream.on("data", (c: Buffer) => {
    stderr += c.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  let open = true;
  return {
    chunks: stdout,
    read: () => (open ? filePosition(fd) : 0),
    done: async () => {
      if (child.exitCode === null && !stdout.readableEnded) child.kill();
      stdout.destroy();
      const code = await exited;
      if (open) closeSync(fd);
      open = false;
      if (code !== 0 && code !== null)
        throw new ChError(`${path}: ${tool} failed (exit ${code}): ${stderr.trim().split("\n")[0] ?? ""}`);
    },
  };
}

/** Decompresses in a worker thread (inflate-worker.ts), whose event loop does nothing else, so
 * that zlib never waits for the main thread to be free. Both sides reuse their buffers: the
 * worker reads the file into one, and copies zlib's output into a pool of POOL buffers of CHUNK
 * bytes that are transferred (not cloned) to us and back; it waits when all of them are with us. */
const POOL = 8;

/** inflate-worker.ts bundled, as the build makes it (build/build.mjs); undefined unbundled. */
declare const __INFLATE_WORKER__: string | undefined;

function startInflater(job: InflateJob): Worker {
  if (typeof __INFLATE_WORKER__ === "string") return new Worker(__INFLATE_WORKER__, { eval: true, workerData: job });
  // The TypeScript itself (tests): the module's own file.
  return new Worker(new URL("./inflate-worker.ts", import.meta.url), { workerData: job });
}

function workerSource(kind: "gzip" | "zstd", path: string): Source {
  const worker = startInflater({ path, kind, size: CHUNK, count: POOL });
  const queue: InflateMessage[] = [];
  let wake: (() => void) | null = null;
  let read = 0;
  const push = (m: InflateMessage) => {
    queue.push(m);
    wake?.();
    wake = null;
  };
  worker.on("message", push);
  worker.on("error", (e) => push({ error: e.message }));
  worker.on("exit", () => push({ error: "decompressor exited" }));
  async function* chunks(): AsyncGenerator<Buffer> {
    for (;;) {
      while (queue.length === 0)
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      const m = queue.shift() as InflateMessage;
      if (m.read !== undefined) read = m.read;
      if (m.error !== undefined) throw new Error(m.error);
      if (m.end || !m.data) return;
      yield Buffer.from(m.data, 0, m.length);
      // Whole buffers only go back: the parser keeps no part of them (see extractTar).
      if (m.length === CHUNK) worker.postMessage(m.data, [m.data]);
    }
  }
  return {
    chunks: chunks(),
    read: () => read,
    done: async () => {
      worker.removeAllListeners("exit");
      await worker.terminate();
    },
  };
}

/** The decompressed bytes of a tarball, read synchronously into the caller's buffer. */
interface SyncSource {
  /** Reads up to len bytes at off; 0 at the end. */
  readInto: (buf: Buffer, off: number, len: number) => number;
  read: () => number;
  /** Stops the decompressor (if not at the end) and reports how it ended. */
  done: () => Promise<void>;
}

const O_CLOEXEC = 0o2000000;

/** Decompressor programs, fastest first, by compression (gzip reads compress(1)'s .Z). */
const TOOLS: Record<ToolCompression, string[]> = {
  xz: ["xz"],
  bzip2: ["lbzip2", "bzip2"],
  compress: ["gzip"],
  lzip: ["lzip", "plzip"],
  lz4: ["lz4"],
  lzop: ["lzop"],
};

/** The decompressor as a child process writing into a pipe that we read with blocking reads,
 * as GNU tar does: it runs on another core while we write files, with no buffer allocated per
 * chunk. Null if there's no such program, or no libc to make the pipe with. */
async function pipeSource(compression: ToolCompression, path: string): Promise<SyncSource | null> {
  const exe = TOOLS[compression].map((t) => commandPath(t)).find((p) => p !== null);
  if (!exe) return null;
  let fds: [number, number];
  try {
    const { libc, loadLibc } = await import("../sys/libc.ts");
    await loadLibc();
    fds = libc().pipe2(O_CLOEXEC);
  } catch {
    return null;
  }
  const [r, w] = fds;
  const tool = exe.split("/").pop() as string;
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    closeSync(r);
    closeSync(w);
    throw sysError(`can't open: ${path}`, e);
  }
  const child = spawn(exe, ["-dc"], { stdio: [fd, w, "pipe"] });
  closeSync(w);
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => {
    stderr += c.toString();
  });
  const exited = new Promise<number | null>((resolve) => {
    child.on("error", (e) => {
      stderr ||= e.message;
      resolve(-1);
    });
    child.on("close", (code) => resolve(code));
  });
  let open = true;
  let ended = false;
  const close = () => {
    if (!open) return;
    open = false;
    closeSync(r);
    closeSync(fd);
  };
  return {
    readInto: (buf, off, len) => {
      const n = readSync(r, buf, off, len, null);
      if (n === 0) ended = true;
      return n;
    },
    read: () => (open ? filePosition(fd) : 0),
    done: async () => {
      if (!ended && child.exitCode === null) child.kill();
      close();
      const code = await exited;
      if (code === null || code === 0 || !ended) return;
      const why =
        stderr
          .trim()
          .split("\n")[0]
          ?.replace(/^[^:]+: (\(?stdin\)?: )?/, "") || "failed";
      throw new Error(`${why} (${tool} -d, exit ${code})`);
    },
  };
}

/** An uncompressed tarball, read synchronously. */
function fileSource(path: string): SyncSource {
  let fd: number | null;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw sysError(`can't open: ${path}`, e);
  }
  let pos = 0;
  return {
    readInto: (buf, off, len) => {
      const n = readSync(fd as number, buf, off, len, null);
      pos += n;
      return n;
    },
    read: () => pos,
    done: async () => {
      if (fd !== null) closeSync(fd);
      fd = null;
    },
  };
}

/** Synchronous reading of a tarball: itself, or a decompressor's output through a pipe. */
async function openSyncSource(path: string): Promise<SyncSource | null> {
  const compression = sniffCompression(readHead(path));
  if (compression === "gzip" || compression === "zstd") return null; // zlib is faster than the programs
  return compression === "none" ? fileSource(path) : await pipeSource(compression, path);
}

function openSource(path: string): Source {
  const compression = sniffCompression(readHead(path));
  switch (compression) {
    case "gzip":
    case "zstd":
      return workerSource(compression, path);
    case "none": {
      const stream = createReadStream(path, { highWaterMark: 1 << 20 });
      return {
        chunks: stream,
        read: () => stream.bytesRead,
        done: async () => {
          stream.destroy();
        },
      };
    }
    default:
      return childSource(compression, path);
  }
}

function corrupt(path: string, offset: number, member: string, detail: string): ChError {
  const where = member ? `at byte ${offset}, in or after member ${JSON.stringify(member)}` : `at byte ${offset}`;
  return new ChError(`${path}: corrupt or truncated archive ${where}: ${detail}`);
}

/** Unpacks the tarball at `path` into the existing directory `root`. */
export async function extractTar(path: string, root: string, opts: ExtractOptions = {}): Promise<ExtractStats> {
  if (opts.xattrs) await loadXattrs();
  // For FIFO members: an archive without any unpacks without libc all the same.
  const mkfifo = await loadLibc().then(
    () => {
      const c = libc();
      return (p: string, mode: number) => c.mkfifo(p, mode);
    },
    (e: unknown) => (e instanceof ChError ? e : new ChError(`can't load libc: ${e}`)),
  );
  const ex = new Extractor(root, opts.layer ?? false, opts.xattrs ?? false, mkfifo, opts.below ?? null);
  const size = statSync(path).size;
  const parser = new Parser({ strict: true, zstd: false, brotli: false, maxMetaEntrySize: MAX_META });
  let offset = 0;
  let sawEof = false;
  let parseError: string | null = null;
  parser.on("entry", (e: ReadEntry) => ex.onEntry(e));
  parser.on("ignoredEntry", (e: ReadEntry) => {
    ex.stats.ignored++;
    if (!e.meta) ex.ordinal++;
  });
  parser.on("eof", () => {
    sawEof = true;
  });
  parser.on("error", (err: Error) => {
    parseError ??= err.message.replace(/^TAR_[A-Z_]+: /, "");
  });
  const progress = (opts.progress ?? startProgress)(`unpacking ${basename(path)}`, size > 0 ? size : null);
  const write = (chunk: Buffer): boolean => {
    offset += chunk.length;
    for (const piece of ex.scanner.write(chunk)) parser.write(piece);
    progress.update(source.read(), ex.stats.members);
    return ex.failure === null && parseError === null;
  };
  const source: SyncSource | Source = (await openSyncSource(path)) ?? openSource(path);
  const umask = process.umask(0);
  try {
    if ("readInto" in source) {
      // One buffer, reused: the parser gets whole 512-byte blocks, so it keeps no part of a
      // chunk, and our writes are synchronous.
      const buf = Buffer.allocUnsafeSlow(CHUNK);
      let have = 0;
      for (;;) {
        const n = source.readInto(buf, have, buf.length - have);
        have += n;
        const whole = n === 0 ? have : have - (have % 512);
        if (whole < FEED && n > 0) continue;
        if (whole > 0 && !write(buf.subarray(0, whole))) break;
        if (n === 0) break;
        buf.copyWithin(0, whole, have);
        have -= whole;
      }
    } else {
      for await (const chunk of source.chunks) if (!write(chunk)) break;
    }
    await source.done();
    if (!ex.failure && parseError === null) {
      for (const piece of ex.scanner.end()) parser.write(piece);
      await new Promise<void>((resolve) => {
        parser.once("end", resolve);
        parser.once("error", () => resolve());
        parser.end();
      });
    }
  } catch (e) {
    await source.done().catch(() => {});
    if (!ex.failure) throw corrupt(path, offset, ex.current, (e as Error).message);
  } finally {
    progress.end();
    process.umask(umask);
  }
  if (ex.failure) throw new ChError(`${path}: ${ex.failure.message}`, { errno: ex.failure.errno, at: ex.failure.at });
  if (parseError) throw corrupt(path, offset, ex.current, parseError);
  if (!sawEof && ex.stats.members > 0) info(`${path}: warning: no end-of-archive marker; archive may be truncated`);
  ex.finish();
  return ex.stats;
}

/** Device files named in warnings, per archive; the rest counted. */
const DEVICES_NAMED = 10;

/** Reports left-out and ignored members, once per archive. */
export function reportStats(path: string, stats: ExtractStats): void {
  for (const d of stats.devices.slice(0, DEVICES_NAMED)) warn(`${path}: device file ignored (making one needs privilege): ${d}`);
  if (stats.devices.length > DEVICES_NAMED)
    warn(`${path}: ${stats.devices.length - DEVICES_NAMED} more device files ignored (making them needs privilege)`);
  if (stats.ignored > 0) info(`${path}: ignored ${stats.ignored} members of unsupported types`);
  stats.xattrs?.report(path);
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

/** Empties the image's /dev (if a directory), as Charliecloud does with tarballs: ch-run binds
 * the host's /dev over it, and `docker export` leaves files and directories there. */
export function emptyDev(root: string): void {
  const dev = join(root, "dev");
  if (!lstatOrNull(dev)?.isDirectory()) return;
  for (const e of readdirSync(dev)) forceRemove(join(dev, e));
}

/** Unpacks an image tarball into the directory target, atomically (see install.ts). */
export async function unpackImage(tarball: string, target: string, opts: UnpackOptions = {}): Promise<void> {
  await installImage(
    target,
    async (partial) => {
      reportStats(tarball, await extractTar(tarball, partial, { xattrs: opts.xattrs }));
      const root = imageRoot(partial, tarball);
      emptyDev(root);
      checkImageShape(root, tarball);
      return root;
    },
    opts,
  );
}

/** Unpacks image layers, lowest first, applying OCI whiteouts, into target atomically. */
export async function unpackLayers(layers: string[], target: string, opts: UnpackOptions = {}): Promise<void> {
  await installImage(
    target,
    async (partial) => {
      for (const layer of layers) reportStats(layer, await extractTar(layer, partial, { layer: true, xattrs: opts.xattrs }));
      return partial;
    },
    opts,
  );
}
