// What node-tar's Parser drops or can't read, found by following the same stream's headers ahead
// of it, by its own rules for sizes: the extended attributes of each member (pax SCHILY.xattr and
// LIBARCHIVE.xattr records, with --xattrs) and GNU sparse maps (pax GNU.sparse.* records, and
// old GNU sparse headers, type 'S'). Each member's findings are queued by its ordinal, checked
// against its header checksum when taken.
//
// The scanner also edits the stream on its way to the parser, for old GNU sparse members only:
// their extension blocks (more of the map, between the header and the data, which the parser
// would take for data) are cut out, and their header is handed on as a plain file's ('S' becomes
// '0', checksum redone), held back until the whole map is read. Everything else passes unchanged,
// as subarrays of the caller's chunk; only headers split across chunks are passed as copies.
import { Header, type HeaderData, Pax } from "tar";
import { ChError } from "../sys/errors.ts";
import { headerNumber, PaxSparse, readGnuEntries, type SparseInfo } from "./sparse.ts";
import { parsePaxXattrs, paxRecords, type Xattrs } from "./xattrs.ts";

/** node-tar's Parser ignores meta members (pax and long-name headers) bigger than this. */
export const MAX_META = 1024 * 1024;
const META_TYPES = new Set([
  "NextFileHasLongLinkpath",
  "NextFileHasLongPath",
  "OldGnuLongPath",
  "GlobalExtendedHeader",
  "ExtendedHeader",
  "OldExtendedHeader",
]);

export interface MemberExtra {
  xattrs: Xattrs | null;
  sparse: SparseInfo | null;
  /** Size of a pax or long-name header before the member that was too big to read (node-tar
   * ignores it silently, so the member would get the wrong name, size or link), or null. */
  oversized: number | null;
}

interface Queued {
  ordinal: number;
  cksum: number | undefined;
  extra: MemberExtra;
}

/** Sets the checksum of the header at buf[0, 512) for its contents. */
function setChecksum(buf: Buffer): number {
  buf.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += buf[i];
  buf.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  return sum;
}

export class MemberScanner {
  private readonly wantXattrs: boolean;
  private readonly head = Buffer.alloc(512);
  private headFill = 0;
  /** Bytes of a member's body (with padding) still to pass over. */
  private skip = 0;
  private meta: { type: string; size: number; left: number; parts: Buffer[] } | null = null;
  private ex: HeaderData | undefined;
  private gex: HeaderData | undefined;
  private pendingXattrs: Xattrs | null = null;
  private pendingSparse: PaxSparse | null = null;
  private pendingOversized: number | null = null;
  /** An old GNU sparse member whose extension blocks are being read: its rewritten header, the
   * size of its data, its map so far. */
  private held: { header: Buffer; size: number; info: SparseInfo } | null = null;
  private readonly ext = Buffer.alloc(512);
  private extFill = 0;
  private sawNull = false;
  private done = false;
  private ordinal = 0;
  private readonly queue: Queued[] = [];
  private next = 0;

  constructor(xattrs: boolean) {
    this.wantXattrs = xattrs;
  }

  /** Takes the next piece of the stream; returns what the parser is to get in its place. */
  write(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    /** Start of the bytes of chunk passed on but not yet in out. */
    let run = 0;
    /** Leaves chunk[from, to) out of what is passed on. */
    const cut = (from: number, to: number) => {
      if (from > run) out.push(chunk.subarray(run, from));
      run = to;
    };
    let pos = 0;
    const len = chunk.length;
    while (pos < len && !this.done) {
      if (this.skip > 0) {
        const k = Math.min(this.skip, len - pos);
        this.skip -= k;
        pos += k;
      } else if (this.meta) {
        const m = this.meta;
        const k = Math.min(m.left, len - pos);
        // Copied: the caller reuses its buffers.
        m.parts.push(Buffer.from(chunk.subarray(pos, pos + k)));
        m.left -= k;
        pos += k;
        if (m.left === 0) this.endMeta(m.type, Buffer.concat(m.parts).subarray(0, m.size));
      } else if (this.held) {
        const k = Math.min(512 - this.extFill, len - pos);
        chunk.copy(this.ext, this.extFill, pos, pos + k);
        cut(pos, pos + k);
        this.extFill += k;
        pos += k;
        if (this.extFill === 512) {
          this.extFill = 0;
          const released = this.extension();
          if (released) out.push(released);
        }
      } else if (this.headFill === 0 && len - pos >= 512) {
        const r = this.header(chunk, pos);
        if (r !== null) cut(pos, pos + 512);
        if (r instanceof Buffer) out.push(r);
        pos += 512;
      } else {
        // A header split across chunks: passed on whole, once it is.
        const k = Math.min(512 - this.headFill, len - pos);
        chunk.copy(this.head, this.headFill, pos, pos + k);
        cut(pos, pos + k);
        this.headFill += k;
        pos += k;
        if (this.headFill === 512) {
          this.headFill = 0;
          const r = this.header(this.head, 0);
          if (r === null) out.push(Buffer.from(this.head));
          else if (r instanceof Buffer) out.push(r);
        }
      }
    }
    if (run < len) out.push(run === 0 ? chunk : chunk.subarray(run));
    return out;
  }

