// The build cache's keys and state records. Not used by any command yet: ch-image build
// (build.ts) runs every instruction every time; this cache is the next step (see the end of this
// comment).
//
// A state is an image tree plus its metadata after one instruction. Its ID is a SHA-256 over:
// the parent state's ID; the instruction after substitution (keyword, flags, arguments, heredoc
// contents); the ARGs in scope with their values (RUN sees them; the proxy variables are left out,
// as in Charliecloud and Docker, so a changed proxy doesn't miss); and, for COPY and ADD, a digest
// of the sources' content (names, types, permission bits, file contents, link targets; not
// owners or times, so a fresh checkout of the same context hits). FROM's state is keyed on the
// image's digest and architecture, scratch is the root state.
// Charliecloud keys on md5(parent + instruction text) and COPY on path, mode, size and mtime:
// an edited file with the same size and mtime hits there; not here.
//
// Storage, as measured on this machine class (Linux 6.x, ext4, an unprivileged user namespace):
// overlayfs mounts with -o userxattr (lowerdir=a:b:c, upperdir, workdir) in ~10 ms; a deleted
// file becomes a whiteout (character device 0:0, which an unprivileged process may also mknod
// itself), a replaced directory gets xattr user.overlay.opaque=y, and an upper directory works
// as a lower of the next mount. So each state can keep only its difference (the upper directory
// of the instruction that made it), RUN writes through a fresh upper over its ancestors, and
// nothing is copied per instruction. Hard-linked trees (cp -al per state) were the alternative:
// cheap too, but a RUN that edits a file in place (>>, sed -i on some systems, a database)
// writes through the shared inode into every state that links it; overlayfs copies up first.
// An image in storage stays a plain directory that ch-run -w may change: it is materialized
// from its layers (copy, whiteouts applied) when the build ends, never hard-linked to the cache.
//
// Limits to plan for: the mount option string holds one page (4 KiB), ~50 layer paths of this
// layout (Linux 6.8+ adds lowerdir+ through fsconfig(2), one layer per call, up to 500); an upper
// directory must be on a local filesystem (not NFS or Lustre), like the storage directory.
//
// Layout (under STORAGE/cache/): states/ID.json (the record below, written aside then renamed),
// layers/ID/ (the upper directory, only once complete: built in layers/.ID.tmp, renamed).
//
// Next: RUN through ch-run (build.ts does this on a full copy of each stage) with the overlay
// mounted in ch-run's namespaces (a plan operation in src/container), COPY/ADD (copy.ts) into an
// upper directory, materialization into storage, and `ch-image build-cache` to list and prune.
import { createHash } from "node:crypto";
import {
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  renameSync,
  writeFileSync,
} from "node:fs";
import { isAbsolute, join, posix } from "node:path";
import { sysError } from "../sys/errors.ts";
import type { Expanded, StageScope } from "./vars.ts";
import { PROXY_ARGS } from "./vars.ts";

/** Changes whenever what goes into a state ID does: old states then simply miss. */
export const CACHE_VERSION = 1;

const sha256 = (s: string | Buffer) => createHash("sha256").update(s).digest("hex");

/** The root state: an empty tree (FROM scratch). */
export const ROOT_STATE = sha256(`charliecloud-build-cache ${CACHE_VERSION} root`);

/** The state of FROM an image: its manifest (or config) digest and architecture. */
export function fromState(digest: string, arch: string): string {
  return stateId({ parent: ROOT_STATE, instruction: `FROM ${digest} ${arch}`, args: [], sources: null });
}

export interface StateInput {
  parent: string;
  /** instructionText() of the instruction. */
  instruction: string;
  /** ARGs in scope, name and value (null: declared without a value). */
  args: [string, string | null][];
  /** Digest of COPY/ADD sources (hashSources()), else null. */
  sources: string | null;
}

