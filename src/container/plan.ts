// Plan, then execute: a pure function from the options and the host's facts to the list of
// operations that make the container. Nothing here touches the system; execute.ts runs a plan.
import { posix } from "node:path";
import { ChError } from "../sys/errors.ts";
import type { Group, Passwd } from "../sys/libc.ts";
import { ContainerView } from "./binds.ts";
import { buildEnv, commandEnv, type EnvOp, type EnvRecipe, pmixHashEnv } from "./env.ts";
import type { HostFs } from "./hostfs.ts";
import { Mounts } from "./mounts.ts";
import { groupFile, passwdFile } from "./passwd.ts";
import { pmixServerDir, pmixStep } from "./pmix.ts";
import { notifyKernel } from "./seccomp.ts";
import { argvToString } from "./syslog.ts";

export interface Bind {
  src: string;
  dst: string;
}

export interface RunOptions {
  argv: string[];
  binds: Bind[];
  cd: string | null;
  uid: number | null;
  gid: number | null;
  home: boolean;
  noPasswd: boolean;
  privateTmp: boolean;
  write: boolean;
  /** -W: tmpfs size for the overlay, or null. */
  writeFake: string | null;
  env: EnvOp[];
  envNoExpand: boolean;
  verbosity: number;
  /** --seccomp: root emulation (seccomp.ts) installed before execve(2). */
  seccomp: boolean;
  /** ch-image build's RUN (internal): the image root is an overlay of these layers, mounted at
   * the image path (an empty directory), instead of the image directory itself. */
  layers: OverlayLayers | null;
}

/** An overlay root: read-only lower directories (top first), a writable upper directory and
 * overlayfs's work directory beside it (same file system). */
export interface OverlayLayers {
  lower: string[];
  upper: string;
  work: string;
}

/** Characters overlayfs's option string can't take in a layer path unescaped (",", ":", "\\")
 * and what a page-sized option string allows: a longer list must be squashed first. */
export const OVERLAY_OPTIONS_MAX = 4000;

/** overlayfs's mount options for an overlay root or -W. */
export function overlayOptions(lower: string[], upper: string, work: string): string {
  for (const p of [...lower, upper, work])
    if (/[,:\\\n]/.test(p)) throw new ChError(`can't use as an overlay layer (",", ":" or "\\" in its path): ${p}`);
  const o = `lowerdir=${lower.join(":")},upperdir=${upper},workdir=${work},userxattr,volatile`;
  if (o.length > OVERLAY_OPTIONS_MAX) throw new ChError(`too many overlay layers for one mount: ${lower.length}`);
  return o;
}

/** ch-run's defaults: what no option changes. */
export function defaultRunOptions(argv: string[] = []): RunOptions {
  return {
    argv,
    binds: [],
    cd: null,
    uid: null,
    gid: null,
    home: false,
    noPasswd: false,
    privateTmp: false,
    write: false,
    writeFake: null,
    env: [],
    envNoExpand: false,
    verbosity: 0,
    seccomp: false,
    layers: null,
  };
}

export interface HostFacts {
  euid: number;
  egid: number;
  /** $USER, or the invoking user's name. */
  user: string;
  env: Record<string, string | undefined>;
  /** Host working directory, to make relative bind sources absolute. */
  cwd: string;
  /** The image directory (real path) and its file system's mount flags (MS_NOSUID etc.). */
  image: { root: string; mountFlags: number; readOnly: boolean };
  passwd(uid: number): Passwd | null;
  group(gid: number): Group | null;
  fs: HostFs;
  /** The kernel's release (uname -r), for what --seccomp can do; unknown: assume a recent one. */
  kernel?: string;
}

export type Op =
  | { op: "private" }
  | { op: "bind"; src: string; dst: string; what: string }
  | { op: "tmpfs"; dst: string; options: string; what: string }
  | { op: "overlay"; lower: string; upper: string; work: string; dst: string; what?: string }
  | { op: "mkdir"; path: string; what: string }
  | { op: "file"; path: string; content: string; what: string }
  | { op: "umount"; path: string }
  | { op: "remount-ro"; path: string; flags: number }
  | { op: "pivot"; root: string }
  | { op: "userns"; uid: number; gid: number }
  | { op: "chdir"; path: string }
  /** notify: with the supervisor that fakes POSIX ACLs; warn: its fallback warning printed. */
  | { op: "seccomp"; notify: boolean; warn: boolean }
  | { op: "exec"; candidates: string[]; argv: string[]; env: string[] };

export interface Plan {
  ops: Op[];
  warnings: string[];
  /** Lines for -v. */
  log: string[];
  /** How the exec step's environment was made from the host's (plan() only). */
  env?: EnvRecipe;
}

export type { EnvRecipe };

export const DEFAULT_WRITE_FAKE_SIZE = "12%";

// statvfs f_flag bits and the mount(2) flags a read-only bind remount must keep.
const KEEP_FLAGS: [number, number][] = [
  [2, 0x2], // ST_NOSUID -> MS_NOSUID
  [4, 0x4], // ST_NODEV -> MS_NODEV
  [8, 0x8], // ST_NOEXEC -> MS_NOEXEC
  [1024, 0x400], // ST_NOATIME -> MS_NOATIME
  [2048, 0x800], // ST_NODIRATIME -> MS_NODIRATIME
  [4096, 0x200000], // ST_RELATIME -> MS_RELATIME
];

