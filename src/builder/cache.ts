// The build cache's keys, state records and layout (ch-image build uses it: build.ts; its
// layers on the host side: layers.ts; ch-image build-cache, undelete: cache-commands.ts).
//
// A state is an image tree plus its metadata after one instruction. Its ID is a SHA-256 over:
// the parent state's ID; the instruction after substitution (keyword, flags, arguments, heredoc
// contents); the ARGs in scope with their values (RUN sees them; the proxy variables are left out,
// as in Charliecloud and Docker, so a changed proxy doesn't miss); and, for COPY and ADD, a digest
// of the sources' content (names, types, permission bits, file contents, link targets; not
// owners or times, so a fresh checkout of the same context hits; .dockerignore'd files and the
// storage directory left out; COPY --from a stage: that stage's state). FROM an image in storage
// is keyed on the image directory (name, device, inode, change times, and the state it holds
// if this cache made it): the image is copied once into a flat layer, later builds hit.
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
// Limits: the mount option string holds one page (4 KiB), ~40 layer paths of this layout, so a
// state whose chain would pass MAX_CHAIN layers (or ~3000 bytes of paths) gets a flat layer
// instead: the whole tree, its chain restarting there (one copy every MAX_CHAIN layers; Linux
// 6.8's fsconfig(2) lowerdir+ would take 500, not used yet). An upper directory must be on a
// local file system (not NFS or Lustre), like the storage directory.
//
// Layout: see BuildCache below.
import { createHash } from "node:crypto";
import {
  type BigIntStats,
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname, isAbsolute, join, posix } from "node:path";
import { forceRemove, pidAlive } from "../image/install.ts";
import { BUILD_CACHE_DIR } from "../image/storage.ts";
import { sysError } from "../sys/errors.ts";
import { applyLayer } from "./layers.ts";
import { type IgnoreMatcher, lstatOrNull } from "./paths.ts";
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

/** Content digests of files already hashed, by where and what they are (device, inode, size,
 * modification and change times in ns), kept between builds so that an unchanged context is
 * not read again. Any write changes the change time, and so does setting the modification time
 * back (utimes(2)): an edit with the same size and mtime is read again. Files changed less than
 * `racy` ms before they were hashed are not kept (time stamps are coarser than writes, as Git's
 * "racily clean" entries). */
export class DigestMemo {
  private readonly file: string | null;
  private readonly racy: number;
  private readonly old = new Map<string, [string, string]>();
  private readonly now = new Map<string, [string, string]>();

  constructor(file: string | null, racy = 2000) {
    this.file = file;
    this.racy = racy;
    const j = file === null ? null : readJson<Record<string, [string, string]>>(file);
    if (j && typeof j === "object") for (const [k, v] of Object.entries(j)) if (Array.isArray(v)) this.old.set(k, v);
  }

  digest(path: string): string {
    let st: BigIntStats;
    try {
      st = lstatSync(path, { bigint: true });
    } catch (e) {
      throw sysError(`can't read: ${path}`, e);
    }
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    const known = this.now.get(path) ?? this.old.get(path);
    if (known && known[0] === key) {
      this.now.set(path, known);
      return known[1];
    }
    const d = fileDigest(path);
    const stable = BigInt(Date.now() - this.racy) * 1000000n;
    if (st.mtimeNs < stable && st.ctimeNs < stable) this.now.set(path, [key, d]);
    return d;
  }

  /** Keeps what this build hashed (what it didn't see is forgotten). */
  save(): void {
    if (this.file !== null) writeJson(this.file, Object.fromEntries(this.now));
  }
}

interface HashFilter {
  /** Digests already known. */
  memo?: DigestMemo | null;
  /** .dockerignore of the context: excluded paths (relative to it) are left out. */
  ignore?: IgnoreMatcher | null;
  /** A host path left out (the storage directory, when it is inside the context). */
  skip?: string | null;
}

