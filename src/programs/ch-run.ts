// ch-run: run a command in a container.
import { closeSync, openSync, readFileSync, readSync, realpathSync, statSync } from "node:fs";
import { posix } from "node:path";
import { helpOrVersion, type OptSpec, parseArgs, parseId } from "../cli/getopt.ts";
import { type Assignment, type EnvOp, parseAssignment, parseEnvFile } from "../container/env.ts";
import { describeOp, execute } from "../container/execute.ts";
import { prefixedFs, realFs } from "../container/hostfs.ts";
import { checkJoinable, describeGroup, joinGroup, Peers } from "../container/join.ts";
import {
  type Bind,
  DEFAULT_WRITE_FAKE_SIZE,
  defaultRunOptions,
  type Plan,
  plan,
  planJoin,
  type RunOptions,
} from "../container/plan.ts";
import { MAGIC, mountSquash, prepareSquash } from "../container/squash.ts";
import { imagePath, storageDir } from "../image/storage.ts";
import { ChError, sysError, warn } from "../sys/errors.ts";
import { launch, launchJoined } from "../sys/launch.ts";
import { libc, loadLibc } from "../sys/libc.ts";
import type { ProgramBuilder } from "../sys/program.ts";

const SPECS: OptSpec[] = [
  { name: "bind", short: "b", arg: "required", argName: "SRC[:DST]", help: "mount SRC at guest DST (default: same as SRC)" },
  { name: "cd", short: "c", arg: "required", argName: "DIR", help: "initial working directory in container" },
  { name: "env-no-expand", arg: "none", help: "don't expand $ in --set-env input" },
  { name: "feature", arg: "required", argName: "FEAT", help: "exit successfully if FEAT is supported" },
  { name: "gid", short: "g", arg: "required", argName: "GID", help: "run as GID within container" },
  { name: "home", arg: "none", help: "mount host $HOME at guest /home/$USER" },
  { name: "mount", short: "m", arg: "required", argName: "DIR", help: "SquashFS mount point" },
  { name: "no-passwd", arg: "none", help: "don't bind-mount /etc/{passwd,group}" },
  { name: "private-tmp", short: "t", arg: "none", help: "use container-private /tmp" },
  { name: "quiet", short: "q", arg: "none", help: "print less output (can be repeated)" },
  { name: "set-env", arg: "optional", argName: "ARG", help: "set env. variables per ARG (newline-delimited)" },
  { name: "set-env0", arg: "optional", argName: "ARG", help: "set env. variables per ARG (null-delimited)" },
  { name: "storage", short: "s", arg: "required", argName: "DIR", help: "set image storage directory to DIR" },
  { name: "uid", short: "u", arg: "required", argName: "UID", help: "run as UID within container" },
  { name: "unsafe", arg: "none", help: "do unsafe things (internal use only)" },
  { name: "unset-env", arg: "required", argName: "GLOB", help: "unset environment variable(s)" },
  { name: "verbose", short: "v", arg: "none", help: "be more verbose (can be repeated)" },
  { name: "write", short: "w", arg: "none", help: "mount image read-write (avoid)" },
  { name: "write-fake", short: "W", arg: "optional", argName: "SIZE", help: "overlay read-write tmpfs on top of image" },
  { name: "join", short: "j", arg: "none", help: "use same container as peer ch-run" },
  { name: "join-ct", arg: "required", argName: "N", help: "number of join peers (implies --join)" },
  { name: "join-pid", arg: "required", argName: "PID", help: "join a namespace using a PID" },
  { name: "join-tag", arg: "required", argName: "TAG", help: "label for peer group (implies --join)" },
  { name: "help", arg: "none", help: "give this help list" },
  { name: "version", short: "V", arg: "none", help: "print version and exit" },
];

const FEATURES: Record<string, boolean> = {
  extglob: false,
  overlayfs: true,
  seccomp: false,
  squash: true,
  "tmpfs-xattrs": true,
};

interface Parsed {
  join: { count: number | null; tag: string | null } | null;
  joinPid: number | null;
  opts: RunOptions;
  image: string;
  storage: string | null;
  unsafe: boolean;
  mount: string | null;
}