export function lockedMountFlags(statvfsFlags: number): number {
  let f = 0;
  for (const [st, ms] of KEEP_FLAGS) if (statvfsFlags & st) f |= ms;
  // Neither noatime nor relatime: strictatime, which a remount must then ask for explicitly
  // (the kernel's default is relatime, and a user namespace may not change a locked atime mode).
  if (!(statvfsFlags & (1024 | 4096))) f |= 0x1000000; // MS_STRICTATIME
  return f;
}

/** execvp(3)'s candidates for a command name under a PATH. */
export function execCandidates(cmd: string, path: string | undefined): string[] {
  if (cmd.includes("/")) return [cmd];
  const dirs = (path ?? "/bin:/usr/bin").split(":");
  return dirs.map((d) => (d === "" ? cmd : posix.join(d, cmd)));
}

export function plan(o: RunOptions, h: HostFacts): Plan {
  const ops: Op[] = [];
  const warnings: string[] = [];
  const log: string[] = [];
  const uid = o.uid ?? h.euid;
  const gid = o.gid ?? h.egid;
  const img = h.image.root;
  const view = new ContainerView(img, h.fs);
  const m = new Mounts(ops, view, h.fs, img);
  const hostTmp = posix.resolve(h.cwd, h.env.TMPDIR || "/tmp");

  log.push(`image: ${img}`, `container uid: ${uid}`, `container gid: ${gid}`, `host $TMPDIR: ${hostTmp}`);

  // Our own mount namespace, and the image as a mount of its own (pivot_root(2) needs one):
  // bound to itself, or the overlay of a build's layers mounted there (the caller's h.fs then
  // shows the layers merged, see hostfs.ts's layeredFs()).
  ops.push({ op: "private" });
  if (o.layers) {
    const { lower, upper, work } = o.layers;
    if (lower.length === 0) throw new ChError("overlay root: no lower layer");
    overlayOptions(lower, upper, work); // checked now, not at mount(2)
    ops.push({
      op: "overlay",
      lower: lower.join(":"),
      upper,
      work,
      dst: img,
      what: `can't mount build layers at ${img} (overlayfs with userxattr needs Linux 5.11 or later)`,
    });
    log.push(`image: overlay of ${lower.length} layer(s) + ${upper}`);
  } else ops.push({ op: "bind", src: img, dst: img, what: `can't bind image to itself: ${img}` });

  // A small private tmpfs, mounted where the host's /dev will go, holds the overlay's upper
  // layer for -W and the synthesized passwd and group files; nothing is written on the host.
  const dev = m.required("/dev");
  if (dev.type !== "dir") throw new ChError(`can't bind /dev to ${m.at("/dev")}`, { errno: 20 });
  const stage = posix.join(img, dev.path);
  const staging = !o.noPasswd || o.writeFake !== null;
  if (staging) {
    const size = o.writeFake ?? "1m";
    ops.push({ op: "tmpfs", dst: stage, options: `size=${size},mode=0700`, what: `can't mount tmpfs at ${stage}` });
  }
  if (o.writeFake !== null) {
    const [upper, work, merged] = ["upper", "work", "merged"].map((d) => posix.join(stage, d));
    for (const d of [upper, work, merged]) ops.push({ op: "mkdir", path: d, what: `can't mkdir ${d}` });
    ops.push({ op: "overlay", lower: img, upper, work, dst: merged });
    m.newroot = merged;
    log.push(`overlaying tmpfs for --write-fake (${o.writeFake})`, `newroot updated: ${merged}`);
  }
  const newroot = m.newroot;
  const writable = o.write || o.writeFake !== null;
  m.writable = writable;

  // HOME, then the ID files that use it.
  const homeDir = o.home ? `/home/${h.user}` : view.resolve("/root").type === "dir" ? "/root" : "/";
  if (!o.noPasswd) {
    const ids = { uid, gid, home: homeDir, user: h.passwd(uid), group: h.group(gid) };
    if (!ids.user) log.push(`UID ${uid} not found; using dummy info`);
    if (!ids.group) log.push(`GID ${gid} not found; using dummy info`);
    for (const [name, content] of [
      ["passwd", passwdFile(ids)],
      ["group", groupFile(ids)],
    ]) {
      const tmp = posix.join(stage, name);
      const dst = m.required(`/etc/${name}`).path;
      ops.push({ op: "file", path: tmp, content, what: `can't write ${tmp}` });
      ops.push({ op: "bind", src: tmp, dst: m.at(dst), what: `can't bind ${tmp} to ${m.at(dst)}` });
      m.mounted({ dst, src: null, type: "file" });
    }
  }
  if (staging && o.writeFake === null) ops.push({ op: "umount", path: stage });

  // Host directories and files, /tmp, $HOME (made in the overlay --home implies if need be,
  // beside the image's own /home), then the user's binds in order.
  m.defaults();
  m.tmp(o.privateTmp, hostTmp);
  if (o.home) {
    const hostHome = h.env.HOME;
    if (!hostHome) throw new ChError("--home failed: $HOME not set");
    m.bindMakingDst(posix.resolve(h.cwd, hostHome), hostHome, homeDir);
  }
  for (const b of o.binds) m.bindMakingDst(posix.resolve(h.cwd, b.src), b.src, b.dst);

  // PMIx's shared store (srun --mpi=pmix), at the same path as on the host, or PMIx's
  // per-process store instead (see pmix.ts).
  const pmixDir = pmixServerDir(h.env, h.fs);
  let pmixHash = false;
  if (pmixDir) {
    const step = pmixStep(view, pmixDir, writable);
    if (step.kind === "bind") {
      m.mkdirs(step.mkdirs);
      m.bindHost(step.src, step.dst);
      log.push(`PMIx server directory ${pmixDir}: binding ${step.src}`);
    } else pmixHash = step.kind === "hash";
  }

  // The image read-only, keeping the flags it is mounted with (a user namespace may not
  // clear nosuid, nodev, noexec or atime flags: Charliecloud's "is it on NFS?" failure).
  if (!writable && !h.image.readOnly) ops.push({ op: "remount-ro", path: newroot, flags: lockedMountFlags(h.image.mountFlags) });

  ops.push({ op: "pivot", root: newroot });
  ops.push({ op: "userns", uid, gid });

  // Environment, working directory, command.
  const recipe: EnvRecipe = {
    home: homeDir,
    ops: o.env,
    expand: !o.envNoExpand,
    pmixHash,
    files: o.env.flatMap((e): [string, string | null][] => {
      if (e.kind !== "image-file") return [];
      const r = view.resolve(e.path);
      return [[e.path, r.host && r.type === "file" ? r.host : null]];
    }),
  };
  const env = commandEnv(recipe, h.env, (f) => h.fs.readFile(f));
  warnings.push(...env.warnings);
  log.push(...env.log);
  if (pmixHash) pmixLog(log, pmixDir as string, env.pmix);
  if (o.cd !== null) ops.push({ op: "chdir", path: posix.resolve("/", o.cd) }); // else / from the pivot
  const envp = [...env.env].map(([k, v]) => `${k}=${v}`);
  const candidates = execCandidates(o.argv[0], env.env.get("PATH"));
  if (o.seccomp) ops.push(seccompOp(o, h.kernel, warnings));
  ops.push({ op: "exec", candidates, argv: o.argv, env: envp });
  log.push(`executing: ${argvToString(o.argv)}`);
  return { ops, warnings, log, env: recipe };
}

