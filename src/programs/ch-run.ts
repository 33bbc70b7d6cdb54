// ch-run: run a command in a container. The command line is read by container/options.ts, the
// image found by container/image.ts, the container planned by container/plan.ts and started by
// sys/exec-launch.ts (a directory image without --join: this process becomes the container) or
// sys/launch.ts (a SquashFS image, --join, --join-pid); this file ties them together.
import { existsSync, realpathSync } from "node:fs";
import { release } from "node:os";
import { argpHelp, argpUsage } from "../cli/argp.ts";
import { imageDefaults, squashDefaults } from "../container/defaults.ts";
import { describeOp, execute } from "../container/execute.ts";
import { featureEnabled, isFeature } from "../container/features.ts";
import { layeredFs, prefixedFs, realFs, rememberingFs } from "../container/hostfs.ts";
import { findImage } from "../container/image.ts";
import { checkJoinable, describeGroup, joinGroup, Peers } from "../container/join.ts";
import { RunLog } from "../container/log.ts";
import { Recorder } from "../container/memo-record.ts";
import { AFTER_OPTIONS, ARGS_DOC, parseRunArgs, type RunArgs, SPECS, SUMMARY } from "../container/options.ts";
import { type Plan, plan, planJoin } from "../container/plan.ts";
import { mountSquash, prepareSquash } from "../container/squash.ts";
import { SYSLOG_ENABLED, syslogMessage, syslogSocket } from "../container/syslog.ts";
import { runName } from "../dispatch.ts";
import { forgetBuiltState, storageDir } from "../image/storage.ts";
import { ChError, usageError } from "../sys/errors.ts";
import { execLaunch } from "../sys/exec-launch.ts";
import { inheritedFds } from "../sys/fds.ts";
import { fileGroup, filePasswd, mountFlagsOf } from "../sys/hostfacts.ts";
import { keepInheritedFds, keepOnExec } from "../sys/keepfd.ts";
import { launch, launchJoined } from "../sys/launch.ts";
import { libc, loadLibc } from "../sys/libc.ts";
import { type ProgramBuilder, setStatusFd } from "../sys/program.ts";
import { loaderInfo } from "../sys/self.ts";
import { VERSION } from "../version.ts";

/** The name ch-run was called by, as argp and syslog(3) name it. */
function calledAs(): string {
  return runName(process.argv0 || "ch-run");
}

/** This launch's recording, to remember it (container/memo.ts), if the loader asked for one. */
let recorder: Recorder | null = null;

/** libc through koffi, loaded only when needed: not on the fast path (it costs ~16 ms). */
async function lib(): Promise<ReturnType<typeof libc>> {
  recorder?.spoil("uses libc");
  await loadLibc();
  return libc();
}

/** Every command line is logged, even a wrong one, as Charliecloud does: first thing, or on the
 * fast path by the launcher, first thing it does. */
class Syslog {
  readonly message: [string, string] | null = SYSLOG_ENABLED
    ? [syslogSocket(process.env), syslogMessage(calledAs(), process.getuid?.() ?? 0, [process.argv0, ...process.argv.slice(2)])]
    : null;
  private sent = false;
  async now(): Promise<void> {
    if (!this.message || this.sent) return;
    this.sent = true;
    (await lib()).sendLog(...this.message);
  }
}

export async function main(argv: string[]): Promise<number> {
  const memo = loaderInfo()?.memo;
  if (memo) {
    try {
      recorder = new Recorder(memo, process.cwd()).start();
    } catch {
      recorder = null; // no working directory: ch-run says so later
    }
  }
  try {
    return await recorded(argv);
  } finally {
    recorder?.stop();
  }
}

async function recorded(argv: string[]): Promise<number> {
  const syslog = new Syslog();
  try {
    return await dispatch(argv, syslog);
  } catch (e) {
    // The error is what to tell: a syslog that can't be sent (no libc here) mustn't replace it.
    await syslog.now().catch(() => {});
    throw e;
  }
}