  /** At the end of the stream: what was held back (a truncated archive's last bytes). */
  end(): Buffer[] {
    const out: Buffer[] = [];
    if (this.held) out.push(this.held.header);
    if (this.headFill > 0) out.push(Buffer.from(this.head.subarray(0, this.headFill)));
    this.held = null;
    this.headFill = 0;
    return out;
  }

  /** Reads the header at buf[off, off+512). Returns null to pass it on as it is, a replacement to
   * pass on instead, or "held" if it is to be passed on later. */
  private header(buf: Buffer, off: number): Buffer | "held" | null {
    if (this.plainHeader(buf, off)) return null;
    let h: Header;
    try {
      h = new Header(buf, off, this.ex, this.gex);
    } catch {
      this.done = true; // the parser fails here too
      return null;
    }
    if (h.nullBlock) {
      if (this.sawNull) this.done = true;
      this.sawNull = true;
      return null;
    }
    this.sawNull = false;
    if (!h.cksumValid || !h.path) {
      this.done = true;
      return null;
    }
    if (META_TYPES.has(h.type ?? "")) {
      const size = h.size ?? 0;
      this.meta = null;
      if (size > MAX_META) {
        this.skip = 512 * Math.ceil(size / 512);
        this.pendingOversized = size;
      } else if (size > 0) this.meta = { type: h.type as string, size, left: 512 * Math.ceil(size / 512), parts: [] };
      return null;
    }
    this.ordinal++;
    let replacement: Buffer | null = null;
    let cksum = h.cksum;
    let size = h.size ?? 0;
    let sparse = this.pendingSparse?.info() ?? null;
    let extended = false;
    if (h.typeKey === "S") {
      // Old GNU sparse: the map (4 entries here, more in extension blocks if flagged), the real
      // size; the parser gets a plain file's header, whose data is the segments.
      sparse = { kind: "old GNU", realSize: null, map: [], name: null, error: null };
      try {
        sparse.realSize = headerNumber(buf, off + 483, 12);
        readGnuEntries(buf, off + 386, 4, sparse.map as number[]);
        extended = buf[off + 482] !== 0;
      } catch (e) {
        sparse.error = (e as Error).message;
      }
      replacement = Buffer.from(buf.subarray(off, off + 512));
      replacement[156] = 0x30;
      cksum = setChecksum(replacement);
      size = new Header(replacement, 0, this.ex, this.gex).size ?? 0;
    }
    const xattrs = this.pendingXattrs && this.pendingXattrs.size > 0 ? this.pendingXattrs : null;
    const oversized = this.pendingOversized;
    if (xattrs || sparse || oversized !== null)
      this.queue.push({ ordinal: this.ordinal, cksum, extra: { xattrs, sparse, oversized } });
    this.pendingOversized = null;
    this.pendingXattrs = null;
    this.pendingSparse = null;
    this.ex = undefined;
    const padded = 512 * Math.ceil(size / 512);
    if (extended && replacement && sparse) {
      this.held = { header: replacement, size: padded, info: sparse };
      return "held";
    }
    this.skip = padded;
    return replacement;
  }

