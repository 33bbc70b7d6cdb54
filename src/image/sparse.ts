// GNU sparse files in tarballs, restored as sparse files (holes left unwritten, the size set at
// the end). GNU tar writes four formats, all of which carry a map of (offset, length) data
// segments and the file's real size, the data being the segments one after another:
//   - old GNU (type 'S'): the map in the header (4 entries) and in extension blocks of 21 entries
//     after it, each flagged when another follows; the real size in the header;
//   - pax 0.0: records GNU.sparse.size, GNU.sparse.numblocks, then GNU.sparse.offset and
//     GNU.sparse.numbytes alternately;
//   - pax 0.1: GNU.sparse.map=OFF,LEN,OFF,LEN... and GNU.sparse.name (the real name; the header
//     has GNUSparseFile.PID/NAME);
//   - pax 1.0: GNU.sparse.major=1, minor=0, name, realsize, and the map at the start of the data,
//     decimal numbers one a line (count, then offset and length pairs), padded to 512 bytes.
// The map is untrusted: segments must be in order, not overlap, lie within the real size, and add
// up to the member's data; anything else refuses the member.
import { ftruncateSync, writeSync } from "node:fs";
import { ChError } from "../sys/errors.ts";

/** Most segments a map may have (GNU tar writes one per data extent). */
export const MAX_SPARSE_ENTRIES = 1 << 20;
/** Longest decimal number in a 1.0 map line (2^64 has 20 digits). */
const MAX_DIGITS = 20;

export type SparseKind = "old GNU" | "pax 0.0" | "pax 0.1" | "pax 1.0";

export interface SparseInfo {
  kind: SparseKind;
  /** Size of the restored file; null if not given. */
  realSize: number | null;
  /** Offset and length of each segment, flat; null for 1.0 (the map is in the data). */
  map: number[] | null;
  /** The real member name (pax 0.1 and 1.0), if given. */
  name: string | null;
  /** What was wrong with the map as the headers were read, if anything. */
  error: string | null;
}

export function badSparse(member: string, kind: SparseKind, why: string): ChError {
  return new ChError(`refusing member ${JSON.stringify(member)}: bad sparse map (${kind}): ${why}`);
}

/** A non-negative decimal number, or null. */
function decimal(s: string): number | null {
  if (!/^\d{1,20}$/.test(s)) return null;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : null;
}

/** A numeric header field: octal digits (space or NUL ended), or GNU's base-256 (high bit set).
 * Null if empty; throws an Error saying why if unreadable or too big. */
export function headerNumber(buf: Buffer, off: number, len: number): number | null {
  const f = buf.subarray(off, off + len);
  if (f[0] & 0x80) {
    if (f[0] !== 0x80) throw new Error("negative or oversized number");
    let n = 0;
    for (let i = 1; i < f.length; i++) {
      n = n * 256 + f[i];
      if (!Number.isSafeInteger(n)) throw new Error("number out of range");
    }
    return n;
  }
  const s = f.toString("latin1").replace(/[\0 ].*$/s, "");
  if (s === "") return null;
  if (!/^[0-7]+$/.test(s)) throw new Error(`not a number: ${JSON.stringify(s)}`);
  const n = Number.parseInt(s, 8);
  if (!Number.isSafeInteger(n)) throw new Error("number out of range");
  return n;
}

/** Reads up to count (offset, length) entries of 24 bytes from an old GNU header or extension
 * block into map; false at the first empty one (GNU tar stops there too). */
export function readGnuEntries(buf: Buffer, off: number, count: number, map: number[]): boolean {
  for (let i = 0; i < count; i++) {
    const at = off + i * 24;
    if (buf[at + 12] === 0) return false;
    const offset = headerNumber(buf, at, 12);
    const length = headerNumber(buf, at + 12, 12);
    if (offset === null || length === null) throw new Error("empty offset or length");
    if (map.length >= 2 * MAX_SPARSE_ENTRIES) throw new Error(`more than ${MAX_SPARSE_ENTRIES} segments`);
    map.push(offset, length);
  }
  return true;
}

