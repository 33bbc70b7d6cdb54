// Extended attributes in tarballs (--xattrs). Unpacking: node-tar's parser drops the pax
// records GNU tar and bsdtar write for them (SCHILY.xattr.NAME=VALUE, raw bytes;
// LIBARCHIVE.xattr.NAME=BASE64, the name %-escaped), so headers.ts's MemberScanner follows the
// same stream's headers and queues each member's attributes, parsed here, for the extractor. Packing: withXattrs
// rewrites node-tar's output, adding a pax header with the user.* attributes of each member
// (merged with node-tar's own pax header, if any). Copying a directory: copyXattrs.
import { lstatSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";
import { Header, Pax } from "tar";
import { info } from "../cli/log.ts";
import { type Libc, LibcError, libc, loadLibc } from "../sys/libc.ts";
import { errnoName } from "../sys/strerror.ts";

export type Xattrs = Map<string, Buffer>;

/** Never set: file capabilities are setuid bits by another name. */
const CAPABILITY = "security.capability";

/** Loads what the xattr calls need; await it before unpacking or packing with xattrs. */
export function loadXattrs(): Promise<void> {
  return loadLibc();
}

function percentDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Calls fn for each record of a pax header body ("LEN KEY=VALUE\n"), stopping at a bad one. */
export function paxRecords(body: Buffer, fn: (key: string, value: Buffer) => void): void {
  let pos = 0;
  while (pos < body.length) {
    const sp = body.indexOf(0x20, pos);
    if (sp < 0) break;
    const len = Number(body.toString("latin1", pos, sp));
    if (!Number.isInteger(len) || len <= sp - pos + 1 || pos + len > body.length) break;
    const end = pos + len;
    const rec = body.subarray(sp + 1, body[end - 1] === 0x0a ? end - 1 : end);
    pos = end;
    const eq = rec.indexOf(0x3d);
    if (eq >= 0) fn(rec.toString("utf8", 0, eq), rec.subarray(eq + 1));
  }
}

/** Adds the extended attributes in the pax records `body` to `into` (SCHILY.xattr first). */
export function parsePaxXattrs(body: Buffer, into: Xattrs): void {
  const libarchive: Xattrs = new Map();
  paxRecords(body, (key, value) => {
    if (key.startsWith("SCHILY.xattr.")) into.set(key.slice(13), Buffer.from(value));
    else if (key.startsWith("LIBARCHIVE.xattr."))
      libarchive.set(percentDecode(key.slice(17)), Buffer.from(value.toString("latin1"), "base64"));
  });
  for (const [name, value] of libarchive) if (!into.has(name)) into.set(name, value);
}

/** One pax record, "LEN KEY=VALUE\n", LEN counting itself. */
export function paxRecord(key: string, value: Buffer): Buffer {
  const rest = Buffer.byteLength(` ${key}=`) + value.length + 1;
  let len = rest + String(rest).length;
  if (String(len).length !== String(rest).length) len = rest + String(len).length;
  return Buffer.concat([Buffer.from(`${len} ${key}=`), value, Buffer.from("\n")]);
}

/** Attributes set, and those that couldn't be, for one summary line. */
export class XattrReport {
  set = 0;
  skipped = 0;
  private readonly why = new Map<string, number>();

  skip(name: string, why: string): void {
    this.skipped++;
    const k = `${name} (${why})`;
    this.why.set(k, (this.why.get(k) ?? 0) + 1);
  }

  /** One warning line if anything was skipped. */
  report(what: string): void {
    if (this.skipped === 0) return;
    const kinds = [...this.why.keys()];
    const listed = kinds.slice(0, 4).join(", ") + (kinds.length > 4 ? ", ..." : "");
    info(`${what}: warning: ignored ${this.skipped} extended attributes: ${listed}`);
  }
}

/** Sets the attributes on path (never through a symlink there); security.capability never,
 * and those the kernel refuses are counted, not errors. */
let lcCache: Libc | undefined;

export function applyXattrs(path: string, xattrs: Xattrs, report: XattrReport): void {
  lcCache ??= libc();
  const lc = lcCache;
  for (const [name, value] of xattrs) {
    if (name === CAPABILITY) {
      report.skip(name, "never set");
      continue;
    }
    try {
      lc.lsetxattr(path, name, value);
      report.set++;
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      report.skip(name, errnoName(e.errno));
    }
  }
}

/** The user.* attributes of path (of a symlink itself); none if they can't be read. */
export function userXattrs(path: string): Xattrs {
  const out: Xattrs = new Map();
  lcCache ??= libc();
  const lc = lcCache;
  let names: string[];
  try {
    names = lc.llistxattr(path);
  } catch {
    return out;
  }
  for (const name of names) {
    if (!name.startsWith("user.")) continue;
    try {
      out.set(name, lc.lgetxattr(path, name));
    } catch {
      // removed meanwhile
    }
  }
  return out;
}

/** Copies the user.* attributes of everything under src to the same paths under dst. */
export function copyXattrs(src: string, dst: string, report: XattrReport): void {
  const walk = (rel: string) => {
    const from = join(src, rel);
    const x = userXattrs(from);
    if (x.size > 0) applyXattrs(join(dst, rel), x, report);
    if (!lstatSync(from).isDirectory()) return;
    for (const e of readdirSync(from)) walk(rel ? `${rel}/${e}` : e);
  };
  walk("");
}

function paxHeader(path: string, mtime: Date | undefined, body: Buffer): Buffer {
  let name = `PaxHeader/${basename(path)}`;
  if (Buffer.byteLength(name) > 99) name = "PaxHeader/xattrs";
  const block = Buffer.alloc(512);
  new Header({ path: name, type: "ExtendedHeader", mode: 0o644, uid: 0, gid: 0, size: body.length, mtime }).encode(block, 0);
  return Buffer.concat([block, body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

/** node-tar's output for the image directory dir, with a pax header carrying the user.*
 * attributes of each member that has any. */
export async function* withXattrs(packed: AsyncIterable<Buffer>, dir: string): AsyncGenerator<Buffer> {
  const head = Buffer.alloc(512);
  let fill = 0;
  let skip = 0;
  let tail = false;
  /** node-tar's own pax header (for long names), held back to be merged with ours. */
  let held: { size: number; left: number; parts: Buffer[] } | null = null;
  for await (const chunk of packed) {
    let pos = 0;
    const len = chunk.length;
    while (pos < len) {
      if (tail || skip > 0) {
        const k = tail ? len - pos : Math.min(skip, len - pos);
        yield chunk.subarray(pos, pos + k);
        if (!tail) skip -= k;
        pos += k;
        continue;
      }
      if (held && held.left > 0) {
        const k = Math.min(held.left, len - pos);
        held.parts.push(Buffer.from(chunk.subarray(pos, pos + k)));
        held.left -= k;
        pos += k;
        continue;
      }
      const k = Math.min(512 - fill, len - pos);
      chunk.copy(head, fill, pos, pos + k);
      fill += k;
      pos += k;
      if (fill < 512) continue;
      fill = 0;
      const block = Buffer.from(head);
      const type = String.fromCharCode(block[156]);
      if (type === "x") {
        const size = new Header(block).size ?? 0;
        held = { size, left: 512 * Math.ceil(size / 512), parts: [] };
        continue;
      }
      const ownPax = held ? Buffer.concat(held.parts).subarray(0, held.size) : null;
      held = null;
      const ex = ownPax ? Pax.parse(ownPax.toString(), undefined, false) : undefined;
      const h = new Header(block, 0, ex);
      if (h.nullBlock) {
        tail = true;
        yield block;
        continue;
      }
      // The pax path as is: Header would put the ustar prefix in front of it, as ReadEntry won't.
      const path = ex?.path ?? h.path ?? "";
      const x = path ? userXattrs(join(dir, path)) : new Map<string, Buffer>();
      if (x.size > 0 || ownPax) {
        const records = [...x].map(([name, value]) => paxRecord(`SCHILY.xattr.${name}`, value));
        yield paxHeader(path, h.mtime, Buffer.concat([...(ownPax ? [ownPax] : []), ...records]));
      }
      yield block;
      skip = 512 * Math.ceil((h.size ?? 0) / 512);
    }
  }
}
