// Building an image: the stages the target needs, in order, each instruction carried out, no
// build cache (every build runs every instruction; cache.ts is the design of the next step).
// - The build happens in the target's partial directory beside it in img/ (install.ts:
//   TARGET.partial-HOST.PID, removed on failure, and by the next build of that name after a
//   kill): each stage a directory in it, a copy of its base (an image in storage, pulled if
//   missing; an earlier stage; or nothing for scratch). The target stage, with its
//   ch/metadata.json and ch/environment, is renamed into place at the end: a failed build leaves
//   the tag as it was. Nothing else is made in the storage directory (Charliecloud's version 7
//   layout, which Charliecloud checks).
// - RUN goes through ch-run, this same executable, as Charliecloud's does: `ch-run --unsafe -w
//   -u0 -g0 --no-passwd --cd WORKDIR IMAGE -- CMD` (--unsafe: the image is a directory in
//   storage), with the stage's variables (ENV and ARG in scope, the proxy variables) as its
//   environment. Root emulation (--force=seccomp, Charliecloud's default) adds `--seccomp`
//   (container/seccomp.ts: chown(2), setuid(2) and the like succeed without effect) and the
//   --force-cmd arguments (force.ts: apt-get told to stay root); --force=none neither.
// - The environment starts with Charliecloud's defaults (PATH, TAR_OPTIONS=--no-same-owner),
//   then the base image's, then ENV.
// - USER is recorded in ch/metadata.json (and pushed), but RUN still runs as root (uid 0 in the
//   container: the building user outside), as Charliecloud's builder does; a USER with a RUN
//   after it says so. EXPOSE, HEALTHCHECK, STOPSIGNAL and ONBUILD are recorded as Docker's config
//   has them; a base image's ONBUILD triggers are not run (a warning names them) nor inherited.
import { spawnSync } from "node:child_process";
import { lstatSync, mkdirSync, readFileSync, realpathSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { join, posix } from "node:path";
import { isSea } from "node:sea";
import { info } from "../cli/log.ts";
import { fixupImage } from "../image/fixup.ts";
import { forceRemove, installImage } from "../image/install.ts";
import { copyTree } from "../image/special.ts";
import { imageName, type Storage } from "../image/storage.ts";
import { pull } from "../registry/commands.ts";
import { DEFAULT_SHELL, type Healthcheck, healthcheck, hostArch, type Metadata } from "../registry/manifest.ts";
import type { ClientOptions } from "../registry/pull.ts";
import { ChError, sysError, warn } from "../sys/errors.ts";
import type { ForceCmd } from "./cli.ts";
import { copyInstruction } from "./copy.ts";
import { type Instruction, isHeredoc } from "./dockerfile.ts";
import { Downloader } from "./download.ts";
import { DEFAULT_FORCE_CMDS, forceCommand } from "./force.ts";
import { IgnoreMatcher, lstatOrNull, mkdirsIn, resolveIn } from "./paths.ts";
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
}

interface StageState {
  dir: string;
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

/** Copies an image directory (stage or storage) to make a stage from it (special.ts: FIFOs
 * made again, sockets and device files left out with a warning). */
const copyImageDir = copyTree;

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

export class Builder {
  private readonly states = new Map<number, StageState>();
  private readonly images = new Map<string, string>();
  private ignore: IgnoreMatcher | null = null;
  /** The storage directory, real path (never copied from the context). */
  private storageReal: string | null = null;
  private dir = "";
  private step = 0;
  private download: Downloader | null = null;

  private readonly plan: Plan;
  private readonly args: BuildArgs;
  private readonly ctx: BuildContext;

  constructor(plan: Plan, args: BuildArgs, ctx: BuildContext) {
    this.plan = plan;
    this.args = args;
    this.ctx = ctx;
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
    storage.init();
    storage.lock();
    this.storageReal = realpathSync(storage.root);
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
      await installImage(storage.imagePath(name), async (partial) => {
        this.dir = partial;
        for (const i of this.plan.order) await this.stage(this.plan.stages[i]);
        const final = this.states.get(this.plan.target) as StageState;
        writeBuildMetadata(final.dir, final.meta);
        return final.dir;
      });
    } finally {
      this.download.close();
    }
    info(`grown in ${this.step} instructions: ${name}`);
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

  private say(inst: Instruction, text = inst.text): void {
    this.step++;
    // A password in a URL (refused by ADD, but written in the Dockerfile) is not repeated.
    info(`${String(this.step).padStart(3)}. ${text.replace(/\b([a-z][a-z0-9+.-]*:\/\/[^\s/:@]*):[^\s/@]*@/gi, "$1:***@")}`);
  }

  private async stage(stage: Stage): Promise<void> {
    const dir = join(this.dir, String(stage.index));
    this.say(stage.from);
    let state: StageState;
    const src = stage.source;
    if (src.kind === "scratch") {
      mkdirSync(dir, 0o755);
      const meta = baseMetadata(null);
      state = { dir, meta, scope: new StageScope(this.plan.globals, this.args, Object.entries(meta.env)) };
    } else if (src.kind === "image") {
      await copyImageDir(await this.image(src.ref), dir);
      const meta = baseMetadata(dir);
      state = { dir, meta, scope: new StageScope(this.plan.globals, this.args, Object.entries(meta.env)) };
    } else {
      const prev = this.states.get(src.index) as StageState;
      await copyImageDir(prev.dir, dir);
      state = { dir, meta: structuredClone(prev.meta), scope: prev.scope.child() };
    }
    fixupImage(dir);
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
      this.say(inst);
      const e = state.scope.apply(inst);
      const { meta } = state;
      const K = inst.keyword.toUpperCase();
      let layer = false;
      switch (inst.keyword) {
        case "arg":
          break;
        case "env":
          meta.env = Object.fromEntries(state.scope.imageEnv);
          break;
        case "workdir":
          meta.cwd = posix.resolve(meta.cwd, e.args[0]);
          mkdirsIn(dir, meta.cwd);
          layer = true;
          break;
        case "run":
          this.run(inst, state);
          layer = true;
          break;
        case "copy":
        case "add":
          await copyInstruction({
            e,
            dest: dir,
            cwd: meta.cwd,
            from: this.copySource(inst, e.flags.from),
            download: this.download,
          });
          layer = true;
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
          cmdSet = true;
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
        ...(layer ? {} : { empty_layer: true }),
      });
    }
    this.states.set(stage.index, state);
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
      return { root: st.dir, isContext: false, ignore: null, skip: null };
    }
    const dir = this.images.get(fromFlag);
    if (!dir) throw new ChError(`${where(inst)}: COPY --from=${fromFlag}: image not found`);
    return { root: dir, isContext: false, ignore: null, skip: null };
  }

  /** RUN, through ch-run. */
  private run(inst: Instruction, state: StageState): void {
    const { meta, dir } = state;
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
        writeFileSync(join(dir, script), h.content, { mode: 0o700, flag: "wx" });
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
    const [exe, pre] = selfAs("ch-run");
    const opts = ["-s", this.ctx.storage.root, "--unsafe", "-w", "-u0", "-g0", "--no-passwd", "--env-no-expand", ...envArgs];
    if (seccomp) opts.push("--seccomp");
    const args = [...pre, ...opts, "--cd", meta.cwd, dir, "--", ...argv];
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
          if (lstatSync(join(dir, script)).isFile()) unlinkSync(join(dir, script));
        } catch {
          // removed by the command
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