/** The GNU.sparse.* records of one pax header, in order. */
export class PaxSparse {
  private readonly keys = new Map<string, string>();
  private readonly pairs: number[] = [];
  private pendingOffset = false;
  private error: string | null = null;

  get any(): boolean {
    return this.keys.size > 0 || this.pairs.length > 0 || this.error !== null;
  }

  add(key: string, value: string): void {
    if (!key.startsWith("GNU.sparse.")) return;
    const k = key.slice(11);
    if (k === "offset" || k === "numbytes") {
      // 0.0: the same two keys, alternately, one pair per segment.
      const n = decimal(value);
      if (n === null) this.error ??= `bad GNU.sparse.${k}: ${JSON.stringify(value.slice(0, 40))}`;
      else if ((k === "offset") === this.pendingOffset) this.error ??= `GNU.sparse.${k} out of order`;
      else if (this.pairs.length >= 2 * MAX_SPARSE_ENTRIES) this.error ??= `more than ${MAX_SPARSE_ENTRIES} segments`;
      else this.pairs.push(n);
      this.pendingOffset = k === "offset";
      return;
    }
    this.keys.set(k, value);
  }

  /** What the records say, or null if there were none. */
  info(): SparseInfo | null {
    if (!this.any) return null;
    const k = this.keys;
    const number = (key: string): number | null => {
      const v = k.get(key);
      if (v === undefined) return null;
      const n = decimal(v);
      if (n === null) this.error ??= `bad GNU.sparse.${key}: ${JSON.stringify(v.slice(0, 40))}`;
      return n;
    };
    const name = k.get("name") ?? null;
    let kind: SparseKind;
    let map: number[] | null = null;
    if (k.has("major") || k.has("minor")) {
      kind = "pax 1.0";
      if (k.get("major") !== "1" || k.get("minor") !== "0")
        this.error ??= `unsupported version ${k.get("major") ?? "?"}.${k.get("minor") ?? "?"}`;
    } else if (k.has("map")) {
      kind = "pax 0.1";
      const text = k.get("map") as string;
      const parts = text === "" ? [] : text.split(",");
      if (parts.length > 2 * MAX_SPARSE_ENTRIES) this.error ??= `more than ${MAX_SPARSE_ENTRIES} segments`;
      else {
        map = [];
        for (const p of parts) {
          const n = decimal(p);
          if (n === null) {
            this.error ??= `bad number in GNU.sparse.map: ${JSON.stringify(p.slice(0, 40))}`;
            break;
          }
          map.push(n);
        }
        if (parts.length % 2 !== 0) this.error ??= "odd count of numbers in GNU.sparse.map";
      }
    } else {
      kind = "pax 0.0";
      map = this.pairs;
      if (this.pendingOffset) this.error ??= "GNU.sparse.offset without GNU.sparse.numbytes";
    }
    const realSize = number(kind === "pax 1.0" ? "realsize" : "size") ?? number("realsize") ?? number("size");
    if (map !== null) {
      const blocks = number("numblocks");
      if (blocks !== null && blocks !== map.length / 2)
        this.error ??= `GNU.sparse.numblocks is ${blocks} but the map has ${Math.floor(map.length / 2)} segments`;
    }
    return { kind, realSize, map, name, error: this.error };
  }
}

/** Why map can't describe a file of realSize whose data is dataSize bytes, or null if it can. */
export function checkMap(realSize: number | null, map: number[], dataSize: number): string | null {
  if (realSize === null) return "no real size given";
  let end = 0;
  let sum = 0;
  for (let i = 0; i < map.length; i += 2) {
    const [offset, length] = [map[i], map[i + 1]];
    const n = i / 2 + 1;
    if (offset < end) return `segment ${n} (offset ${offset}) overlaps or precedes the one before (which ends at ${end})`;
    if (offset + length > realSize) return `segment ${n} (offset ${offset}, ${length} bytes) goes past the real size ${realSize}`;
    end = offset + length;
    sum += length;
  }
  if (sum !== dataSize) return `segments hold ${sum} bytes but the member has ${dataSize}`;
  return null;
}