/** Feeds one tree (not following symbolic links) into `h`: for each entry, in byte order of
 * names, its relative path, type and permission bits, then a file's content digest, a link's
 * target or a directory's entries. Owners, times and inode numbers are left out. `ctx` is the
 * path from the root (for .dockerignore). */
function hashEntry(h: ReturnType<typeof createHash>, path: string, rel: string, ctx: string, f: HashFilter): void {
  if (path === f.skip) return;
  const st = lstatSync(path);
  if (ctx !== "" && f.ignore?.excluded(ctx) && !(st.isDirectory() && f.ignore.hasExceptions)) return;
  const mode = (st.mode & 0o7777).toString(8);
  if (st.isSymbolicLink()) h.update(`l ${JSON.stringify(rel)} ${mode} ${JSON.stringify(readlinkSync(path))}\n`);
  else if (st.isFile()) h.update(`f ${JSON.stringify(rel)} ${mode} ${f.memo ? f.memo.digest(path) : fileDigest(path)}\n`);
  else if (st.isDirectory()) {
    h.update(`d ${JSON.stringify(rel)} ${mode}\n`);
    const names = readdirSync(path).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const n of names) hashEntry(h, join(path, n), rel === "" ? n : `${rel}/${n}`, ctx === "" ? n : `${ctx}/${n}`, f);
  } else {
    const type = st.isCharacterDevice() ? "c" : st.isBlockDevice() ? "b" : st.isFIFO() ? "p" : "s";
    h.update(`o ${JSON.stringify(rel)} ${mode} ${type} ${st.rdev}\n`);
  }
}

/** Digest of COPY/ADD sources: each source (a path relative to `root`, the context or the
 * stage copied from, in the instruction's order) with its tree. The caller resolves sources
 * (globs, top-level symbolic links) inside `root`; one that leaves it lexically is refused. */
export function hashSources(root: string, sources: string[], filter: HashFilter = {}): string {
  const h = createHash("sha256");
  for (const s of sources) {
    const n = posix.normalize(s);
    if (isAbsolute(n) || n === ".." || n.startsWith("../")) throw new Error(`source outside ${root}: ${s}`);
    h.update(`source ${JSON.stringify(s)}\n`);
    const p = join(root, s);
    if (lstatOrNull(p) === null) h.update("missing\n");
    else hashEntry(h, p, "", n === "." ? "" : n, filter);
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
  /** Whether layers/ID holds what the instruction changed (else it changed no file). */
  layer: boolean;
  /** Whether that layer is the whole tree (a FROM, or a squashed chain), not a difference. */
  flat: boolean;
  /** The layers the state's tree is made of, top first (overlayfs's lowerdir order). */
  chain: string[];
  /** Opaque directories of its layer, relative to it. */
  opaque: string[];
  /** Entries and bytes of its layer. */
  entries: number;
  bytes: number;
}

/** What the cache knows of an image in storage it materialized: the state it holds and the
 * directory (device, inode) it wrote, so that a replaced directory is noticed. */
export interface TagRecord {
  state: string;
  dev: number;
  ino: number;
  time: string;
}

/** Layers in a chain before the next state is squashed into one flat layer: overlayfs takes
 * one page of mount options (lowerdir=A:B:...), ~40 paths of this layout. */
export const MAX_CHAIN = 24;

const ID = /^[0-9a-f]{64}$/;

function readJson<T>(path: string): T | null {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch {
    return null;
  }
}

/** Writes `data` as JSON at `path`: aside, then renamed (all or nothing for a reader). */
function writeJson(path: string, data: unknown): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    writeFileSync(tmp, `${JSON.stringify(data)}\n`, { mode: 0o644 });
    renameSync(tmp, path);
  } catch (e) {
    throw sysError(`can't write build cache: ${path}`, e);
  }
}

