// LZMA, LZMA2 and the xz container, decoding only, for the SquashFS reader (squashfs-read.ts):
// one xz stream's first block (what squashfs-tools writes per block) or one legacy .lzma stream,
// into at most `max` bytes. The input is untrusted: every read is bounds-checked, distances are
// checked against what was decoded, and the output never grows past `max`. Follows the LZMA
// specification (lzma-specification.txt of the LZMA SDK) and the xz file format 1.0.4.

/** Bad or unsupported data; the message says which. */
export class LzmaError extends Error {}

const bad = (why: string): never => {
  throw new LzmaError(why);
};

class RangeDecoder {
  range = 0xffffffff;
  code = 0;
  pos: number;
  private readonly src: Uint8Array;
  private readonly end: number;
  constructor(src: Uint8Array, start: number, end: number) {
    this.src = src;
    this.end = end;
    if (start + 5 > end) bad("truncated range coder");
    if (src[start] !== 0) bad("bad range coder start");
    for (let i = 1; i < 5; i++) this.code = ((this.code << 8) | src[start + i]) >>> 0;
    this.pos = start + 5;
    if (this.code === this.range) bad("bad range coder start");
  }
  private next(): number {
    if (this.pos >= this.end) bad("truncated LZMA data");
    return this.src[this.pos++];
  }
  private normalize(): void {
    if (this.range < 0x1000000) {
      this.range = (this.range << 8) >>> 0;
      this.code = ((this.code << 8) | this.next()) >>> 0;
    }
  }
  bit(probs: Uint16Array, i: number): number {
    const p = probs[i];
    const bound = (this.range >>> 11) * p;
    let b: number;
    if (this.code < bound) {
      probs[i] = p + ((2048 - p) >>> 5);
      this.range = bound;
      b = 0;
    } else {
      probs[i] = p - (p >>> 5);
      this.code -= bound;
      this.range -= bound;
      b = 1;
    }
    this.normalize();
    return b;
  }
  direct(n: number): number {
    let r = 0;
    for (let i = 0; i < n; i++) {
      this.range >>>= 1;
      let b = 0;
      if (this.code >= this.range) {
        this.code -= this.range;
        b = 1;
      }
      r = ((r << 1) | b) >>> 0;
      this.normalize();
    }
    return r;
  }
  tree(probs: Uint16Array, base: number, bits: number): number {
    let m = 1;
    for (let i = 0; i < bits; i++) m = (m << 1) | this.bit(probs, base + m);
    return m - (1 << bits);
  }
  reverse(probs: Uint16Array, base: number, bits: number): number {
    let m = 1;
    let s = 0;
    for (let i = 0; i < bits; i++) {
      const b = this.bit(probs, base + m);
      m = (m << 1) | b;
      s |= b << i;
    }
    return s;
  }
}

// Probability array layout (one Uint16Array).
const POS_STATES_MAX = 16;
const IS_MATCH = 0;
const IS_REP = IS_MATCH + 12 * POS_STATES_MAX;
const IS_REP_G0 = IS_REP + 12;
const IS_REP_G1 = IS_REP_G0 + 12;
const IS_REP_G2 = IS_REP_G1 + 12;
const IS_REP0_LONG = IS_REP_G2 + 12;
const POS_SLOT = IS_REP0_LONG + 12 * POS_STATES_MAX;
const SPEC_POS = POS_SLOT + 4 * 64;
const ALIGN = SPEC_POS + 115;
const LEN_SIZE = 2 + POS_STATES_MAX * 8 * 2 + 256;
const LEN = ALIGN + 16;
const REP_LEN = LEN + LEN_SIZE;
const LITERAL = REP_LEN + LEN_SIZE;

/** The LZMA decoder's state, kept across LZMA2 chunks unless they reset it. */
class Lzma {
  lc = 0;
  lp = 0;
  pb = 0;
  probs = new Uint16Array(LITERAL);
  state = 0;
  reps = [0, 0, 0, 0];

