// A small read-only SquashFS 4.0 reader: one file by its path, without squashfs-tools or a mount
// (ch-run reads an image's ch/metadata.json with it on a compute node that may have neither).
// The image is untrusted: every offset and size is checked against the file and the format's
// limits, what is decompressed is capped (8 KiB metadata blocks, data blocks of the image's block
// size, the file at the caller's maximum), and the number of blocks read is bounded, so a
// corrupt or hostile image is an error (SquashError), never a crash, a hang or a huge allocation.
// Symlinks are not followed. Compressions: gzip and zstd (node:zlib), lz4, lzo, lzma and xz (here,
// xz's x86 BCJ filter too; xz with another BCJ filter by the xz program, if there is one).
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import type * as Zlib from "node:zlib";
import { findExecutable } from "../sys/which.ts";
import { LzmaError, lzmaAloneDecompress, xzDecompress as xzNative } from "./lzma.ts";

/** The image is corrupt, truncated, or uses what this reader can't read. */
export class SquashError extends Error {}

const MAGIC = 0x73717368; // "hsqs"
const SUPER_SIZE = 96;
const META_MAX = 8192;
const NO_FRAGMENT = 0xffffffff;
const UNCOMPRESSED_BLOCK = 1 << 24;
/** Metadata blocks one reader decompresses at most (a directory of 10,000 entries needs ~60). */
const META_BUDGET = 4096;