function parseBind(spec: string): Bind {
  const i = spec.indexOf(":");
  const src = i < 0 ? spec : spec.slice(0, i);
  const dst = i < 0 ? spec : spec.slice(i + 1);
  if (!src) throw new ChError(`--bind: no source provided: ${spec}`);
  if (!dst) throw new ChError(`--bind: no destination provided: ${spec}`);
  if (!dst.startsWith("/")) throw new ChError(`--bind: destination must be absolute: ${dst}`);
  if (posix.normalize(dst) === "/") throw new ChError(`--bind: destination can't be /: ${spec}`);
  return { src, dst: posix.normalize(dst) };
}

function readEnvFile(path: string, nul: boolean): Assignment[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw sysError(`can't open: ${path}`, e);
  }
  return parseEnvFile(text, path, nul);
}

function parse(argv: string[]): Parsed | number {
  const p = parseArgs(argv, SPECS, 1);
  const o: RunOptions = defaultRunOptions();
  let storage: string | null = null;
  let mount: string | null = null;
  let join = null as Parsed["join"];
  let joinPid: number | null = null;
  let unsafe = false;
  let quiet = 0;
  const hv = helpOrVersion(p, {
    name: "ch-run",
    usage: "[OPTION...] IMAGE -- COMMAND [ARG...]",
    summary: "Run a command in a Charliecloud container.",
    specs: SPECS,
    trailer:
      "Example:\n\n  $ ch-run /data/foo -- echo hello\n  hello\n\nYou cannot use this program to actually change your UID.",
  });
  if (hv !== null) return hv;
  for (const { name, value } of p.opts) {
    const v = value ?? "";
    switch (name) {
      case "feature":
        if (!(v in FEATURES)) throw new ChError(`unknown feature: ${v}`);
        return FEATURES[v] ? 0 : 1;
      case "bind":
        o.binds.push(parseBind(v));
        break;
      case "cd":
        o.cd = v;
        break;
      case "env-no-expand":
        o.envNoExpand = true;
        break;
      case "gid":
        o.gid = parseId("gid", v);
        break;
      case "uid":
        o.uid = parseId("uid", v);
        break;
      case "home":
        o.home = true;
        break;
      case "mount":
        if (!v) throw new ChError("--mount: mount point can't be empty string");
        mount = v;
        break;
      case "no-passwd":
        o.noPasswd = true;
        break;
      case "private-tmp":
        o.privateTmp = true;
        break;
      case "quiet":
        quiet++;
        break;
      case "verbose":
        o.verbosity++;
        break;
      case "set-env":
      case "set-env0": {
        const nul = name === "set-env0";
        let op: EnvOp;
        if (value === null) op = { kind: "image-file", path: "/ch/environment", nul };
        else if (v.includes("=")) op = { kind: "set", vars: [parseAssignment(v, v)] };
        else op = { kind: "set", vars: readEnvFile(v, nul) };
        o.env.push(op);
        break;
      }
      case "unset-env":
        if (!v) throw new ChError("--unset-env: GLOB must have non-zero length");
        o.env.push({ kind: "unset", glob: v });
        break;
      case "storage":
        storage = v;
        break;
      case "unsafe":
        unsafe = true;
        break;
      case "write":
        o.write = true;
        break;
      case "write-fake":
        o.writeFake = value ?? DEFAULT_WRITE_FAKE_SIZE;
        break;
      case "join":
        join ??= { count: null, tag: null };
        break;
      case "join-ct":
        join = { count: parseId("join-ct", v), tag: join?.tag ?? null };
        if (join.count === 0) throw new ChError("--join-ct: must be at least 1: 0");
        break;
      case "join-tag":
        join = { count: join?.count ?? null, tag: v };
        break;
      case "join-pid":
        joinPid = parseId("join-pid", v);
        break;
    }
  }
  if (quiet && o.verbosity) throw new ChError("--quiet incompatible with --verbose");
  if (quiet > 3) throw new ChError("--quiet can be specified at most thrice");
  if (o.verbosity > 3) throw new ChError("--verbose can be specified at most thrice");
  if (quiet) o.verbosity = -quiet;
  if (p.positionals.length < 1)
    throw new ChError("IMAGE and COMMAND not specified (usage: ch-run [OPTION...] IMAGE -- COMMAND [ARG...])");
  if (p.positionals.length < 2) throw new ChError(`no COMMAND specified after IMAGE ${p.positionals[0]} (missing "-- COMMAND"?)`);
  const [image, ...cmd] = p.positionals;
  o.argv = cmd;
  if (o.write && o.writeFake !== null) throw new ChError("--write and --write-fake are mutually exclusive");
  if (join && joinPid !== null) throw new ChError("--join-pid and --join are mutually exclusive");
  return { opts: o, image, storage, unsafe, mount, join, joinPid };
}