  /** lc + lp at most 4, as liblzma (and so the xz program) wants in .lzma too, not only in
   * LZMA2: the literal coder's probabilities (0x300 << (lc + lp)) stay small, rather than 6 MiB
   * allocated and filled for each block of a hostile image. */
  setProps(b: number): void {
    if (b >= 9 * 5 * 5) bad("bad LZMA properties");
    this.lc = b % 9;
    this.lp = Math.floor(b / 9) % 5;
    this.pb = Math.floor(b / 45);
    if (this.lc + this.lp > 4) bad("bad LZMA properties: lc + lp is more than 4");
  }
  reset(): void {
    const n = LITERAL + (0x300 << (this.lc + this.lp));
    if (this.probs.length !== n) this.probs = new Uint16Array(n);
    this.probs.fill(1024);
    this.state = 0;
    this.reps = [0, 0, 0, 0];
  }

  private len(rc: RangeDecoder, base: number, posState: number): number {
    const p = this.probs;
    if (rc.bit(p, base) === 0) return rc.tree(p, base + 2 + posState * 8, 3);
    if (rc.bit(p, base + 1) === 0) return 8 + rc.tree(p, base + 2 + POS_STATES_MAX * 8 + posState * 8, 3);
    return 16 + rc.tree(p, base + 2 + POS_STATES_MAX * 16, 8);
  }

  /** Decodes into out[start..] until `limit` bytes are there (or, if `marker`, an end marker);
   * the dictionary is out[dictStart..]. Returns the new length. */
  decode(rc: RangeDecoder, out: Uint8Array, start: number, limit: number, dictStart: number, marker: boolean): number {
    const p = this.probs;
    const pbMask = (1 << this.pb) - 1;
    const lpMask = (1 << this.lp) - 1;
    let op = start;
    let state = this.state;
    let [rep0, rep1, rep2, rep3] = this.reps;
    while (op < limit || marker) {
      const posState = (op - dictStart) & pbMask;
      if (rc.bit(p, IS_MATCH + (state << 4) + posState) === 0) {
        if (op >= limit) bad("LZMA data past its size");
        const prev = op > dictStart ? out[op - 1] : 0;
        const base = LITERAL + 0x300 * ((((op - dictStart) & lpMask) << this.lc) + (prev >>> (8 - this.lc)));
        let sym = 1;
        if (state >= 7) {
          if (rep0 + 1 > op - dictStart) bad("LZMA distance out of range");
          let match = out[op - rep0 - 1];
          while (sym < 0x100) {
            const mb = (match >>> 7) & 1;
            match <<= 1;
            const b = rc.bit(p, base + ((1 + mb) << 8) + sym);
            sym = (sym << 1) | b;
            if (mb !== b) break;
          }
        }
        while (sym < 0x100) sym = (sym << 1) | rc.bit(p, base + sym);
        out[op++] = sym & 0xff;
        state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
        continue;
      }
      let len: number;
      if (rc.bit(p, IS_REP + state) !== 0) {
        if (op === dictStart) bad("LZMA repeat at the start");
        if (rc.bit(p, IS_REP_G0 + state) === 0) {
          if (rc.bit(p, IS_REP0_LONG + (state << 4) + posState) === 0) {
            if (op >= limit) bad("LZMA data past its size");
            if (rep0 + 1 > op - dictStart) bad("LZMA distance out of range");
            state = state < 7 ? 9 : 11;
            out[op] = out[op - rep0 - 1];
            op++;
            continue;
          }
        } else {
          let d: number;
          if (rc.bit(p, IS_REP_G1 + state) === 0) d = rep1;
          else {
            if (rc.bit(p, IS_REP_G2 + state) === 0) d = rep2;
            else {
              d = rep3;
              rep3 = rep2;
            }
            rep2 = rep1;
          }
          rep1 = rep0;
          rep0 = d;
        }
        len = this.len(rc, REP_LEN, posState);
        state = state < 7 ? 8 : 11;
      } else {
        rep3 = rep2;
        rep2 = rep1;
        rep1 = rep0;
        len = this.len(rc, LEN, posState);
        state = state < 7 ? 7 : 10;
        const slot = rc.tree(p, POS_SLOT + Math.min(len, 3) * 64, 6);
        if (slot < 4) rep0 = slot;
        else {
          const n = (slot >>> 1) - 1;
          rep0 = ((2 | (slot & 1)) << n) >>> 0;
          if (slot < 14) rep0 += rc.reverse(p, SPEC_POS + rep0 - slot - 1, n);
          else {
            rep0 = (rep0 + rc.direct(n - 4) * 16) >>> 0;
            rep0 = (rep0 + rc.reverse(p, ALIGN, 4)) >>> 0;
          }
          if (rep0 === 0xffffffff) {
            if (!marker) bad("unexpected LZMA end marker");
            this.state = state;
            this.reps = [rep0, rep1, rep2, rep3];
            return op;
          }
        }
      }
      if (rep0 + 1 > op - dictStart) bad("LZMA distance out of range");
      len += 2;
      if (op + len > limit) bad("LZMA data past its size");
      for (let i = 0; i < len; i++, op++) out[op] = out[op - rep0 - 1];
    }
    this.state = state;
    this.reps = [rep0, rep1, rep2, rep3];
    return op;
  }
}