/** A --join peer's plan: the first peer set the container up, so only the environment, the
 * working directory and the command remain. `root` is the container's root as the host sees
 * it (/proc/PID/root). */
export function planJoin(o: RunOptions, h: Pick<HostFacts, "env" | "user" | "fs" | "kernel">, root: string): Plan {
  const view = new ContainerView(root, h.fs);
  const home = o.home ? `/home/${h.user}` : view.resolve("/root").type === "dir" ? "/root" : "/";
  const env = buildEnv({
    host: h.env,
    home,
    ops: o.env,
    expand: !o.envNoExpand,
    readImageFile: (p) => {
      const r = view.resolve(p);
      return r.host && r.type === "file" ? h.fs.readFile(r.host) : null;
    },
  });
  const log = [...env.log];
  // The first peer made PMIx's directory visible if it could; the container shows whether it did.
  const pmixDir = pmixServerDir(h.env, h.fs);
  if (pmixDir && view.resolve(pmixDir).type !== "dir") pmixLog(log, pmixDir, pmixHashEnv(env.env));
  const ops: Op[] = [];
  const warnings = [...env.warnings];
  if (o.cd !== null) ops.push({ op: "chdir", path: posix.resolve("/", o.cd) });
  if (o.seccomp) ops.push(seccompOp(o, h.kernel, warnings));
  ops.push({
    op: "exec",
    candidates: execCandidates(o.argv[0], env.env.get("PATH")),
    argv: o.argv,
    env: [...env.env].map(([k, v]) => `${k}=${v}`),
  });
  log.push(`executing: ${argvToString(o.argv)}`);
  return { ops, warnings, log };
}

/** --seccomp's step: with the supervisor that fakes POSIX ACLs if the kernel can run it (else a
 * warning now); its own warning, should the kernel refuse it after all, unless -qq. */
function seccompOp(o: RunOptions, kernel: string | undefined, warnings: string[]): Op {
  const notify = kernel === undefined || notifyKernel(kernel);
  if (!notify)
    warnings.push(
      `--seccomp: Linux ${kernel} can't fake POSIX ACLs (needs 5.9 or later): setting them fails as without --seccomp`,
    );
  return { op: "seccomp", notify, warn: o.verbosity >= -1 };
}

function pmixLog(log: string[], dir: string, set: string | null): void {
  log.push(
    set
      ? `PMIx server directory ${dir} not in the container: ${set} (PMIx keeps job data per process)`
      : `PMIx server directory ${dir} not in the container; $PMIX_MCA_gds already set`,
  );
}