type Image = { kind: "dir"; root: string } | { kind: "squash"; file: string };

/** Finds the image: a name in storage first, then a path. */
function findImage(image: string, storage: string, write: boolean, unsafe: boolean): Image {
  const byName = imagePath(storage, image);
  if (statSync(byName, { throwIfNoEntry: false })?.isDirectory()) {
    if (write && !unsafe) throw new ChError(`--write invalid when running by name: ${image}`);
    return { kind: "dir", root: realpathSync(byName) };
  }
  const st = statSync(image, { throwIfNoEntry: false });
  if (!st) throw new ChError(`can't find image: ${image}`, { errno: 2 });
  if (st.isDirectory()) {
    const root = realpathSync(image);
    const img = `${storage}/img/`;
    if (!unsafe && `${root}/`.startsWith(img)) throw new ChError("can't run directory images from storage (hint: run by name)");
    return { kind: "dir", root };
  }
  const magic = Buffer.alloc(4);
  try {
    const fd = openSync(image, "r");
    readSync(fd, magic, 0, 4, 0);
    closeSync(fd);
  } catch (e) {
    throw sysError(`can't read image: ${image}`, e);
  }
  if (magic.toString("latin1") === MAGIC) return { kind: "squash", file: image };
  throw new ChError(`unknown image type: ${image}`);
}

export async function main(argv: string[]): Promise<number> {
  const parsed = parse(argv);
  if (typeof parsed === "number") return parsed;
  await loadLibc();
  const { opts, image, unsafe } = parsed;
  const euid = process.geteuid?.() ?? 0;
  const egid = process.getegid?.() ?? 0;
  const c = libc();
  const user = process.env.USER || c.getpwuid(euid)?.name;
  if (!user) throw new ChError("$USER not set and UID not found");
  const storage = storageDir(parsed.storage, process.env, user);
  const found = findImage(image, storage, opts.write, unsafe);
  const squash = found.kind === "squash" ? prepareSquash(found.file, parsed.mount, storage) : null;
  const root = squash ? squash.mnt : (found as { root: string }).root;
  // The image as ch-run sees it: a SquashFS image only inside the container's namespaces.
  let fs = realFs;
  let seen = root;
  const warnings: string[] = [];
  if (!squash && parsed.mount !== null) warnings.push("--mount invalid with directory image, ignoring");
  const nullFds = opts.verbosity <= -2 ? (opts.verbosity <= -3 ? [1, 2] : [1]) : [];
  const say = (s: string) => opts.verbosity >= 1 && process.stderr.write(`ch-run[${process.pid}]: ${s}\n`);
  /** Prints a plan's warnings (and steps, with -v), then adds it to the child's program. */
  const run = (p: Plan, b: ProgramBuilder, beforeExec: () => void) => {
    if (opts.verbosity >= 0) for (const w of [...warnings, ...p.warnings]) warn(w);
    for (const l of p.log) say(l);
    for (const op of p.ops) say(describeOp(op));
    execute(p.ops.slice(0, -1), b);
    beforeExec();
    execute(p.ops.slice(-1), b);
  };
  /** Runs the command in the container of process `target` (a --join peer). */
  const joinContainer = (target: number, peers: Peers | null): never => {
    say(`joining namespaces of pid ${target}`);
    try {
      return launchJoined({
        target,
        nullFds,
        ownFds: peers?.fds(),
        ready: peers ? () => peers.leave() : undefined,
        build: (b, beforeExec) =>
          run(planJoin(opts, { env: process.env, user, fs: realFs }, `/proc/${target}/root`), b, beforeExec),
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
  try {
    launch({
      euid,
      egid,
      nullFds,
      prepare: squash
        ? (pid) => {
            mountSquash(pid, squash);
            fs = prefixedFs(realFs, root, `/proc/${pid}/root`);
            seen = `/proc/${pid}/root${root}`;
          }
        : undefined,
      build(b, beforeExec) {
        const flags = c.mountFlags(seen);
        if (squash) say(`SquashFS ${squash.file} mounted at ${root}`);
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
        });
        run(p, b, beforeExec);
      },
      ownFds: first?.fds(),
      // The first peer's command starts at once; its holder keeps the container for the others.
      ready: first ? (pid) => first.publish(pid) : undefined,
    });
  } catch (e) {
    peers?.abort();
    throw e;
  }
}