/** A legacy .lzma stream (what squashfs-tools' "lzma" compressor writes), at most `max` bytes. */
export function lzmaAloneDecompress(src: Uint8Array, max: number): Buffer {
  if (src.length < 13) bad("truncated lzma header");
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const lz = new Lzma();
  lz.setProps(src[0]);
  lz.reset();
  const size = dv.getBigUint64(5, true);
  const known = size !== 0xffffffffffffffffn;
  if (known && size > BigInt(max)) bad(`lzma data larger than ${max} bytes`);
  const limit = known ? Number(size) : max;
  const out = Buffer.alloc(limit);
  const rc = new RangeDecoder(src, 13, src.length);
  const n = lz.decode(rc, out, 0, limit, 0, !known);
  return out.subarray(0, n);
}

/** A multibyte integer of the xz format at src[pos]; returns [value, next position]. */
function varint(src: Uint8Array, pos: number, end: number): [number, number] {
  let v = 0;
  for (let i = 0; i < 9; i++) {
    if (pos >= end) bad("truncated xz header");
    const b = src[pos++];
    v += (b & 0x7f) * 2 ** (7 * i);
    if (!(b & 0x80)) {
      if (v > Number.MAX_SAFE_INTEGER) bad("xz integer too large");
      return [v, pos];
    }
  }
  return bad("bad xz integer");
}

/** The first block of an xz stream (squashfs-tools writes one per block), at most `max` bytes.
 * Only the LZMA2 filter alone: a BCJ filter chain is LzmaError("filter"). */
export function xzDecompress(src: Uint8Array, max: number): Buffer {
  const MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
  if (src.length < 12 + 1) bad("truncated xz data");
  for (let i = 0; i < 6; i++) if (src[i] !== MAGIC[i]) bad("not xz data");
  if (src[6] !== 0 || src[7] > 0x0f) bad("unsupported xz stream flags");
  let pos = 12;
  const hsize = (src[pos] + 1) * 4;
  if (src[pos] === 0) return Buffer.alloc(0); // no block: empty
  const hend = pos + hsize - 4;
  if (hend + 4 > src.length) bad("truncated xz block header");
  const flags = src[pos + 1];
  if (flags & 0x3c) bad("unsupported xz block flags");
  pos += 2;
  if (flags & 0x40) pos = varint(src, pos, hend)[1]; // compressed size
  if (flags & 0x80) pos = varint(src, pos, hend)[1]; // uncompressed size
  const filters = (flags & 3) + 1;
  let x86 = false;
  for (let f = 0; f < filters; f++) {
    let id: number;
    let psize: number;
    [id, pos] = varint(src, pos, hend);
    [psize, pos] = varint(src, pos, hend);
    if (pos + psize > hend) bad("truncated xz filter properties");
    const last = f === filters - 1;
    if (id === 0x04 && !last && !x86 && psize === 0) x86 = true;
    else if (id !== 0x21 || !last) throw new LzmaError(`xz filter 0x${id.toString(16)} not supported`);
    else if (psize !== 1 || src[pos] > 40) bad("bad LZMA2 properties");
    pos += psize; // LZMA2's dictionary size: the output is the dictionary
  }
  pos = hend + 4;
  const out = lzma2(src, pos, max);
  if (x86) bcjX86(out);
  return out;
}