async function dispatch(argv: string[], syslog: Syslog): Promise<number> {
  const log = new RunLog();
  process.on("exit", () => log.reprint());
  const p = parseRunArgs(argv, existsSync);
  const name = calledAs();
  if (p.kind !== "run") await syslog.now();
  switch (p.kind) {
    case "help":
      process.stdout.write(argpHelp(name, ARGS_DOC, `\n${SUMMARY}`, SPECS, AFTER_OPTIONS));
      return 0;
    case "usage":
      process.stdout.write(argpUsage(name, ARGS_DOC, SPECS));
      return 0;
    case "version":
      process.stderr.write(`${VERSION}\n`); // as Charliecloud's ch-run: on stderr
      return 0;
    case "feature":
      if (!isFeature(p.name)) throw usageError(`unknown feature: ${p.name}`);
      return featureEnabled(p.name) ? 0 : 1;
    case "warnings":
      log.verbosity = p.verbosity;
      for (let i = 1; i <= p.count; i++) log.warning(`this is warning ${i}!`);
      return 0;
    case "test":
      log.verbosity = p.verbosity;
      log.trace("trace");
      log.debug("debug");
      log.verbose("verbose");
      log.info("info");
      log.warning("warning");
      if (p.test === "log-fail") throw new ChError('the program failed inexplicably ("log-fail" specified)');
      return 0;
    case "getopt-error":
      process.stderr.write(`${name}: ${p.message}\nTry '${name} --help' or '${name} --usage' for more information.\n`);
      return 64; // EX_USAGE, as argp
    case "missing":
      throw missing(name);
  }
  return run(p.args, log, syslog, name);
}

/** The command's descriptors that become /dev/null: stdout with -qq, stderr too with -qqq. */
function nullFdsFor(verbosity: number): number[] {
  return verbosity <= -2 ? (verbosity <= -3 ? [1, 2] : [1]) : [];
}

/** Prints a plan's warnings, and its steps with -v. */
function showPlan(p: Plan, log: RunLog): void {
  for (const w of p.warnings) log.warning(w);
  for (const l of p.log) log.verbose(l);
  for (const op of p.ops) log.verbose(describeOp(op));
}

/** Adds a plan to the launcher's program: its steps, then beforeExec(), then the exec. */
function addPlan(p: Plan, b: ProgramBuilder, beforeExec: () => void): void {
  execute(p.ops.slice(0, -1), b);
  beforeExec();
  execute(p.ops.slice(-1), b);
}

/** Charliecloud's answer to a missing IMAGE or COMMAND: usage on stdout, then the error. */
function missing(name: string): Error {
  process.stdout.write(`usage: ${name} [OPTION...] ${ARGS_DOC}\n`);
  return usageError("IMAGE and/or COMMAND not specified");
}

/** CH_RUN_STATUS_FD (set by ch-image build for RUN): the status channel's descriptor
 * (program.ts's setStatusFd()), taken out of the command's environment; -1 if unset. */
function statusFd(env: NodeJS.ProcessEnv): number {
  const v = env.CH_RUN_STATUS_FD;
  if (v === undefined) return -1;
  delete env.CH_RUN_STATUS_FD;
  // One ch-run inherited: open is not enough (Node's own descriptors, its epoll say, are open too).
  if (!/^\d{1,9}$/.test(v) || Number(v) < 3 || !inheritedFds().includes(Number(v)))
    throw new ChError(`CH_RUN_STATUS_FD: not an open descriptor above 2: ${v}`);
  return Number(v);
}

/** The kernel's release, for --seccomp's plan only: no uname(2) at every start. */
function kernelFor(o: { seccomp: boolean }): string | undefined {
  if (!o.seccomp) return undefined;
  recorder?.kernel();
  return release();
}