/** Positioned write of all of buf[off, off+len) at pos. */
function writeAt(fd: number, buf: Buffer, off: number, len: number, pos: number): void {
  while (len > 0) {
    const n = writeSync(fd, buf, off, len, pos);
    off += n;
    len -= n;
    pos += n;
  }
}

/** Writes a sparse member's data, given in pieces, into the new (empty) file fd. */
export class SparseSink {
  private readonly fd: number;
  private readonly info: SparseInfo;
  private readonly member: string;
  /** Bytes of the member's body (the map of 1.0 included). */
  private readonly size: number;
  private map: number[] | null;
  // 1.0: the map being read.
  private line = "";
  private mapBytes = 0;
  private numbers: number[] = [];
  private count: number | null = null;
  private pad = 0;
  // Data: the segment being written, and how much of it is.
  private seg = 0;
  private within = 0;
  private written = 0;
  private dataSize = 0;

  constructor(fd: number, info: SparseInfo, size: number, member: string) {
    this.fd = fd;
    this.info = info;
    this.size = size;
    this.member = member;
    this.map = info.map;
    if (this.map !== null) this.start(size);
  }

  private bad(why: string): ChError {
    return badSparse(this.member, this.info.kind, why);
  }

  private start(dataSize: number): void {
    const why = checkMap(this.info.realSize, this.map as number[], dataSize);
    if (why) throw this.bad(why);
    this.dataSize = dataSize;
  }

  /** Reads the 1.0 map from the front of the body; returns where the map (padding included) ends in chunk. */
  private readMap(chunk: Buffer, pos: number): number {
    while (pos < chunk.length && this.map === null) {
      const b = chunk[pos++];
      this.mapBytes++;
      if (b !== 0x0a) {
        if (b < 0x30 || b > 0x39 || this.line.length >= MAX_DIGITS)
          throw this.bad(`not a number in the map at byte ${this.mapBytes - 1} of the data`);
        this.line += String.fromCharCode(b);
        continue;
      }
      const n = decimal(this.line);
      if (n === null) throw this.bad(`bad number in the map: ${JSON.stringify(this.line)}`);
      this.line = "";
      if (this.count === null) {
        if (n > MAX_SPARSE_ENTRIES) throw this.bad(`${n} segments, more than ${MAX_SPARSE_ENTRIES}`);
        this.count = n;
      } else this.numbers.push(n);
      if (this.numbers.length === 2 * this.count) {
        this.map = this.numbers;
        this.pad = (512 - (this.mapBytes % 512)) % 512;
        const dataSize = this.size - this.mapBytes - this.pad;
        if (dataSize < 0) throw this.bad("the map is bigger than the member");
        this.start(dataSize);
      }
    }
    if (this.map === null && this.mapBytes >= this.size) throw this.bad("the map is bigger than the member");
    return pos;
  }

  write(chunk: Buffer): void {
    let pos = 0;
    if (this.map === null) pos = this.readMap(chunk, pos);
    if (this.pad > 0) {
      const k = Math.min(this.pad, chunk.length - pos);
      this.pad -= k;
      pos += k;
    }
    const map = this.map;
    if (map === null) return;
    while (pos < chunk.length) {
      while (this.seg < map.length && this.within === map[this.seg + 1]) {
        this.seg += 2;
        this.within = 0;
      }
      if (this.seg >= map.length) throw this.bad("more data than the map has segments for");
      const k = Math.min(map[this.seg + 1] - this.within, chunk.length - pos);
      writeAt(this.fd, chunk, pos, k, map[this.seg] + this.within);
      this.within += k;
      this.written += k;
      pos += k;
    }
  }

  /** Called once all the data is in: sets the file's size (the holes at its end). */
  end(): void {
    if (this.map === null) throw this.bad("the map ends early");
    if (this.written !== this.dataSize) throw this.bad(`${this.written} of ${this.dataSize} bytes of data`);
    ftruncateSync(this.fd, this.info.realSize as number);
  }
}