/** A state's ID: stable across runs and machines, different when any input differs. */
export function stateId(input: StateInput): string {
  const args = input.args.filter(([k]) => !PROXY_ARGS.includes(k)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return sha256(JSON.stringify([CACHE_VERSION, input.parent, input.instruction, args, input.sources ?? null]));
}

/** An instruction after substitution, as text that differs whenever its effect may: keyword,
 * flags (sorted), arguments (as a JSON list, so that spacing and quoting are unambiguous),
 * the values ENV, LABEL and ARG took, heredoc contents. */
export function instructionText(e: Expanded): string {
  const flags = Object.keys(e.flags)
    .sort()
    .map((k) => [k, e.flags[k]]);
  // The value an ARG took is in the key (as Charliecloud: a miss on definition), a proxy's isn't.
  const kv = e.kv?.map(([k, v]) => (e.inst.keyword === "arg" && PROXY_ARGS.includes(k) ? [k, null] : [k, v]));
  return JSON.stringify([
    e.inst.keyword,
    flags,
    e.args,
    e.inst.json,
    kv ?? null,
    e.heredocs.map((h) => [h.name, h.fd, h.expand, h.content]),
  ]);
}

/** The ARGs a stage has declared, with the values in scope now (ENV may have replaced one). */
export function scopeArgs(scope: StageScope): [string, string | null][] {
  return [...scope.declared].filter((k) => !PROXY_ARGS.includes(k)).map((k) => [k, scope.vars.get(k) ?? null]);
}

function fileDigest(path: string): string {
  const h = createHash("sha256");
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw sysError(`can't read: ${path}`, e);
  }
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let n = readSync(fd, buf); n > 0; n = readSync(fd, buf)) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest("hex");
}

/** Feeds one tree (not following symbolic links) into `h`: for each entry, in byte order of
 * names, its relative path, type and permission bits, then a file's content digest, a link's
 * target or a directory's entries. Owners, times and inode numbers are left out. */
function hashEntry(h: ReturnType<typeof createHash>, path: string, rel: string): void {
  const st = lstatSync(path);
  const mode = (st.mode & 0o7777).toString(8);
  if (st.isSymbolicLink()) h.update(`l ${JSON.stringify(rel)} ${mode} ${JSON.stringify(readlinkSync(path))}\n`);
  else if (st.isFile()) h.update(`f ${JSON.stringify(rel)} ${mode} ${fileDigest(path)}\n`);
  else if (st.isDirectory()) {
    h.update(`d ${JSON.stringify(rel)} ${mode}\n`);
    const names = readdirSync(path).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const n of names) hashEntry(h, join(path, n), rel === "" ? n : `${rel}/${n}`);
  } else {
    const type = st.isCharacterDevice() ? "c" : st.isBlockDevice() ? "b" : st.isFIFO() ? "p" : "s";
    h.update(`o ${JSON.stringify(rel)} ${mode} ${type} ${st.rdev}\n`);
  }
}

/** Digest of COPY/ADD sources: each source (a path relative to `root`, the context or the
 * stage copied from, in the instruction's order) with its tree. The caller resolves sources
 * (globs, top-level symbolic links) inside `root`; one that leaves it lexically is refused. */
export function hashSources(root: string, sources: string[]): string {
  const h = createHash("sha256");
  for (const s of sources) {
    const n = posix.normalize(s);
    if (isAbsolute(n) || n === ".." || n.startsWith("../")) throw new Error(`source outside ${root}: ${s}`);
    h.update(`source ${JSON.stringify(s)}\n`);
    hashEntry(h, join(root, s), "");
  }
  return h.digest("hex");
}

/** What the cache keeps about a state besides its layer. */
export interface StateRecord {
  id: string;
  parent: string | null;
  /** The instruction as written, for listings. */
  text: string;
  /** Image metadata after the instruction (ENV, WORKDIR, CMD...), as JSON-able data. */
  config: Record<string, unknown>;
  created: string;
}

/** State records in a directory: written aside and renamed, so a reader sees all or nothing. */
export class StateStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  private path(id: string): string {
    if (!/^[0-9a-f]{64}$/.test(id)) throw new Error(`not a state ID: ${id}`);
    return join(this.dir, "states", `${id}.json`);
  }

  /** The record of a state, or null (absent or unreadable: a miss, never an error). */
  get(id: string): StateRecord | null {
    const path = this.path(id);
    try {
      const r = JSON.parse(readFileSync(path, "utf8")) as StateRecord;
      return r.id === id ? r : null;
    } catch {
      return null;
    }
  }

  put(record: StateRecord): void {
    const final = this.path(record.id);
    const tmp = `${final}.${process.pid}.tmp`;
    try {
      mkdirSync(join(this.dir, "states"), { recursive: true });
      writeFileSync(tmp, `${JSON.stringify(record)}\n`, { mode: 0o644 });
      renameSync(tmp, final);
    } catch (e) {
      throw sysError(`can't write build cache state: ${final}`, e);
    }
  }
}