async function run(parsed: RunArgs, log: RunLog, syslog: Syslog, name: string): Promise<never> {
  const { opts, image, unsafe } = parsed;
  log.verbosity = opts.verbosity;
  const status = statusFd(process.env);
  setStatusFd(status);
  for (const w of parsed.warnings) log.warning(w);
  const euid = process.geteuid?.() ?? 0;
  const egid = process.getegid?.() ?? 0;
  const user = process.env.USER || filePasswd(euid)?.name || (await lib()).getpwuid(euid)?.name;
  if (!user) throw new ChError("$USER not set and UID not found");
  const storage = storageDir(parsed.storage, process.env, user);
  const layers = buildLayers(process.env, unsafe);
  if (layers) {
    opts.layers = { lower: layers.lower, upper: layers.upper, work: layers.work };
    if (parsed.join || parsed.joinPid !== null) throw usageError("--join: not with build layers");
  }
  const found = findImage(image, storage, opts.write, unsafe);
  if (layers && found.kind === "squash") throw usageError(`$${BUILD_LAYERS_VAR}: not with a SquashFS image`);
  // An image in storage (only with --unsafe) that this run may change: the build cache no longer
  // knows what it holds.
  if (opts.write && found.kind === "dir" && !layers) forgetBuiltState(storage, found.root);
  if (found.kind !== "squash" && parsed.mount !== null) log.warning("--mount invalid with directory image, ignoring");
  // No command: the image's ENTRYPOINT then CMD, in its WORKDIR unless --cd; chosen here, before
  // either launch path. A SquashFS image's are read from the file, before it is mounted.
  if (opts.argv.length === 0) {
    const d = found.kind === "squash" ? squashDefaults(found.file) : imageDefaults(found.root);
    for (const w of d.warnings) log.warning(w);
    if (d.argv.length === 0) throw missing(name);
    opts.argv = d.argv;
    if (opts.cd === null && d.cwd !== null) opts.cd = d.cwd;
    log.verbose(`no command: the image's ENTRYPOINT and CMD: ${JSON.stringify(d.argv)}`);
  }
  // A directory image without --join: planned here, then this process becomes the container.
  if (found.kind !== "squash" && !parsed.join && parsed.joinPid === null)
    return runDirect(parsed, found.root, { euid, egid, user }, log, syslog, status, layers?.opaque ?? []);
  // Not remembered: stop watching now (the join path polls the file system a lot).
  recorder?.spoil("not a directory image without --join");
  recorder?.stop();
  await syslog.now();
  await loadLibc();
  const c = libc();
  const squash = found.kind === "squash" ? prepareSquash(found.file, parsed.mount, storage) : null;
  const root = squash ? squash.mnt : (found as { root: string }).root;
  // The image as ch-run sees it: a SquashFS image only inside the container's namespaces.
  let fs = realFs;
  let seen = root;
  const nullFds = nullFdsFor(opts.verbosity);
  const say = (s: string) => log.verbose(s);
  /** Prints a plan, then adds it to the child's program. */
  const build = (p: Plan, b: ProgramBuilder, beforeExec: () => void) => {
    showPlan(p, log);
    addPlan(p, b, beforeExec);
  };
  /** Runs the command in the container of process `target` (a --join peer). */
  const joinContainer = (target: number, peers: Peers | null): never => {
    say(`joining namespaces of pid ${target}`);
    try {
      return launchJoined({
        target,
        nullFds,
        ownFds: peers?.fds(),
        ready: () => {
          log.commandStarted();
          peers?.leave();
        },
        build: (b, beforeExec) =>
          build(
            planJoin(opts, { env: process.env, user, fs: realFs, kernel: kernelFor(opts) }, `/proc/${target}/root`),
            b,
            beforeExec,
          ),
      });
    } catch (e) {
      peers?.leave();
      throw e;
    }
  };
  const group = parsed.join ? joinGroup(parsed.join, process.env, process.ppid) : null;
  if (group) for (const l of describeGroup(group)) say(l);
  say(`join: ${group ? 1 : 0} ${group?.count ?? 0} ${group?.tag ?? "(null)"} ${parsed.joinPid ?? 0}`);
  if (parsed.joinPid !== null) {
    checkJoinable(parsed.joinPid);
    joinContainer(parsed.joinPid, null);
  }
  let peers: Peers | null = null;
  if (group) {
    const seconds = process.env.CH_RUN_JOIN_TIMEOUT || "30";
    if (!/^\d+(\.\d+)?$/.test(seconds) || !(Number(seconds) > 0))
      throw new ChError(`CH_RUN_JOIN_TIMEOUT: not a positive number of seconds: ${seconds}`);
    peers = new Peers(group, Number(seconds) * 1000, say);
    const claim = peers.claim();
    if (!claim.first) joinContainer(claim.pid, peers);
  }
  const first = peers;
  let fusePid = 0;
  try {
    launch({
      euid,
      egid,
      nullFds,
      prepare: squash
        ? (pid) => {
            // A group's squashfuse outlives this first peer: its late peers need the image.
            fusePid = mountSquash(pid, squash, first ? (fuse) => first.guard(fuse) : null);
            fs = prefixedFs(realFs, root, `/proc/${pid}/root`);
            seen = `/proc/${pid}/root${root}`;
          }
        : undefined,
      build(b, beforeExec) {
        const flags = c.mountFlags(seen);
        if (squash) {
          say(`SquashFS ${squash.file} mounted at ${root}`);
          b.leaveFuseNamespace(root);
        }
        const p = plan(opts, {
          euid,
          egid,
          user,
          env: process.env,
          cwd: process.cwd(),
          image: { root, mountFlags: flags, readOnly: (flags & 1) !== 0 },
          passwd: (uid) => c.getpwuid(uid),
          group: (gid) => c.getgrgid(gid),
          fs,
          kernel: kernelFor(opts),
        });
        build(p, b, beforeExec);
      },
      ownFds: first?.fds(),
      // The first peer's command starts at once; its holder keeps the container for the others.
      ready: (pid) => {
        log.commandStarted();
        first?.publish(pid);
      },
    });
  } catch (e) {
    peers?.abort();
    if (fusePid) c.kill(fusePid, 9); // detached, maybe still in the namespace where it mounted
    throw e;
  }
}