const COMPRESSIONS: Record<number, string> = { 1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd" };

/** Inode types (basic; extended ones are these + 7). */
export const InodeType = { Dir: 1, File: 2, Symlink: 3, BlockDev: 4, CharDev: 5, Fifo: 6, Socket: 7 } as const;
export type InodeType = (typeof InodeType)[keyof typeof InodeType];

export interface Inode {
  /** Basic type, extended inodes folded into it. */
  type: InodeType;
  ref: bigint;
}

interface DirInode extends Inode {
  block: number;
  offset: number;
  /** Bytes of directory listing (the stored size less 3). */
  size: number;
}

interface FileInode extends Inode {
  blocksStart: number;
  size: number;
  fragment: number;
  fragOffset: number;
  /** Where the block list starts (the inode table's stream). */
  listAt: Cursor;
}

interface Cursor {
  /** Absolute position of the metadata block. */
  block: number;
  /** Offset into its decompressed bytes. */
  offset: number;
}

/** LZ4 block format (no frame), as squashfs-tools writes it; at most `max` bytes out. */
export function lz4Decompress(src: Buffer, max: number): Buffer {
  const out = Buffer.allocUnsafe(max);
  let ip = 0;
  let op = 0;
  const bad = (why: string): never => {
    throw new SquashError(`bad lz4 data: ${why}`);
  };
  const length = (n: number): number => {
    if (n !== 15) return n;
    for (;;) {
      if (ip >= src.length) bad("truncated length");
      const b = src[ip++];
      n += b;
      if (n > max) bad("length too large");
      if (b !== 255) return n;
    }
  };
  while (ip < src.length) {
    const token = src[ip++];
    const lit = length(token >> 4);
    if (ip + lit > src.length) bad("literals past the end");
    if (op + lit > max) bad("output too large");
    src.copy(out, op, ip, ip + lit);
    ip += lit;
    op += lit;
    if (ip === src.length) break; // the last sequence is literals only
    if (ip + 2 > src.length) bad("truncated offset");
    const off = src[ip] | (src[ip + 1] << 8);
    ip += 2;
    if (off === 0 || off > op) bad("offset out of range");
    const len = length(token & 15) + 4;
    if (op + len > max) bad("output too large");
    for (let i = 0; i < len; i++, op++) out[op] = out[op - off];
  }
  return out.subarray(0, op);
}

/** LZO1X (as lzo1x_decompress_safe); at most `max` bytes out. */
export function lzoDecompress(src: Buffer, max: number): Buffer {
  const out = Buffer.allocUnsafe(max);
  let ip = 0;
  let op = 0;
  const bad = (why: string): never => {
    throw new SquashError(`bad lzo data: ${why}`);
  };
  const byte = (): number => {
    if (ip >= src.length) bad("truncated");
    return src[ip++];
  };
  const literals = (n: number) => {
    if (ip + n > src.length) bad("literals past the end");
    if (op + n > max) bad("output too large");
    src.copy(out, op, ip, ip + n);
    ip += n;
    op += n;
  };
  const zeros = (t: number, add: number): number => {
    while (ip < src.length && src[ip] === 0) {
      t += 255;
      ip++;
      if (t > max) bad("length too large");
    }
    return t + add + byte();
  };
  const match = (from: number, n: number) => {
    if (from < 0 || from >= op) bad("offset out of range");
    if (op + n > max) bad("output too large");
    for (let i = 0; i < n; i++, op++) out[op] = out[from + i];
  };
  let state = 0;
  if (src.length > 0 && src[0] > 17) {
    const t = src[ip++] - 17;
    literals(t);
    state = Math.min(t, 4);
  }
  for (;;) {
    let t = byte();
    let from: number;
    let next: number;
    if (t < 16) {
      if (state === 0) {
        if (t === 0) t = zeros(t, 15);
        literals(t + 3);
        state = 4;
        continue;
      }
      next = t & 3;
      if (state !== 4) {
        from = op - 1 - (t >> 2) - (byte() << 2);
        t = 2;
      } else {
        from = op - (1 + 0x800) - (t >> 2) - (byte() << 2);
        t = 3;
      }
    } else if (t >= 64) {
      next = t & 3;
      from = op - 1 - ((t >> 2) & 7) - (byte() << 3);
      t = (t >> 5) - 1 + 2;
    } else if (t >= 32) {
      t = (t & 31) + 2;
      if (t === 2) t = zeros(t, 31);
      const v = byte() | (byte() << 8);
      from = op - 1 - (v >> 2);
      next = v & 3;
    } else {
      from = op - ((t & 8) << 11);
      t = (t & 7) + 2;
      if (t === 2) t = zeros(t, 7);
      const v = byte() | (byte() << 8);
      from -= v >> 2;
      next = v & 3;
      if (from === op) {
        if (t !== 3 || ip !== src.length) bad("data after the end marker");
        return out.subarray(0, op);
      }
      from -= 0x4000;
    }
    match(from, t);
    literals(next);
    state = next;
  }
}

/** xz or lzma (legacy "alone") data: here, or by the xz program for what this decoder lacks (the
 * BCJ filters of mksquashfs -Xbcj). */
function xzDecompress(src: Buffer, max: number, format: "xz" | "lzma"): Buffer {
  try {
    return format === "xz" ? xzNative(src, max) : lzmaAloneDecompress(src, max);
  } catch (e) {
    if (!(e instanceof LzmaError)) throw e;
    if (!e.message.startsWith("xz filter")) throw new SquashError(`bad ${format} data: ${e.message}`);
    const xz = findExecutable("xz", process.env.PATH ?? "/usr/bin:/bin");
    if (!xz) throw new SquashError(`${e.message} here: it needs the xz program, not found in $PATH`);
    return xzProgram(xz, src, max, format);
  }
}

function xzProgram(xz: string, src: Buffer, max: number, format: "xz" | "lzma"): Buffer {
  // node:child_process (as node:zlib below) loaded only when used: ch-run imports this module,
  // and loading it at start would cost every launch a few ms.
  const { spawnSync } = process.getBuiltinModule("node:child_process");
  const r = spawnSync(xz, ["-dcq", `--format=${format}`, "--single-stream", "-M", "64MiB"], {
    input: src,
    maxBuffer: max,
    stdio: ["pipe", "pipe", "pipe"],
  });
  if (r.error) {
    // More output than `max`: spawnSync killed it ("spawnSync xz ENOBUFS" would not say so).
    const more = (r.error as NodeJS.ErrnoException).code === "ENOBUFS";
    throw new SquashError(`bad ${format} data: ${more ? `larger than ${max} bytes` : r.error.message}`);
  }
  if (r.status !== 0) throw new SquashError(`bad ${format} data: ${r.stderr.toString().trim().split("\n")[0]}`);
  return r.stdout;
}

function decompressor(id: number): (src: Buffer, max: number) => Buffer {
  const zlib: typeof Zlib = process.getBuiltinModule("node:zlib");
  const z = (f: (b: Buffer, o: Zlib.ZlibOptions) => Buffer) => (src: Buffer, max: number) => {
    try {
      return f(src, { maxOutputLength: max });
    } catch (e) {
      throw new SquashError(`bad ${COMPRESSIONS[id]} data: ${(e as Error).message}`);
    }
  };
  switch (id) {
    case 1:
      return z(zlib.inflateSync);
    case 2:
      return (src, max) => xzDecompress(src, max, "lzma");
    case 3:
      return lzoDecompress;
    case 4:
      return (src, max) => xzDecompress(src, max, "xz");
    case 5:
      return lz4Decompress;
    case 6: {
      const zstd = (zlib as { zstdDecompressSync?: (b: Buffer, o: Zlib.ZlibOptions) => Buffer }).zstdDecompressSync;
      if (!zstd) throw new SquashError("zstd compression not supported by this Node");
      return z(zstd);
    }
    default:
      throw new SquashError(`unknown compression ${id}`);
  }
}

/** A SquashFS image open for reading. Close it. */
export class SquashImage {
  readonly compression: string;
  readonly blockSize: number;
  private readonly fd: number;
  private readonly end: number;
  private readonly decompress: (src: Buffer, max: number) => Buffer;
  private readonly fragments: number;
  private readonly fragTable: number;
  private readonly inodeTable: number;
  private readonly dirTable: number;
  private readonly root: bigint;
  private readonly cache = new Map<number, { data: Buffer; next: number }>();
  private budget: number;

  /** `metaBlocks`: how many metadata blocks may be decompressed at most. */
  constructor(file: string, metaBlocks = META_BUDGET) {
    this.budget = metaBlocks;
    this.fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const st = fstatSync(this.fd);
      if (!st.isFile()) throw new SquashError("not a regular file");
      this.end = st.size;
      const sb = this.read(0, SUPER_SIZE, "superblock");
      if (sb.readUInt32LE(0) !== MAGIC) throw new SquashError("not a SquashFS image (bad magic)");
      const [major, minor] = [sb.readUInt16LE(28), sb.readUInt16LE(30)];
      if (major !== 4 || minor !== 0) throw new SquashError(`SquashFS version ${major}.${minor} not supported (only 4.0)`);
      this.blockSize = sb.readUInt32LE(12);
      const log = sb.readUInt16LE(22);
      if (log < 12 || log > 20 || this.blockSize !== 1 << log) throw new SquashError(`bad block size ${this.blockSize}`);
      const used = sb.readBigUInt64LE(40);
      if (used > BigInt(this.end)) throw new SquashError(`truncated: ${this.end} bytes of ${used}`);
      this.end = Number(used);
      this.fragments = sb.readUInt32LE(16);
      this.root = sb.readBigUInt64LE(32);
      this.inodeTable = this.u64(sb, 64, "inode table");
      this.dirTable = this.u64(sb, 72, "directory table");
      this.fragTable = this.fragments > 0 ? this.u64(sb, 80, "fragment table") : 0;
      if (this.inodeTable >= this.dirTable || this.dirTable >= this.end)
        throw new SquashError("bad inode or directory table position");
      const id = sb.readUInt16LE(20);
      this.compression = COMPRESSIONS[id] ?? `unknown (${id})`;
      this.decompress = decompressor(id);
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  close(): void {
    closeSync(this.fd);
  }

  /** A u64 of the superblock as a position inside the image. */
  private u64(b: Buffer, at: number, what: string): number {
    const v = b.readBigUInt64LE(at);
    if (v > BigInt(this.end)) throw new SquashError(`${what} past the end of the image`);
    return Number(v);
  }

  /** `len` bytes at `pos`, all inside the image. */
  private read(pos: number, len: number, what: string): Buffer {
    if (pos < 0 || len < 0 || pos + len > this.end) throw new SquashError(`${what} past the end of the image`);
    const b = Buffer.allocUnsafe(len);
    let n = 0;
    while (n < len) {
      const r = readSync(this.fd, b, n, len - n, pos + n);
      if (r === 0) throw new SquashError(`${what}: truncated`);
      n += r;
    }
    return b;
  }

  /** The metadata block at `pos`, decompressed, and where the next one starts. */
  private meta(pos: number): { data: Buffer; next: number } {
    const hit = this.cache.get(pos);
    if (hit) return hit;
    if (--this.budget < 0) throw new SquashError("too many metadata blocks read");
    const h = this.read(pos, 2, "metadata block").readUInt16LE(0);
    const len = h & 0x7fff;
    if (len === 0 || len > META_MAX) throw new SquashError(`bad metadata block size at ${pos}`);
    const raw = this.read(pos + 2, len, "metadata block");
    const data = h & 0x8000 ? raw : this.decompress(raw, META_MAX);
    if (data.length === 0) throw new SquashError(`empty metadata block at ${pos}`);
    const b = { data, next: pos + 2 + len };
    this.cache.set(pos, b);
    return b;
  }

  /** `len` bytes of a metadata stream from `c`, which is moved past them. */
  private metaRead(c: Cursor, len: number): Buffer {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < len) {
      const b = this.meta(c.block);
      if (c.offset > b.data.length) throw new SquashError(`bad metadata offset ${c.offset} at ${c.block}`);
      if (c.offset === b.data.length) {
        c.block = b.next;
        c.offset = 0;
        continue;
      }
      const n = Math.min(len - got, b.data.length - c.offset);
      parts.push(b.data.subarray(c.offset, c.offset + n));
      got += n;
      c.offset += n;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }

  /** The inode a reference (block << 16 | offset, relative to the inode table) points to. */
  private inode(ref: bigint): Inode | DirInode | FileInode {
    const block = ref >> 16n;
    if (block >= BigInt(this.end - this.inodeTable)) throw new SquashError("inode reference past the end");
    const c: Cursor = { block: this.inodeTable + Number(block), offset: Number(ref & 0xffffn) };
    const h = this.metaRead(c, 16);
    const raw = h.readUInt16LE(0);
    if (raw < 1 || raw > 14) throw new SquashError(`bad inode type ${raw}`);
    const type = (raw > 7 ? raw - 7 : raw) as InodeType;
    if (raw === InodeType.Dir) {
      const b = this.metaRead(c, 16);
      const size = b.readUInt16LE(8);
      if (size < 3) throw new SquashError("bad directory size");
      return { type, ref, block: b.readUInt32LE(0), offset: b.readUInt16LE(10), size: size - 3 };
    }
    if (raw === InodeType.Dir + 7) {
      const b = this.metaRead(c, 24);
      const size = b.readUInt32LE(4);
      if (size < 3) throw new SquashError("bad directory size");
      return { type, ref, block: b.readUInt32LE(8), offset: b.readUInt16LE(18), size: size - 3 };
    }
    if (raw === InodeType.File) {
      const b = this.metaRead(c, 16);
      return {
        type,
        ref,
        blocksStart: b.readUInt32LE(0),
        fragment: b.readUInt32LE(4),
        fragOffset: b.readUInt32LE(8),
        size: b.readUInt32LE(12),
        listAt: c,
      };
    }
    if (raw === InodeType.File + 7) {
      const b = this.metaRead(c, 40);
      const start = b.readBigUInt64LE(0);
      const size = b.readBigUInt64LE(8);
      if (start > BigInt(this.end)) throw new SquashError("file data past the end");
      return {
        type,
        ref,
        blocksStart: Number(start),
        // A size beyond 2^53 is kept as "huge" (the caller refuses it by size).
        size: size > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(size),
        fragment: b.readUInt32LE(28),
        fragOffset: b.readUInt32LE(32),
        listAt: c,
      };
    }
    return { type, ref };
  }

  /** The inode of `name` in directory `dir`, or null. */
  private child(dir: DirInode, name: string): Inode | null {
    const want = Buffer.from(name);
    const c: Cursor = { block: this.dirTable + dir.block, offset: dir.offset };
    if (c.block >= this.end) throw new SquashError("directory listing past the end");
    let left = dir.size;
    while (left > 0) {
      if (left < 12) throw new SquashError("bad directory listing");
      const h = this.metaRead(c, 12);
      left -= 12;
      const count = h.readUInt32LE(0) + 1;
      if (count > 256) throw new SquashError("bad directory header");
      const start = h.readUInt32LE(4);
      for (let i = 0; i < count; i++) {
        if (left < 8) throw new SquashError("bad directory listing");
        const e = this.metaRead(c, 8);
        const len = e.readUInt16LE(6) + 1;
        if (len > 256 || left < 8 + len) throw new SquashError("bad directory entry");
        const n = this.metaRead(c, len);
        left -= 8 + len;
        if (n.equals(want)) return this.inode((BigInt(start) << 16n) | BigInt(e.readUInt16LE(0)));
      }
    }
    return null;
  }

  /** The inode at `path` (components from the root), symlinks not followed; null if absent.
   * A component before the last that is not a directory is an Error naming it. */
  lookup(path: string[]): Inode | null {
    let node = this.inode(this.root);
    if (node.type !== InodeType.Dir) throw new SquashError("root is not a directory");
    for (let i = 0; i < path.length; i++) {
      if (node.type !== InodeType.Dir) throw new NotDirectory(path.slice(0, i).join("/"));
      const next = this.child(node as DirInode, path[i]);
      if (!next) return null;
      node = next;
    }
    return node;
  }

  /** Size of a regular file's inode. */
  fileSize(node: Inode): number {
    if (node.type !== InodeType.File) throw new SquashError("not a regular file");
    return (node as FileInode).size;
  }

  /** The contents of a regular file, which must be at most `max` bytes. */
  readFile(node: Inode, max: number): Buffer {
    const f = node as FileInode;
    if (f.type !== InodeType.File) throw new SquashError("not a regular file");
    if (f.size > max) throw new SquashError(`larger than ${max} bytes`);
    const bs = this.blockSize;
    const frag = f.fragment !== NO_FRAGMENT;
    const nBlocks = frag ? Math.floor(f.size / bs) : Math.ceil(f.size / bs);
    const sizes = this.metaRead({ ...f.listAt }, 4 * nBlocks);
    const out = Buffer.alloc(f.size);
    let pos = f.blocksStart;
    for (let i = 0; i < nBlocks; i++) {
      const s = sizes.readUInt32LE(4 * i);
      const len = s & (UNCOMPRESSED_BLOCK - 1);
      const want = Math.min(bs, f.size - i * bs);
      if (len === 0) continue; // sparse: zeros
      if (len > bs || s > (UNCOMPRESSED_BLOCK | bs)) throw new SquashError("bad data block size");
      this.block(pos, s, want).copy(out, i * bs);
      pos += len;
    }
    const tail = f.size - nBlocks * bs;
    if (frag && tail > 0) {
      if (f.fragment >= this.fragments) throw new SquashError("bad fragment index");
      const ptr = this.read(this.fragTable + 8 * Math.floor(f.fragment / 512), 8, "fragment table").readBigUInt64LE(0);
      if (ptr >= BigInt(this.end)) throw new SquashError("fragment table past the end");
      const e = this.metaRead({ block: Number(ptr), offset: (f.fragment % 512) * 16 }, 16);
      const start = e.readBigUInt64LE(0);
      const s = e.readUInt32LE(8);
      const len = s & (UNCOMPRESSED_BLOCK - 1);
      if (start >= BigInt(this.end) || len === 0 || len > bs || s > (UNCOMPRESSED_BLOCK | bs))
        throw new SquashError("bad fragment entry");
      const b = this.block(Number(start), s, 0);
      if (f.fragOffset + tail > b.length) throw new SquashError("fragment too short");
      b.copy(out, nBlocks * bs, f.fragOffset, f.fragOffset + tail);
    }
    return out;
  }

  /** A data block (size word `s` from the block list) at `pos`, at least `want` bytes. */
  private block(pos: number, s: number, want: number): Buffer {
    const len = s & (UNCOMPRESSED_BLOCK - 1);
    const raw = this.read(pos, len, "data block");
    const data = s & UNCOMPRESSED_BLOCK ? raw : this.decompress(raw, this.blockSize);
    if (data.length < want) throw new SquashError("data block too short");
    return data;
  }
}

/** A path component before the last is not a directory (e.g. a symlink). */
export class NotDirectory extends SquashError {
  readonly path: string;
  constructor(path: string) {
    super(`${path}: not a directory`);
    this.path = path;
  }
}