const testMsByte = (b: number) => b === 0x00 || b === 0xff;
const MASK_ALLOWED = [true, true, true, false, true, false, false, false];
const MASK_BIT = [0, 1, 2, 2, 3, 3, 3, 3];

/** Undoes the x86 BCJ filter (relative CALL/JMP targets made absolute), in place, for a buffer
 * that starts at position 0 of the stream. */
export function bcjX86(buf: Uint8Array): void {
  if (buf.length <= 4) return;
  const size = buf.length - 4;
  let prevPos = -1;
  let prevMask = 0;
  for (let i = 0; i < size; i++) {
    if ((buf[i] & 0xfe) !== 0xe8) continue;
    const d = i - prevPos;
    if (d > 3) prevMask = 0;
    else {
      prevMask = (prevMask << (d - 1)) & 7;
      if (prevMask !== 0) {
        const b = buf[i + 4 - MASK_BIT[prevMask]];
        if (!MASK_ALLOWED[prevMask] || testMsByte(b)) {
          prevPos = i;
          prevMask = (prevMask << 1) | 1;
          continue;
        }
      }
    }
    prevPos = i;
    if (testMsByte(buf[i + 4])) {
      let src = (buf[i + 1] | (buf[i + 2] << 8) | (buf[i + 3] << 16) | (buf[i + 4] << 24)) >>> 0;
      let dest: number;
      for (;;) {
        dest = (src - (i + 5)) >>> 0;
        if (prevMask === 0) break;
        const j = MASK_BIT[prevMask] * 8;
        if (!testMsByte((dest >>> (24 - j)) & 0xff)) break;
        src = (dest ^ (2 ** (32 - j) - 1)) >>> 0;
      }
      dest &= 0x01ffffff;
      if (dest & 0x01000000) dest |= 0xfe000000;
      buf[i + 1] = dest & 0xff;
      buf[i + 2] = (dest >>> 8) & 0xff;
      buf[i + 3] = (dest >>> 16) & 0xff;
      buf[i + 4] = (dest >>> 24) & 0xff;
      i += 4;
    } else prevMask = (prevMask << 1) | 1;
  }
}

/** LZMA2 chunks from src[pos] to their end marker. */
function lzma2(src: Uint8Array, pos: number, max: number): Buffer {
  const out = Buffer.alloc(max);
  const lz = new Lzma();
  let op = 0;
  let dictStart = 0;
  let propsSet = false;
  const u16 = (at: number) => {
    if (at + 2 > src.length) bad("truncated LZMA2 chunk");
    return (src[at] << 8) | src[at + 1];
  };
  for (let first = true; ; first = false) {
    if (pos >= src.length) bad("truncated LZMA2 data");
    const c = src[pos++];
    if (c === 0) return out.subarray(0, op);
    if (c === 1 || c === 2) {
      if (first && c !== 1) bad("LZMA2 data without a dictionary reset");
      const n = u16(pos) + 1;
      pos += 2;
      if (c === 1) dictStart = op;
      if (pos + n > src.length) bad("truncated LZMA2 chunk");
      if (op + n > max) bad(`xz data larger than ${max} bytes`);
      out.set(src.subarray(pos, pos + n), op);
      pos += n;
      op += n;
      continue;
    }
    if (c < 0x80) bad("bad LZMA2 chunk");
    const reset = (c >>> 5) & 3;
    if (first && reset !== 3) bad("LZMA2 data without a dictionary reset");
    const unpacked = (c & 0x1f) * 65536 + u16(pos) + 1;
    const packed = u16(pos + 2) + 1;
    pos += 4;
    if (reset === 3) dictStart = op;
    if (reset >= 2) {
      if (pos >= src.length) bad("truncated LZMA2 chunk");
      lz.setProps(src[pos++]);
      propsSet = true;
    }
    if (!propsSet) bad("LZMA2 chunk without properties");
    if (reset >= 1) lz.reset();
    if (pos + packed > src.length) bad("truncated LZMA2 chunk");
    if (op + unpacked > max) bad(`xz data larger than ${max} bytes`);
    const rc = new RangeDecoder(src, pos, pos + packed);
    const n = lz.decode(rc, out, op, op + unpacked, dictStart, false);
    if (n !== op + unpacked) bad("short LZMA2 chunk");
    op = n;
    pos += packed;
  }
}