/** The variable ch-image build's RUN names its overlay root in (JSON: lower, upper, work,
 * opaque), honoured with --unsafe only ("internal use only") and removed from the environment
 * the command gets. */
export const BUILD_LAYERS_VAR = "CH_RUN_BUILD_LAYERS";

function buildLayers(
  env: Record<string, string | undefined>,
  unsafe: boolean,
): { lower: string[]; upper: string; work: string; opaque: string[] } | null {
  const text = env[BUILD_LAYERS_VAR];
  if (text === undefined) return null;
  delete env[BUILD_LAYERS_VAR];
  if (!unsafe) throw usageError(`$${BUILD_LAYERS_VAR}: internal use only (with --unsafe)`);
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    j = null;
  }
  const o = (j ?? {}) as Record<string, unknown>;
  const abs = (x: unknown): x is string => typeof x === "string" && x.startsWith("/");
  const list = (x: unknown): x is string[] => Array.isArray(x) && x.every(abs);
  if (!list(o.lower) || !abs(o.upper) || !abs(o.work) || !list(o.opaque ?? []))
    throw usageError(`$${BUILD_LAYERS_VAR}: invalid: ${text}`);
  return { lower: o.lower, upper: o.upper, work: o.work, opaque: (o.opaque as string[] | undefined) ?? [] };
}

/** The fast path: a directory image, no --join. The plan is made here from files alone (no
 * koffi), then ch-run replaces itself with the launcher executable, which makes the container
 * and execs the command in this same process. If no launcher can be executed here, the clone
 * path (sys/launch.ts) runs the same plan. */
async function runDirect(
  parsed: RunArgs,
  root: string,
  ids: { euid: number; egid: number; user: string },
  log: RunLog,
  syslog: Syslog,
  status: number,
  opaque: string[],
): Promise<never> {
  const { opts } = parsed;
  const { euid, egid, user } = ids;
  const say = (s: string) => log.verbose(s);
  say(`join: 0 0 (null) 0`);
  const loader = loaderInfo();
  if (loader) log.debug(`loader: bundle ${loader.bundle}, code cache ${loader.codeCache}`);
  let real = root;
  try {
    real = realpathSync(root);
  } catch {}
  const flags = mountFlagsOf(real) ?? (await lib()).mountFlags(root);
  const uid = opts.uid ?? euid;
  const gid = opts.gid ?? egid;
  const pw = filePasswd(uid) ?? (await lib()).getpwuid(uid);
  const gr = fileGroup(gid) ?? (await lib()).getgrgid(gid);
  const p = plan(opts, {
    euid,
    egid,
    user,
    env: process.env,
    cwd: process.cwd(),
    image: { root, mountFlags: flags, readOnly: (flags & 1) !== 0 },
    passwd: (u) => (u === uid ? pw : filePasswd(u)),
    group: (g) => (g === gid ? gr : fileGroup(g)),
    fs: opts.layers ? layeredFs(realFs, root, [opts.layers.upper, ...opts.layers.lower], new Set(opaque)) : rememberingFs(realFs),
    kernel: kernelFor(opts),
  });
  showPlan(p, log);
  // Planned: what is read from here on (descriptors, the launcher file) isn't the plan's.
  recorder?.stop();
  const nullFds = nullFdsFor(opts.verbosity);
  const exec = p.ops[p.ops.length - 1];
  const env = exec.op === "exec" ? exec.env : [];
  const build = (b: ProgramBuilder, beforeExec: () => void) => addPlan(p, b, beforeExec);
  // Node marks inherited descriptors close-on-exec at start-up: native code must find and keep them.
  const inherited = keepInheritedFds();
  if (status >= 0 && !inherited.includes(status)) keepOnExec([status]); // the launcher's, not the command's
  const path = env.find((kv) => kv.startsWith("PATH="))?.slice(5) ?? null;
  const why = execLaunch({ euid, egid, nullFds, syslog: syslog.message, build, tail: log.reprintText(), env }, (launch) =>
    recorder?.save(launch, p.env, path, syslog.message !== null),
  );
  say(`no launcher executable (${why}): starting the container from Node`);
  await syslog.now();
  await loadLibc();
  launch({ euid, egid, nullFds, build, ready: () => log.commandStarted() });
}
