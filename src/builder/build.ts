// Building an image: the stages the target needs, in order, each instruction's result a state
// of the build cache (cache.ts: keys, records, layout; layers.ts: overlay layers).
// - A state whose record is in the cache is a hit: nothing runs (the step is numbered "N*", as
//   Charliecloud does). A miss runs the instruction into a fresh upper directory over the
//   layers of the state before it: RUN in ch-run with that overlay as the image root, COPY, ADD
//   and WORKDIR written here into the upper directory (reading through the layers); ENV, LABEL
//   and the like change only the metadata the state records. Nothing is copied per instruction.
//   FROM an image in storage copies it once into a flat layer, keyed on the image directory
//   (name, device, inode, change time: a pull, import or build makes a new one).
// - --no-cache (or $CH_IMAGE_CACHE=disabled): the same, in a throwaway cache (nothing read,
//   nothing kept); --rebuild: every instruction but FROM runs, and its result replaces the
//   cached one.
// - The image in storage stays a plain directory (ch-run -w may change it): at the end the
//   target state is materialized in the target's partial directory beside it in img/
//   (install.ts), layers applied bottom up, ch/metadata.json and ch/environment written, and
//   renamed into place: a failed build leaves the tag as it was. The cache records which state
//   it wrote where (tags/): a rebuild whose result is that state copies nothing; one whose
//   result follows from it (a changed last RUN) applies just the new layers to that directory,
//   its record dropped first (a kill meanwhile makes the next build copy it whole).
// - RUN goes through ch-run, this same executable, as Charliecloud's does: `ch-run --unsafe -w
//   -u0 -g0 --no-passwd --cd WORKDIR MOUNTPOINT -- CMD` with $CH_RUN_BUILD_LAYERS naming the
//   layers (ch-run mounts the overlay at MOUNTPOINT in its namespace: plan.ts), with the
//   stage's variables (ENV and ARG in scope, the proxy variables) as its environment. Root emulation (--force=seccomp, Charliecloud's default) adds `--seccomp`
//   (container/seccomp.ts: chown(2), setuid(2) and the like succeed without effect) and the
//   --force-cmd arguments (force.ts: apt-get told to stay root); --force=none neither.
// - The environment starts with Charliecloud's defaults (PATH, TAR_OPTIONS=--no-same-owner),
//   then the base image's, then ENV.
// - USER is recorded in ch/metadata.json (and pushed), but RUN still runs as root (uid 0 in the
//   container: the building user outside), as Charliecloud's builder does; a USER with a RUN
//   after it says so. EXPOSE, HEALTHCHECK, STOPSIGNAL and ONBUILD are recorded as Docker's config
//   has them; a base image's ONBUILD triggers are not run (a warning names them) nor inherited.
import { spawnSync } from "node:child_process";
import {
  lstatSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { basename, join, posix } from "node:path";
import { isSea } from "node:sea";
import { info } from "../cli/log.ts";
import { OVERLAY_OPTIONS_MAX } from "../container/plan.ts";
import { fixupImage } from "../image/fixup.ts";
import { forceRemove, installImage } from "../image/install.ts";
import { copyTree } from "../image/special.ts";
import { imageChanges, imageName, type Storage } from "../image/storage.ts";
import { pull } from "../registry/commands.ts";
import { DEFAULT_SHELL, type Healthcheck, healthcheck, hostArch, type Metadata } from "../registry/manifest.ts";
import type { ClientOptions } from "../registry/pull.ts";
import { ChError, sysError, warn } from "../sys/errors.ts";
import {
  BuildCache,
  DigestMemo,
  fromState,
  hashSources,
  instructionText,
  MAX_CHAIN,
  type StateRecord,
  scopeArgs,
  stateId,
} from "./cache.ts";
import type { CacheMode, ForceCmd } from "./cli.ts";
import { copyInstruction } from "./copy.ts";
import { type Instruction, isHeredoc } from "./dockerfile.ts";
import { Downloader } from "./download.ts";
import { DEFAULT_FORCE_CMDS, forceCommand } from "./force.ts";
import { applyLayer, LayeredTree, revertLayer, scanLayer } from "./layers.ts";
import { expandGlob, IgnoreMatcher, lstatOrNull, mkdirsIn, resolveIn } from "./paths.ts";
import type { Plan, Stage } from "./stages.ts";
import { type BuildArgs, StageScope } from "./vars.ts";

/** Charliecloud's environment for images it builds, under the base image's. */
export const DEFAULT_ENV: [string, string][] = [
  ["PATH", "/ch/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
  ["TAR_OPTIONS", "--no-same-owner"],
];

/** ch/metadata.json of a built image: Charliecloud's fields, the same a pulled image has. */
export type BuildMetadata = Metadata;

export interface BuildContext {
  storage: Storage;
  client: ClientOptions;
  /** The context directory; null with the Dockerfile on standard input and no context. */
  context: string | null;
  force: "seccomp" | "none";
  /** --force-cmd's list; null for the default (force.ts). */
  forceCmds?: ForceCmd[] | null;
  /** --cache (enabled, the default), --no-cache (disabled), --rebuild. */
  cache?: CacheMode;
}

interface StageState {
  /** The state the stage is at. */
  state: StateRecord;
  meta: BuildMetadata;
  scope: StageScope;
}

const strings = (x: unknown): string[] => (Array.isArray(x) ? x.filter((s): s is string => typeof s === "string") : []);
const record = (x: unknown): Record<string, string> => {
  const out: Record<string, string> = {};
  if (typeof x === "object" && x !== null && !Array.isArray(x))
    for (const [k, v] of Object.entries(x)) if (typeof v === "string") out[k] = v;
  return out;
};

/** An image's metadata as the builder starts from it: ch/metadata.json, else (an imported
 * image) ch/environment; Charliecloud's default environment under either. */
export function baseMetadata(dir: string | null): BuildMetadata {
  let j: Record<string, unknown> = {};
  let envFile: Record<string, string> = {};
  // The image is untrusted: its files are read inside it (a symlink to a host file isn't).
  const read = (path: string) => {
    const r = resolveIn(dir as string, path, true);
    if (!r.st?.isFile()) throw new ChError(`not a file: ${path}`);
    return readFileSync(r.host, "utf8");
  };
  if (dir !== null) {
    try {
      const parsed = JSON.parse(read("ch/metadata.json"));
      if (typeof parsed === "object" && parsed !== null) j = parsed;
    } catch {
      try {
        for (const line of read("ch/environment").split("\n")) {
          const eq = line.indexOf("=");
          if (eq > 0) envFile[line.slice(0, eq)] = line.slice(eq + 1);
        }
      } catch {
        envFile = {};
      }
    }
  }
  const shell = strings(j.shell);
  const arch = typeof j.arch === "string" && j.arch !== "" && j.arch !== "unknown" ? j.arch : hostArch();
  return {
    arch,
    cwd: typeof j.cwd === "string" && j.cwd.startsWith("/") ? j.cwd : "/",
    env: Object.fromEntries(
      // Names and values that can't be an environment variable (an untrusted image's) are dropped.
      Object.entries({ ...Object.fromEntries(DEFAULT_ENV), ...envFile, ...record(j.env) }).filter(
        ([k, v]) => k !== "" && !/[=\0]/.test(k) && !v.includes("\0"),
      ),
    ),
    entrypoint: strings(j.entrypoint),
    cmd: strings(j.cmd),
    labels: record(j.labels),
    shell: shell.length ? shell : [...DEFAULT_SHELL],
    user: typeof j.user === "string" ? j.user : "",
    volumes: strings(j.volumes),
    expose: strings(j.expose),
    healthcheck: healthcheck(j.healthcheck),
    stopsignal: typeof j.stopsignal === "string" ? j.stopsignal : "",
    onbuild: strings(j.onbuild),
    history: Array.isArray(j.history) ? j.history : [],
  };
}

const NS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, μs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** A Go duration ("1m30s", "0.5s") in nanoseconds, as Docker reads HEALTHCHECK's flags (the
 * parser checked its syntax). */
export function goDurationNs(text: string): number {
  let ns = 0;
  for (const m of text.replace(/^[-+]/, "").matchAll(/([0-9]*\.?[0-9]*)(ns|us|µs|μs|ms|s|m|h)/g))
    ns += Number(m[1] || 0) * NS[m[2]];
  return Math.round(text.startsWith("-") ? -ns : ns);
}

/** EXPOSE's ports as Docker keeps them: PORT/PROTO (tcp by default), ranges expanded. */
export function exposedPorts(args: string[], what: string): string[] {
  const out: string[] = [];
  for (const a of args) {
    const m = /^(\d+)(?:-(\d+))?(?:\/([a-zA-Z]+))?$/.exec(a);
    const proto = (m?.[3] ?? "tcp").toLowerCase();
    const lo = Number(m?.[1]);
    const hi = m?.[2] === undefined ? lo : Number(m[2]);
    if (!m || !["tcp", "udp", "sctp"].includes(proto) || lo < 1 || hi > 65535 || hi < lo)
      throw new ChError(`${what}: invalid port: ${a}`);
    for (let p = lo; p <= hi; p++) out.push(`${p}/${proto}`);
  }
  return out;
}

/** Writes ch/metadata.json and ch/environment into an image being built (nothing through a
 * symlink the image put there). */
export function writeBuildMetadata(root: string, meta: BuildMetadata): void {
  const ch = join(root, "ch");
  const st = lstatOrNull(ch);
  if (st && !st.isDirectory()) forceRemove(ch);
  if (!st?.isDirectory()) mkdirSync(ch, 0o755);
  const env = Object.entries(meta.env)
    .filter(([, v]) => !v.includes("\n"))
    .map(([k, v]) => `${k}=${v}\n`)
    .join("");
  for (const [name, data] of [
    ["metadata.json", `${JSON.stringify(meta, null, 2)}\n`],
    ["environment", env],
  ]) {
    const p = join(ch, name);
    rmSync(p, { force: true, recursive: true });
    writeFileSync(p, data, { mode: 0o644, flag: "wx" });
  }
}

/** This executable as another of its programs: [file, arguments before the program's own]. */
export function selfAs(program: string): [string, string[]] {
  if (isSea()) return [process.execPath, []];
  return [process.execPath, [process.argv[1], program]];
}

function where(inst: Instruction): string {
  return `${inst.file}:${inst.line}`;
}

/** The record of a FROM state: one flat layer, the bottom of its chain. */
function fromRecord(id: string, text: string, meta: BuildMetadata, size: { entries: number; bytes: number }): StateRecord {
  return {
    id,
    parent: null,
    text,
    config: meta as unknown as Record<string, unknown>,
    created: new Date().toISOString(),
    layer: true,
    flat: true,
    chain: [id],
    opaque: [],
    entries: size.entries,
    bytes: size.bytes,
  };
}

/** HEALTHCHECK as Docker's config keeps it. */
export function healthcheckOf(inst: Instruction): Healthcheck {
  const type = inst.args[0].toUpperCase();
  if (type === "NONE") return { Test: ["NONE"] };
  const h: Healthcheck = { Test: inst.json ? ["CMD", ...inst.args.slice(1)] : ["CMD-SHELL", inst.args[1]] };
  const d = (f: string) =>
    typeof inst.flags[f] === "string" && inst.flags[f] !== "" ? goDurationNs(inst.flags[f] as string) : 0;
  const fields: [keyof Healthcheck, number][] = [
    ["Interval", d("interval")],
    ["Timeout", d("timeout")],
    ["StartPeriod", d("start-period")],
    ["StartInterval", d("start-interval")],
    ["Retries", typeof inst.flags.retries === "string" && inst.flags.retries !== "" ? Number(inst.flags.retries) : 0],
  ];
  for (const [k, v] of fields) if (v > 0) (h as unknown as Record<string, number>)[k] = v;
  return h;
}

/** Waits for the storage lock: builds in one storage directory take turns (Charliecloud's
 * ch-image refuses to start instead). */
function lockWaiting(storage: Storage): void {
  let said = false;
  for (;;) {
    try {
      storage.lock();
      return;
    } catch (e) {
      if (!(e instanceof ChError) || !e.message.includes("already in use")) throw e;
      if (!said) info(`waiting for the storage lock: ${storage.root} (another ch-image is using it)`);
      said = true;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
    }
  }
}

/** Installs the tree of layer chain `chain` of `cache`, with metadata `meta`, as image directory
 * `target` (aside, then renamed: installImage()). */
export async function installState(target: string, cache: BuildCache, chain: string[], meta: BuildMetadata): Promise<void> {
  await installImage(target, async (partial) => {
    cache.applyChain(chain, partial);
    writeBuildMetadata(partial, meta);
    return partial;
  });
}

/** A FROM image's key: its name and directory (a pull, import or build makes a new one), its
 * metadata file's change time, and the cache state it holds if this cache made it (an image
 * updated in place keeps its directory). */
function imageIdentity(name: string, dir: string, cache: BuildCache): string {
  const st = lstatSync(dir);
  const meta = lstatOrNull(join(dir, "ch", "metadata.json"));
  const state = cache.tag(basename(dir))?.state ?? "";
  const changes = imageChanges(cache.dir, basename(dir)).trim();
  return `${name} ${st.dev}:${st.ino} ${st.ctimeMs} ${meta?.ctimeMs ?? ""} ${state} ${changes}`;
}

export class Builder {
  private readonly states = new Map<number, StageState>();
  private readonly images = new Map<string, string>();
  /** Stages materialized for COPY --from, by state ID. */
  private readonly stageDirs = new Map<string, string>();
  private ignore: IgnoreMatcher | null = null;
  /** The storage directory, real path (never copied from the context). */
  private storageReal: string | null = null;
  private step = 0;
  private hits = 0;
  private download: Downloader | null = null;
  private cache: BuildCache | null = null;
  /** Digests of COPY sources known from earlier builds. */
  private memo = new DigestMemo(null);

  private readonly plan: Plan;
  private readonly args: BuildArgs;
  private readonly ctx: BuildContext;
  private readonly mode: CacheMode;

  constructor(plan: Plan, args: BuildArgs, ctx: BuildContext) {
    this.plan = plan;
    this.args = args;
    this.ctx = ctx;
    this.mode = ctx.cache ?? "enabled";
  }

  /** Builds the target stage into storage as `tag`. */
  async build(tag: string): Promise<void> {
    const { storage } = this.ctx;
    const name = imageName(tag);
    storage.exists(); // an unusable storage directory is refused before anything is fetched
    // Base images first (pulled if missing), then the storage lock for the build itself.
    for (const i of this.plan.order) {
      const s = this.plan.stages[i];
      if (s.source.kind === "image") await this.image(s.source.ref);
      for (const ref of s.images) await this.image(ref);
    }
    // Builds take turns (the lock first: init() takes it too, and would refuse to wait).
    if (storage.exists()) lockWaiting(storage);
    storage.init();
    lockWaiting(storage);
    this.storageReal = realpathSync(storage.root);
    const shared = new BuildCache(storage.root);
    shared.cleanTmp();
    // --no-cache: a cache of this build's own, in tmp/ (removed at the end, or by the next
    // build after a kill).
    this.cache = this.mode === "disabled" ? new BuildCache(storage.root, shared.tmp("nocache")) : shared;
    this.memo = new DigestMemo(this.mode === "disabled" ? null : join(shared.dir, "digests.json"));
    if (this.ctx.context !== null) {
      // A symlink is followed, as Docker does, but only inside the context: ignored silently,
      // it would let COPY take the very files it was written to keep out.
      const p = join(this.ctx.context, ".dockerignore");
      const r = resolveIn(this.ctx.context, ".dockerignore", true);
      if (r.escaped)
        throw new ChError(`${p}: a symbolic link out of the context; make it a file in the context (or a link inside it)`);
      if (r.st?.isFile())
        try {
          this.ignore = new IgnoreMatcher(readFileSync(r.host, "utf8"));
        } catch (e) {
          if (e instanceof ChError) throw new ChError(`${p}: ${e.message}`);
          throw sysError(`can't read: ${p}`, e);
        }
    }
    this.download = new Downloader(join(storage.root, "dlcache"), this.ctx.client.tlsVerify);
    try {
      for (const i of this.plan.order) await this.stage(this.plan.stages[i]);
      const final = this.states.get(this.plan.target) as StageState;
      await this.materialize(final, storage.imagePath(name), shared);
      this.memo.save();
    } finally {
      this.download.close();
      shared.cleanTmp(true);
    }
    const hits = this.hits > 0 ? ` (${this.hits} cached)` : "";
    info(`grown in ${this.step} instructions${hits}: ${name}`);
  }

  /** Puts the target state in storage as a plain directory (see the top of this file). */
  private async materialize(final: StageState, target: string, shared: BuildCache): Promise<void> {
    const cache = this.cache as BuildCache;
    const dir = basename(target);
    const id = final.state.id;
    const rec = shared.tag(dir);
    const st = lstatOrNull(target);
    const same = rec !== null && st?.isDirectory() && rec.dev === st.dev && rec.ino === st.ino;
    if (this.mode === "enabled" && same && rec.state === id) {
      info("image in storage is this build's result already: nothing to copy");
      return;
    }
    if (this.mode === "enabled" && same) {
      // The image holds another state of the cache: the layers since the last state both
      // share undone (each path they changed put back), then the new ones applied, in place.
      const old = cache.ancestry(rec.state);
      const now = cache.ancestry(id);
      const common = old.find((i) => now.includes(i));
      if (common !== undefined) {
        const undo = old.slice(0, old.indexOf(common)).map((i) => cache.get(i) as StateRecord);
        const redo = now
          .slice(0, now.indexOf(common))
          .reverse()
          .map((i) => cache.get(i) as StateRecord);
        const base = cache.get(common) as StateRecord;
        if ([...undo, ...redo].every((r) => !r.flat)) {
          shared.setTag(dir, null);
          const t0 = Date.now();
          const chain = base.chain.map((l) => cache.layerPath(l));
          const undone = undo.filter((r) => r.layer);
          for (const r of undone) revertLayer(cache.layerPath(r.id), chain, target);
          const applied = redo.filter((r) => r.layer);
          for (const r of applied) applyLayer(cache.layerPath(r.id), target);
          writeBuildMetadata(target, final.meta);
          info(
            `image in storage updated in place: ${undone.length} layer(s) undone, ${applied.length} applied (${Date.now() - t0} ms)`,
          );
          shared.setTag(dir, { state: id, dev: rec.dev, ino: rec.ino, time: new Date().toISOString() });
          return;
        }
      }
    }
    shared.setTag(dir, null);
    await installState(target, cache, final.state.chain, final.meta);
    const now = lstatSync(target);
    if (this.mode !== "disabled") shared.setTag(dir, { state: id, dev: now.dev, ino: now.ino, time: new Date().toISOString() });
  }

  /** An image in storage (pulled if missing): its directory. */
  private async image(ref: string): Promise<string> {
    const known = this.images.get(ref);
    if (known) return known;
    const { storage } = this.ctx;
    const name = imageName(ref);
    if (!storage.has(name)) {
      info(`base image not in storage, pulling: ${ref}`);
      await pull(storage, ref, null, { ...this.ctx.client, arch: "host", alwaysDownload: false });
    }
    const dir = storage.imagePath(name);
    this.images.set(ref, dir);
    return dir;
  }

  private say(inst: Instruction, hit = false, text = inst.text): void {
    this.step++;
    if (hit) this.hits++;
    // A password in a URL (refused by ADD, but written in the Dockerfile) is not repeated.
    info(
      `${String(this.step).padStart(3)}${hit ? "*" : "."} ${text.replace(/\b([a-z][a-z0-9+.-]*:\/\/[^\s/:@]*):[^\s/@]*@/gi, "$1:***@")}`,
    );
  }

  /** A cached state, if this build may use it. */
  private lookup(id: string, isFrom: boolean): StateRecord | null {
    if (this.mode === "rebuild" && !isFrom) return null;
    return (this.cache as BuildCache).get(id);
  }

  /** A FROM state: the image (or an empty tree) as a flat layer, made once. */
  private async fromImage(stage: Stage): Promise<StateRecord> {
    const cache = this.cache as BuildCache;
    const src = stage.source;
    const dir = src.kind === "image" ? await this.image(src.ref) : null;
    const shared = new BuildCache(this.ctx.storage.root); // what it knows of images, even with --no-cache
    const id =
      dir === null
        ? fromState("scratch", "")
        : fromState(imageIdentity(imageName((src as { ref: string }).ref), dir, shared), "");
    const hit = this.lookup(id, true);
    this.say(stage.from, hit !== null);
    if (hit) return hit;
    if (this.mode === "disabled" && dir !== null) {
      // --no-cache: the image itself is the bottom layer, not a copy (nothing is kept, and the
      // build holds the storage lock: no ch-image replaces it meanwhile).
      mkdirSync(join(cache.dir, "layers"), { recursive: true, mode: 0o700 });
      symlinkSync(dir, cache.layerPath(id));
      const r = fromRecord(id, stage.from.text, baseMetadata(dir), { entries: 0, bytes: 0 });
      cache.commit(r, null);
      return r;
    }
    const up = cache.tmp("from");
    const tree = join(up, "tree");
    if (dir === null) mkdirSync(tree, 0o755);
    // special.ts: reflinks where the file system has them, FIFOs made again, sockets and device
    // files left out with a warning.
    else await copyTree(dir, tree);
    fixupImage(tree);
    const r = fromRecord(id, stage.from.text, baseMetadata(dir === null ? null : tree), scanLayer(tree));
    cache.commit(r, tree);
    return r;
  }

  private async stage(stage: Stage): Promise<void> {
    const cache = this.cache as BuildCache;
    let state: StageState;
    const src = stage.source;
    if (src.kind === "stage") {
      this.say(stage.from);
      const prev = this.states.get(src.index) as StageState;
      state = { state: prev.state, meta: structuredClone(prev.meta), scope: prev.scope.child() };
    } else {
      const r = await this.fromImage(stage);
      const meta = structuredClone(r.config) as unknown as BuildMetadata;
      state = { state: r, meta, scope: new StageScope(this.plan.globals, this.args, Object.entries(meta.env)) };
    }
    if (state.meta.onbuild.length > 0) {
      // Docker runs them here, and the new image doesn't inherit them.
      warn(
        `${where(stage.from)}: FROM ${stage.base}: its ONBUILD triggers are not run in this version: ${state.meta.onbuild.join("; ")}`,
      );
      state.meta.onbuild = [];
    }
    let cmdSet = false;
    let userWarned = false;
    for (const [n, inst] of stage.instructions.entries()) {
      const e = state.scope.apply(inst);
      const K = inst.keyword.toUpperCase();
      const parent = state.state;
      const sources = inst.keyword === "copy" || inst.keyword === "add" ? this.sourcesDigest(inst, e) : null;
      // RUN's result also depends on root emulation (--force, --force-cmd).
      const force =
        inst.keyword === "run"
          ? `\n${JSON.stringify([this.ctx.force, this.ctx.force === "seccomp" ? (this.ctx.forceCmds ?? null) : null])}`
          : "";
      const id = stateId({
        parent: parent.id,
        instruction: instructionText(e) + force,
        args: scopeArgs(state.scope),
        sources,
      });
      const hit = this.lookup(id, false);
      this.say(inst, hit !== null);
      if (inst.keyword === "cmd") cmdSet = true;
      if (hit) {
        state.state = hit;
        state.meta = structuredClone(hit.config) as unknown as BuildMetadata;
        continue;
      }
      const { meta } = state;
      let upper: string | null = null;
      const layers = () => {
        upper = join(cache.tmp("upper"), "layer");
        mkdirSync(upper, 0o755);
        return new LayeredTree([upper, ...parent.chain.map((l) => cache.layerPath(l))]);
      };
      switch (inst.keyword) {
        case "arg":
          break;
        case "env":
          meta.env = Object.fromEntries(state.scope.imageEnv);
          break;
        case "workdir":
          meta.cwd = posix.resolve(meta.cwd, e.args[0]);
          mkdirsIn(layers(), meta.cwd);
          break;
        case "run":
          layers();
          this.run(inst, state, upper as unknown as string);
          break;
        case "copy":
        case "add":
          await copyInstruction({
            e,
            dest: layers(),
            cwd: meta.cwd,
            from: this.copySource(inst, e.flags.from),
            download: this.download,
          });
          break;
        case "shell":
          meta.shell = [...inst.args];
          break;
        case "user":
          meta.user = e.args[0];
          if (!userWarned && stage.instructions.slice(n + 1).some((i) => i.keyword === "run")) {
            warn(`${where(inst)}: USER ${meta.user}: recorded for ch-run; RUN still runs as root (uid 0) in this build`);
            userWarned = true;
          }
          break;
        case "expose":
          for (const p of exposedPorts(e.args, `${where(inst)}: EXPOSE`)) if (!meta.expose.includes(p)) meta.expose.push(p);
          meta.expose.sort();
          break;
        case "stopsignal":
          meta.stopsignal = e.args[0];
          break;
        case "onbuild":
          meta.onbuild.push(inst.args[0]);
          break;
        case "healthcheck":
          meta.healthcheck = healthcheckOf(inst);
          break;
        case "label":
          for (const [k, v] of e.kv ?? []) meta.labels[k] = v ?? "";
          break;
        case "cmd":
          meta.cmd = inst.json ? [...inst.args] : [...meta.shell, inst.args[0] ?? ""];
          break;
        case "entrypoint":
          meta.entrypoint = inst.json ? [...inst.args] : [...meta.shell, inst.args[0] ?? ""];
          if (!cmdSet) meta.cmd = [];
          break;
        case "volume":
          for (const v of e.args.flatMap((a) => (inst.json ? [a] : a.split(/\s+/))))
            if (v && !meta.volumes.includes(v)) meta.volumes.push(v);
          meta.volumes.sort(); // a set, as in Docker's config
          break;
        default:
          warn(`${where(inst)}: ${K}: ignored (not supported in this version)`);
      }
      meta.history.push({
        created: new Date().toISOString(),
        created_by: inst.text,
        ...(upper !== null ? {} : { empty_layer: true }),
      });
      state.state = this.commit(id, parent, inst, meta, upper);
    }
    this.states.set(stage.index, state);
  }

  /** Records a new state: its layer (the upper directory, if anything is in it) squashed with
   * those below when the chain is too long for one overlay mount. */
  private commit(id: string, parent: StateRecord, inst: Instruction, meta: BuildMetadata, upper: string | null): StateRecord {
    const cache = this.cache as BuildCache;
    const scan = upper === null ? null : scanLayer(upper);
    const r: StateRecord = {
      id,
      parent: parent.id,
      text: inst.text,
      config: structuredClone(meta) as unknown as Record<string, unknown>,
      created: new Date().toISOString(),
      layer: false,
      flat: false,
      chain: parent.chain,
      opaque: [],
      entries: 0,
      bytes: 0,
    };
    let layer = upper;
    if (scan !== null && scan.entries > 0 && upper !== null) {
      r.layer = true;
      r.chain = [id, ...parent.chain];
      r.opaque = scan.opaque.map((p) => p.slice(upper.length + 1));
      r.entries = scan.entries;
      r.bytes = scan.bytes;
      // (overlayOptions() refuses more than a page of paths: squashed well before.)
      const paths = r.chain.map((l) => cache.layerPath(l)).join(":").length;
      if (r.chain.length > MAX_CHAIN || paths > OVERLAY_OPTIONS_MAX - 1000) {
        // Squashed: the whole tree in one flat layer (one copy every MAX_CHAIN layers).
        const flat = join(cache.tmp("flat"), "layer");
        mkdirSync(flat, 0o755);
        cache.applyChain(parent.chain, flat);
        applyLayer(upper, flat);
        const s = scanLayer(flat);
        Object.assign(r, { flat: true, chain: [id], opaque: [], entries: s.entries, bytes: s.bytes });
        layer = flat;
      }
    } else layer = null;
    cache.commit(r, layer);
    return r;
  }

  /** What a COPY or ADD copies, as part of its state's key: the content of its sources in the
   * context or image, or the state of the stage it copies from. */
  private sourcesDigest(inst: Instruction, e: ReturnType<StageScope["apply"]>): string | null {
    const from = e.flags.from;
    if (typeof from === "string" && from !== "") {
      let index = -1;
      if (/^[+-]?\d+$/.test(from)) index = Number(from);
      else for (const s of this.plan.stages) if (s.name === from.toLowerCase()) index = s.index;
      const st = this.states.get(index);
      if (st) return `stage ${st.state.id}`;
    }
    const src = this.copySource(inst, from);
    if (src === null) return null;
    const rels: string[] = [];
    for (const a of e.args.slice(0, -1)) {
      if (/^[a-z][a-z0-9+.-]*:\/\//i.test(a) || (inst.heredocs.length && isHeredoc(a))) continue;
      let matches: string[];
      try {
        matches = expandGlob(src.root, a);
      } catch {
        continue; // copy.ts says what is wrong
      }
      for (const m of matches) {
        const r = resolveIn(src.root, m, true);
        if (!r.escaped) rels.push(r.rel === "" ? "." : r.rel);
      }
    }
    return hashSources(src.root, rels, { ignore: src.isContext ? src.ignore : null, skip: src.skip, memo: this.memo });
  }

  /** A stage's tree as a plain directory (COPY --from reads it), made once per build. */
  private stageDir(st: StageState): string {
    let d = this.stageDirs.get(st.state.id);
    if (d === undefined) {
      const cache = this.cache as BuildCache;
      d = join(cache.tmp("stage"), "tree");
      mkdirSync(d, 0o755);
      cache.applyChain(st.state.chain, d);
      this.stageDirs.set(st.state.id, d);
    }
    return d;
  }

  /** Where COPY/ADD read: the context, or --from's stage or image. */
  private copySource(inst: Instruction, fromFlag: unknown) {
    if (typeof fromFlag !== "string" || fromFlag === "")
      return this.ctx.context === null
        ? null
        : { root: this.ctx.context, isContext: true, ignore: this.ignore, skip: this.storageReal };
    let index = -1;
    if (/^[+-]?\d+$/.test(fromFlag)) index = Number(fromFlag);
    else for (const s of this.plan.stages) if (s.name === fromFlag.toLowerCase()) index = s.index;
    if (index >= 0) {
      const st = this.states.get(index);
      if (!st) throw new ChError(`${where(inst)}: COPY --from=${fromFlag}: stage not built`);
      return { root: this.stageDir(st), isContext: false, ignore: null, skip: null };
    }
    const dir = this.images.get(fromFlag);
    if (!dir) throw new ChError(`${where(inst)}: COPY --from=${fromFlag}: image not found`);
    return { root: dir, isContext: false, ignore: null, skip: null };
  }

  /** RUN, through ch-run, on an overlay of the state's layers with `upper` on top. */
  private run(inst: Instruction, state: StageState, upper: string): void {
    const { meta } = state;
    const cache = this.cache as BuildCache;
    if (Array.isArray(inst.flags.mount) && inst.flags.mount.length)
      throw new ChError(`${where(inst)}: RUN --mount: not supported yet in this version`);
    if (inst.flags.security === "insecure")
      throw new ChError(
        `${where(inst)}: RUN --security=insecure: not supported (an unprivileged build has no privilege to give)`,
      );
    const net = inst.flags.network;
    if (typeof net === "string" && net !== "default" && net !== "host")
      throw new ChError(`${where(inst)}: RUN --network=${net}: not supported yet (RUN shares the host's network)`);
    let argv: string[];
    let script: string | null = null;
    const line = inst.args[0] ?? "";
    if (inst.json) argv = [...inst.args];
    else if (inst.heredocs.length === 1 && isHeredoc(line.trim()) && !/\s/.test(line.trim())) {
      const h = inst.heredocs[0];
      if (h.content.startsWith("#!")) {
        script = `/.ch-run-heredoc.${process.pid}`;
        writeFileSync(join(upper, script), h.content, { mode: 0o700, flag: "wx" });
        argv = [script];
      } else argv = [...meta.shell, h.content];
    } else if (inst.heredocs.length)
      argv = [...meta.shell, `${line}\n${inst.heredocs.map((h) => `${h.content}${h.name}\n`).join("")}`];
    else argv = [...meta.shell, line];
    if (argv.length === 0) throw new ChError(`${where(inst)}: RUN: no command`);
    const seccomp = this.ctx.force === "seccomp";
    if (seccomp && script === null) {
      const forced = forceCommand(argv, !inst.json, this.ctx.forceCmds ?? DEFAULT_FORCE_CMDS);
      if (forced.some((a, i) => a !== argv[i]) || forced.length !== argv.length) {
        info(`--force=seccomp: modified command: ${JSON.stringify(forced)}`);
        argv = forced;
      }
    }
    // The command's environment is ch-run's: the stage's variables, but ch-run itself needs
    // the host's XDG_*, TMPDIR or HOME (its native module's private directory), which are then
    // unset or set back to the stage's values (ch-run sets HOME).
    const env = Object.fromEntries(state.scope.runEnv());
    const envArgs: string[] = [];
    for (const k of ["XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "TMPDIR", "HOME"]) {
      const host = process.env[k];
      const own = env[k];
      if (host !== undefined) env[k] = host;
      if (own !== undefined) envArgs.push(`--set-env=${k}=${own}`);
      else if (host !== undefined && k !== "HOME") envArgs.push(`--unset-env=${k}`);
    }
    const chain = state.state.chain;
    const work = cache.tmp("work");
    const mnt = cache.tmp("mnt");
    env.CH_RUN_BUILD_LAYERS = JSON.stringify({
      lower: chain.map((l) => cache.layerPath(l)),
      upper,
      work,
      opaque: chain.flatMap((l) => (cache.get(l)?.opaque ?? []).map((o) => join(cache.layerPath(l), o))),
    });
    const [exe, pre] = selfAs("ch-run");
    const opts = ["-s", this.ctx.storage.root, "--unsafe", "-w", "-u0", "-g0", "--no-passwd", "--env-no-expand", ...envArgs];
    if (seccomp) opts.push("--seccomp");
    const args = [...pre, ...opts, "--cd", meta.cwd, mnt, "--", ...argv];
    let r: ReturnType<typeof spawnSync>;
    try {
      // ch-run says on descriptor 3 when the command starts, and whether its execve(2) failed:
      // statuses 31 and 49 are then the command's own, or ch-run's, without guessing.
      r = spawnSync(exe, args, {
        stdio: ["inherit", "inherit", "inherit", "pipe"],
        env: { ...env, CH_RUN_STATUS_FD: "3" },
        argv0: "ch-run",
      });
    } finally {
      if (script !== null)
        try {
          if (lstatSync(join(upper, script)).isFile()) unlinkSync(join(upper, script));
        } catch {
          // removed by the command
        }
      forceRemove(work);
      try {
        rmdirSync(mnt);
      } catch {
        // left to cleanTmp()
      }
    }
    if (r.error) throw sysError(`${where(inst)}: RUN: can't run ch-run`, r.error);
    if (r.signal) throw new ChError(`${where(inst)}: RUN: command killed by signal ${r.signal}: ${inst.text}`);
    if (r.status !== 0) {
      // ch-run's own failures: it said why on the line above.
      const said = String(r.output?.[3] ?? "");
      if (!said.startsWith("started\n"))
        throw new ChError(`${where(inst)}: RUN: ch-run failed (status ${r.status}), the command did not start: ${inst.text}`);
      const why = said.includes("failed\n") ? " (could not be executed)" : "";
      throw new ChError(`${where(inst)}: RUN: command exited with status ${r.status}${why}: ${inst.text}`);
    }
  }
}