/** The build cache: STORAGE/dlcache/build-cache/ (Charliecloud refuses a storage directory with
 * anything else at its top, and reads nothing in dlcache/ it didn't write):
 *   states/ID.json   state records, written aside then renamed
 *   layers/ID/       their layers, complete (built in tmp/, renamed)
 *   tags/DIR.json    the state each image in storage (img/DIR) was made from
 *   deleted/DIR.json the same for the last deleted image of that name (undelete)
 *   tmp/NAME.PID     work in progress: uppers, work and mount directories; removed when PID
 *                    is gone
 * A layer is renamed into place before its record is written: a build killed at any moment
 * leaves a layer without a record (unused, removed by --gc) or a record with its layer, never
 * a record of a half-written layer. The whole build holds the storage lock (storage.ts). */
export class BuildCache {
  readonly dir: string;

  /** `dir`: elsewhere than the storage directory's (--no-cache: a throwaway one). */
  constructor(storageRoot: string, dir?: string) {
    this.dir = dir ?? join(storageRoot, BUILD_CACHE_DIR);
  }

  private statePath(id: string): string {
    if (!ID.test(id)) throw new Error(`not a state ID: ${id}`);
    return join(this.dir, "states", `${id}.json`);
  }

  layerPath(id: string): string {
    if (!ID.test(id)) throw new Error(`not a state ID: ${id}`);
    return join(this.dir, "layers", id);
  }

  private tagPath(kind: "tags" | "deleted", dir: string): string {
    if (dir.includes("/") || dir.startsWith(".") || dir === "") throw new Error(`not an image directory name: ${dir}`);
    return join(this.dir, kind, `${dir}.json`);
  }

  /** A usable state: its record, and its layers all there; else null (a miss, never an error). */
  get(id: string): StateRecord | null {
    const r = readJson<StateRecord>(this.statePath(id));
    if (!r || r.id !== id || !Array.isArray(r.chain) || (r.parent !== null && !ID.test(String(r.parent)))) return null;
    // (statSync: --no-cache's throwaway cache links its FROM layer to the image in storage.)
    for (const l of r.chain) {
      let st: ReturnType<typeof statSync>;
      try {
        st = statSync(this.layerPath(l), { throwIfNoEntry: false });
      } catch {
        return null;
      }
      if (!st?.isDirectory()) return null;
    }
    return r;
  }

  /** Makes plain directory `dst` hold the tree of layer chain `chain` (top first): its layers
   * applied bottom up. */
  applyChain(chain: string[], dst: string): void {
    for (const l of [...chain].reverse()) applyLayer(this.layerPath(l), dst);
  }

  /** A new directory in tmp/ for this process (`what`: upper, work, mnt...). */
  tmp(what: string): string {
    const base = join(this.dir, "tmp");
    mkdirSync(base, { recursive: true, mode: 0o700 });
    for (let i = 0; ; i++) {
      const p = join(base, `${what}-${i}.${process.pid}`);
      try {
        mkdirSync(p, 0o700);
        return p;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw sysError(`can't create: ${p}`, e);
      }
    }
  }

  /** Removes what dead processes left in tmp/ (and this process's own, at the end). */
  cleanTmp(own = false): void {
    const base = join(this.dir, "tmp");
    let names: string[];
    try {
      names = readdirSync(base);
    } catch {
      return;
    }
    for (const n of names) {
      const m = /\.(\d+)(\.tmp)?$/.exec(n);
      const pid = m ? Number(m[1]) : 0;
      if (own ? pid === process.pid : !pidAlive(pid)) forceRemove(join(base, n));
    }
  }

  /** Stores a state: its layer (a finished upper directory, or null for none) renamed into
   * place first, then its record. A layer already there (--rebuild) is replaced, after the
   * images that hold it (or a state above it) are forgotten and its old record removed: a kill
   * from then on leaves a miss, never an image trusted to hold the new layer's content, nor
   * the old record (its opaque directories, sizes) over the new layer. */
  commit(r: StateRecord, upper: string | null): void {
    if (upper !== null) {
      const final = this.layerPath(r.id);
      mkdirSync(dirname(final), { recursive: true, mode: 0o700 });
      if (lstatOrNull(final)) {
        this.forgetTags(r.id);
        rmSync(this.statePath(r.id), { force: true });
        const old = join(this.tmp("old"), "layer");
        renameSync(final, old);
      }
      try {
        renameSync(upper, final);
      } catch (e) {
        throw sysError(`can't store build cache layer: ${final}`, e);
      }
    }
    writeJson(this.statePath(r.id), r);
  }