  /** The common case, without node-tar's Header (whose decoding would cost more than the rest of
   * the scan): a plain member (types 0-7) with no pax or long-name header before it, a valid
   * checksum, a name, an octal size. Reads it as Header would; false (nothing done) otherwise. */
  private plainHeader(buf: Buffer, off: number): boolean {
    if (this.ex !== undefined || this.gex !== undefined || this.pendingOversized !== null) return false;
    const type = buf[off + 156];
    if (type !== 0 && (type < 0x30 || type > 0x37)) return false;
    if (buf[off] === 0 || buf[off + 124] & 0x80) return false;
    let sum = 8 * 0x20;
    for (let i = off; i < off + 148; i++) sum += buf[i];
    for (let i = off + 156; i < off + 512; i++) sum += buf[i];
    if (octal(buf, off + 148, 8) !== sum) return false;
    let size = octal(buf, off + 124, 12);
    if (size === null) return false;
    // A directory, by type or (plain files) by a name ending in "/", has no data.
    if (type === 0x35) size = 0;
    else if (type === 0x30 || type === 0) {
      const nul = buf.indexOf(0, off);
      const end = nul < 0 || nul > off + 100 ? off + 100 : nul;
      if (buf[end - 1] === 0x2f) size = 0;
    }
    this.sawNull = false;
    this.ordinal++;
    this.skip = 512 * Math.ceil(size / 512);
    return true;
  }

  /** Reads an old GNU sparse extension block; returns the held header once the last is read. */
  private extension(): Buffer | null {
    const held = this.held as { header: Buffer; size: number; info: SparseInfo };
    let more = false;
    try {
      readGnuEntries(this.ext, 0, 21, held.info.map as number[]);
      more = this.ext[504] !== 0;
    } catch (e) {
      // The member is refused; the parser need not stay in step after it.
      held.info.error ??= (e as Error).message;
      this.done = true;
    }
    if (more) return null;
    this.held = null;
    this.skip = held.size;
    return held.header;
  }

  private endMeta(type: string, body: Buffer): void {
    this.meta = null;
    const str = body.toString();
    switch (type) {
      case "ExtendedHeader":
      case "OldExtendedHeader": {
        this.ex = Pax.parse(str, this.ex, false);
        if (this.wantXattrs) {
          this.pendingXattrs ??= new Map();
          parsePaxXattrs(body, this.pendingXattrs);
        }
        const sparse = this.pendingSparse ?? new PaxSparse();
        paxRecords(body, (k, v) => sparse.add(k, v.toString("utf8")));
        if (sparse.any) this.pendingSparse = sparse;
        break;
      }
      case "GlobalExtendedHeader":
        this.gex = Pax.parse(str, this.gex, true);
        break;
      case "NextFileHasLongPath":
      case "OldGnuLongPath":
        this.ex ??= Object.create(null) as HeaderData;
        this.ex.path = str.replace(/\0.*/, "");
        break;
      case "NextFileHasLongLinkpath":
        this.ex ??= Object.create(null) as HeaderData;
        this.ex.linkpath = str.replace(/\0.*/, "");
        break;
    }
  }

  /** What was found for the ordinal-th member (counting from 1, meta headers not counted), or
   * null; earlier members' are dropped. The checksum is that of its header, as parsed. */
  take(ordinal: number, cksum: number | undefined): MemberExtra | null {
    while (this.next < this.queue.length && this.queue[this.next].ordinal < ordinal) this.next++;
    if (this.next > 1024) {
      this.queue.splice(0, this.next);
      this.next = 0;
    }
    const q = this.queue[this.next];
    if (!q || q.ordinal !== ordinal) return null;
    if (q.cksum !== cksum) throw new ChError("internal error: lost track of member headers");
    this.next++;
    return q.extra;
  }
}

/** An octal header field as node-tar reads it (digits up to the first other byte), or null if it
 * doesn't start with a digit. */
function octal(buf: Buffer, off: number, len: number): number | null {
  let n = 0;
  let i = off;
  for (; i < off + len; i++) {
    const c = buf[i];
    if (c < 0x30 || c > 0x37) break;
    n = n * 8 + (c - 0x30);
  }
  return i === off ? null : n;
}