  /** Forgets which state the images hold where it may no longer be what their layers say
   * (the layer of state `id`, in their ancestry, replaced): they are made whole by their next
   * build. */
  private forgetTags(id: string): void {
    for (const d of this.tagDirs()) {
      const t = this.tag(d);
      if (t && this.ancestry(t.state).includes(id)) this.setTag(d, null);
    }
  }

  tag(dir: string, kind: "tags" | "deleted" = "tags"): TagRecord | null {
    const r = readJson<TagRecord>(this.tagPath(kind, dir));
    return r && typeof r.state === "string" && ID.test(r.state) ? r : null;
  }

  setTag(dir: string, r: TagRecord | null, kind: "tags" | "deleted" = "tags"): void {
    const p = this.tagPath(kind, dir);
    if (r === null) rmSync(p, { force: true });
    else writeJson(p, r);
  }

  /** Names of the image directories recorded (tags or deleted ones). */
  tagDirs(kind: "tags" | "deleted" = "tags"): string[] {
    try {
      return readdirSync(join(this.dir, kind))
        .filter((n) => n.endsWith(".json") && !n.startsWith("."))
        .map((n) => n.slice(0, -5))
        .sort();
    } catch {
      return [];
    }
  }

  /** All state records (unreadable ones left out). */
  states(): StateRecord[] {
    let names: string[];
    try {
      names = readdirSync(join(this.dir, "states"));
    } catch {
      return [];
    }
    const out: StateRecord[] = [];
    for (const n of names) {
      if (!/^[0-9a-f]{64}\.json$/.test(n)) continue;
      const r = readJson<StateRecord>(join(this.dir, "states", n));
      if (r && r.id === n.slice(0, 64)) out.push(r);
    }
    return out;
  }

  /** Layer directories present. */
  layers(): string[] {
    try {
      return readdirSync(join(this.dir, "layers")).filter((n) => ID.test(n));
    } catch {
      return [];
    }
  }

  /** The state IDs from `id` back to the first, following parents: [id, parent, ...]. */
  ancestry(id: string): string[] {
    const out: string[] = [];
    const seen = new Set<string>();
    for (let r = this.get(id); r && !seen.has(r.id); r = r.parent ? this.get(r.parent) : null) {
      seen.add(r.id);
      out.push(r.id);
    }
    return out;
  }

  /** Removes the states no image (in storage or deleted, undeletable) needs: those not among
   * their ancestors, with their layers, and layers without a record. Returns what went. */
  gc(): { states: number; layers: number } {
    const keep = new Set<string>();
    const layers = new Set<string>();
    for (const kind of ["tags", "deleted"] as const)
      for (const d of this.tagDirs(kind)) {
        const t = this.tag(d, kind);
        if (!t) continue;
        for (const id of this.ancestry(t.state)) {
          keep.add(id);
          for (const l of this.get(id)?.chain ?? []) layers.add(l);
        }
      }
    let states = 0;
    let names: string[] = [];
    try {
      names = readdirSync(join(this.dir, "states"));
    } catch {
      // none
    }
    for (const n of names)
      if (!keep.has(n.slice(0, -5)) || !this.get(n.slice(0, -5))) {
        rmSync(join(this.dir, "states", n), { force: true });
        states++;
      }
    let n = 0;
    for (const l of this.layers())
      if (!layers.has(l)) {
        forceRemove(this.layerPath(l));
        n++;
      }
    this.cleanTmp();
    return { states, layers: n };
  }

  /** Empties the cache (tags and undelete records included). */
  reset(): void {
    forceRemove(this.dir);
  }
}
