// Starts a container: clone(2) a child in new user and mount namespaces that runs a prepared
// program in the native launcher, write its ID maps from outside, let it go, and learn from a
// pipe whether setup failed. Then ch-run replaces itself with the native waiter, which holds
// no Node heap while the command runs, forwards signals and exits with the command's status.
import { writeFileSync } from "node:fs";
import { hostArch } from "./arch.ts";
import { ChError, sysError } from "./errors.ts";
import { inheritedFds } from "./fds.ts";
import { LibcError, libc, PROT_EXEC, PROT_READ } from "./libc.ts";
import { blobs } from "./native/blobs.ts";
import { OP_SUPERVISE, ProgramBuilder, relocate } from "./program.ts";
import { CLONE_NEWNS, CLONE_NEWUSER, SIGCHLD } from "./syscalls.ts";

const O_CLOEXEC = 0o2000000;
const SIG_BLOCK = 0;
const PAGE = 4096;
const STACK = 64 * 1024;

/** Signals ch-run forwards: all but those that can't be blocked or mean a fault of its own
 * (ILL TRAP BUS FPE KILL SEGV STOP SYS) and glibc's two internal ones (32, 33). */
export function forwardedSignals(): number[] {
  const skip = new Set([4, 5, 7, 8, 9, 11, 19, 31, 32, 33]);
  return Array.from({ length: 64 }, (_, i) => i + 1).filter((s) => !skip.has(s));
}

export function forwardedMask(): bigint {
  return forwardedSignals().reduce((m, s) => m | (1n << BigInt(s - 1)), 0n);
}

/** Signals Node ignores (SIGPIPE, SIGXFSZ): they stay ignored in ch-run, so that its own writes
 * raise none; the command gets them back at their default, like every forwarded signal. */
const NODE_IGNORED = new Set([13, 25]);

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

export interface LaunchSpec {
  /** Host IDs to map to root in the container's outer user namespace. */
  euid: number;
  egid: number;
  /** Descriptors to point at /dev/null for the command (ch-run -qq, -qqq). */
  nullFds: number[];
  /** Runs once the container's namespaces exist and before its setup is planned, e.g. to mount
   * a SquashFS image inside them. */
  prepare?(pid: number): void;
  /** Adds the setup steps, then calls beforeExec(), then adds the execve(2) step. */
  build(b: ProgramBuilder, beforeExec: () => void): void;
  /** Runs once the container is set up, before its command starts (ch-run --join). */
  ready?(pid: number): void;
  /** Descriptors ch-run opened for itself before launching (--join's): not for the command. */
  ownFds?: number[];
}

/** The largest second-stage program (the setup planned after clone). */
const STAGE2_MAX = 16 << 20;

/** Maps the launcher's code, a program and a stack; returns the entry and the addresses. */
export function mapProgram(b: ProgramBuilder) {
  const c = libc();
  const native = blobs[b.arch];
  const code = Buffer.from(native.launcher, "base64");
  const codeSize = roundUp(code.length, PAGE);
  let prog = b.layout();
  const mem = c.mmap(codeSize + roundUp(prog.bytes.length, 16) + STACK);
  const mapping = { address: mem.address, size: roundUp(mem.size, PAGE) };
  if (b.ownMapping === null && b.ops.some((o) => o.nr === OP_SUPERVISE)) {
    b.ownMapping = mapping;
    prog = b.layout(); // the same size: only its values changed
  }
  const progAddr = mem.address + BigInt(codeSize);
  relocate(prog.bytes, prog.relocs, progAddr);
  c.poke(mem, 0, code);
  c.poke(mem, codeSize, prog.bytes);
  c.mprotect(mem, 0, codeSize, PROT_READ | PROT_EXEC);
  return {
    entry: mem.address + BigInt(native.launcherEntry),
    handler: mem.address + BigInt(native.forwardEntry),
    stackTop: mem.address + BigInt(mem.size),
    progAddr,
    mapping,
  };
}

/** Reads the child's report: nothing if its program reached the end of its setup (index -1) or
 * execve(2) (end of file); else throws the failed step's error, once the child is reaped. */
function checkReport(repR: number, pid: number, ops: ProgramBuilder["ops"]): void {
  const c = libc();
  const report = new Uint8Array(16);
  const n = c.read(repR, report);
  c.close(repR);
  if (n !== 16) return;
  const dv = new DataView(report.buffer);
  const index = Number(dv.getBigInt64(0, true));
  if (index === -1) return;
  const errno = Number(dv.getBigInt64(8, true));
  const status = c.waitpid(pid);
  const op = ops[index];
  throw new ChError(op?.why.what ?? `setup step ${index} failed`, { errno, exit: (status >> 8) & 0xff, at: op?.at });
}

/** Runs the container; returns only if setup failed (throws) or never (exec into waiter).
 *
 * The child's first program only waits for the go-ahead, then maps and runs a second program
 * from a memfd: ch-run plans the setup once the namespaces exist, so that it can look inside
 * them (a SquashFS image mounted there by prepare()). */
export function launch(spec: LaunchSpec): never {
  const c = libc();
  const arch = hostArch();
  const inherited = inheritedFds().filter((fd) => !spec.ownFds?.includes(fd)); // before this function opens its own
  const [syncR, syncW] = c.pipe2(O_CLOEXEC);
  const [repR, repW] = c.pipe2(O_CLOEXEC);
  const [gateR, gateW] = c.pipe2(O_CLOEXEC);
  const stage2 = c.memfdCreate("ch-run-setup");
  const stage2Addr = c.mmap(STAGE2_MAX).address; // reserved here; the child maps over it

  const b1 = new ProgramBuilder(arch);
  b1.reportFd = repW;
  b1.prologue(syncR, syncW, gateW);
  b1.runStage2(stage2, stage2Addr, STAGE2_MAX);
  const m = mapProgram(b1);

  holdSignals(m.handler);
  let pid: number;
  try {
    pid = c.clone(m.entry, m.stackTop, CLONE_NEWUSER | CLONE_NEWNS | SIGCHLD, m.progAddr);
  } catch (e) {
    if (!(e instanceof LibcError)) throw e;
    throw new ChError("can't create the container's user namespace (ch-checkns says what blocks it)", { errno: e.errno });
  }
  c.close(syncR);
  c.close(repW);
  c.close(gateR);

  const b2 = new ProgramBuilder(arch);
  try {
    try {
      writeFileSync(`/proc/${pid}/setgroups`, "deny");
      writeFileSync(`/proc/${pid}/uid_map`, `0 ${spec.euid} 1\n`);
      writeFileSync(`/proc/${pid}/gid_map`, `0 ${spec.egid} 1\n`);
    } catch (e) {
      throw sysError("can't write ID maps for the container's user namespace (are unprivileged user namespaces enabled?)", e);
    }
    spec.prepare?.(pid);
    b2.reportFd = repW;
    b2.indexBase = b1.ops.length;
    b2.ownMapping = m.mapping; // the second stage runs on the first's code and stack
    spec.build(b2, () => b2.beforeExec(forwardedSignals(), [0, 1, 2, ...inherited], spec.nullFds, gateR));
    const bytes = b2.serialize(stage2Addr);
    if (bytes.length > STAGE2_MAX) throw new ChError(`container setup too large (${bytes.length} bytes; environment too big?)`);
    c.writeAll(stage2, bytes);
  } catch (e) {
    c.kill(pid, 9);
    c.waitpid(pid);
    throw e;
  }
  c.write(syncW, new Uint8Array([103]));
  c.close(syncW);
  checkReport(repR, pid, [...b1.ops, ...b2.ops]);
  // The mappings stay: they hold the signal handler until the exec below discards it all.

  handOver(pid, gateW, spec.ready);
}

/** Runs the caller's last step (if it fails, the child dies with it), then becomes the waiter. */
function handOver(pid: number, gateW: number, ready?: (pid: number) => void): never {
  try {
    ready?.(pid);
  } catch (e) {
    libc().kill(pid, 9);
    libc().waitpid(pid);
    throw e;
  }
  becomeWaiter(pid, gateW);
}

/** Signals stay pending from here until the waiter forwards them: the main thread blocks them,
 * and the native handler sends any that reach Node's other threads on to the main thread. */
function holdSignals(handler: bigint): void {
  const c = libc();
  for (const sig of forwardedSignals()) if (!NODE_IGNORED.has(sig)) c.sigaction(sig, handler);
  c.sigmask(SIG_BLOCK, forwardedMask());
}

/** Setup is done and the child waits at the gate. Become the waiter, which opens it: the command
 * starts only once nothing of Node is left to catch its signals. (The child prints an execve(2)
 * failure itself.) */
function becomeWaiter(pid: number, gateW: number): never {
  const c = libc();
  try {
    const fd = c.memfd("ch-run-waiter", Buffer.from(blobs[hostArch()].waiter, "base64"));
    c.keepOnExec(gateW);
    c.execFd(fd, [process.argv0 || "ch-run", String(pid), String(gateW)], []);
  } catch (e) {
    if (!(e instanceof LibcError)) throw e;
  }
  // No waiter (memfd or execveat refused): open the gate and wait here instead.
  c.write(gateW, new Uint8Array([103]));
  const st = c.waitpid(pid);
  process.exit(st & 0x7f ? 128 + (st & 0x7f) : (st >> 8) & 0xff);
}

export interface JoinSpec {
  /** A process in the container to join (its command). */
  target: number;
  nullFds: number[];
  /** Adds the steps after joining (chdir), then calls beforeExec(), then adds execve(2). */
  build(b: ProgramBuilder, beforeExec: () => void): void;
  /** Runs once the child has joined and waits at the gate. */
  ready?(pid: number): void;
  /** Descriptors ch-run opened for itself: not for the command. */
  ownFds?: number[];
}

/** Runs a command in an existing container's namespaces (ch-run --join peers); returns only
 * if joining failed (throws). */
export function launchJoined(spec: JoinSpec): never {
  const c = libc();
  const arch = hostArch();
  const inherited = inheritedFds().filter((fd) => !spec.ownFds?.includes(fd));
  const [repR, repW] = c.pipe2(O_CLOEXEC);
  const [gateR, gateW] = c.pipe2(O_CLOEXEC);
  const b = new ProgramBuilder(arch);
  b.reportFd = repW;
  b.op(b.nr.close, [gateW], { what: "can't close gate pipe" });
  b.joinContainer(spec.target);
  spec.build(b, () => b.beforeExec(forwardedSignals(), [0, 1, 2, ...inherited], spec.nullFds, gateR));
  const m = mapProgram(b);
  holdSignals(m.handler);
  const pid = c.clone(m.entry, m.stackTop, SIGCHLD, m.progAddr);
  c.close(repW);
  c.close(gateR);
  checkReport(repR, pid, b.ops);
  handOver(pid, gateW, spec.ready);
}

/** Starts a program inside the namespaces of process `target` (its user namespace, then its
 * mount namespace), as a child of this process that dies with it; returns its PID once
 * execve(2) succeeded. For FUSE servers that must mount inside a container. With `detach`, it
 * lives on in a session of its own: detach() gets its PID first, to hand it to someone who ends
 * it should this process die (it dies with this process until detach() has returned). */
export function spawnInNamespaces(
  target: number,
  path: string,
  argv: string[],
  envp: string[],
  detach: ((pid: number) => void) | null = null,
): number {
  const c = libc();
  const [repR, repW] = c.pipe2(O_CLOEXEC);
  const [goR, goW] = detach ? c.pipe2(O_CLOEXEC) : [-1, -1];
  const b = new ProgramBuilder(hostArch());
  b.reportFd = repW;
  b.execMessages = false; // this process reads the report until execve(2) succeeds
  b.joinNamespaces(target);
  if (detach) b.detachWhenTold(goR, goW);
  b.execve([path], argv, envp, { what: `can't execute ${path} in the container's namespaces` });
  const m = mapProgram(b);
  const pid = c.clone(m.entry, m.stackTop, SIGCHLD, m.progAddr);
  c.close(repW);
  if (detach) {
    c.close(goR);
    try {
      detach(pid);
    } catch (e) {
      c.kill(pid, 9);
      c.waitpid(pid);
      c.close(repR);
      c.close(goW);
      throw e;
    }
    try {
      c.write(goW, new Uint8Array([103]));
    } catch {} // it failed before: its report says why
    c.close(goW);
  }
  checkReport(repR, pid, b.ops);
  return pid;
}

/** A join holder (native/holder.c), started before ch-run touches the group's files. */
export interface Holder {
  /** Descriptors of ours that talk to it. */
  readonly fds: number[];
  /** First peer, under the group's lock: the holder opens the group's files (these inodes) and
   * takes the shared lock that keeps the group live. */
  claim(lockIno: bigint, sharedIno: bigint): void;
  /** A detached squashfuse for the container, which the holder kills if ch-run dies or fails
   * before hold(). */
  guard(fusePid: number): void;
  /** Sends the container's PID; returns the holder's once it is in the container's namespaces. */
  hold(containerPid: number): number;
  /** Not needed (a peer that joins, a group of one): it exits. */
  quit(): void;
}

const QUIT = 0n;
const CLAIM = 1n;
const HOLD = 2n;
const FUSE = 3n;
const HOLDER_STEPS = [
  "open the group's lock file",
  "open the group's shared file",
  "find the group's files (changed meanwhile)",
  "lock the group's shared file",
];
const HOLD_STEPS = [
  "open the user namespace of",
  "find the parent user namespace of",
  "join the outer user namespace of",
  "open the mount namespace of",
  "join the mount namespace of",
  "join the user namespace of",
];

/** Starts the join holder for a --join group whose files are in directory `dirFd`, detached
 * (it is not our child and outlives us); it keeps the container joinable for `holdMs` once
 * hold() gave it the container. */
export function spawnHolder(dirFd: number, lockName: string, sharedName: string, holdMs: number): Holder {
  const c = libc();
  const arch = hostArch();
  const F_SETFD = 2;
  const AT_EMPTY_PATH = 0x1000;
  const open = new Set<number>();
  const pipe = () => {
    const fds = c.pipe2(O_CLOEXEC);
    for (const fd of fds) open.add(fd);
    return fds;
  };
  const close = (...fds: number[]) => {
    for (const fd of fds) if (open.delete(fd)) c.close(fd);
  };
  let ctlW = -1;
  let ansR = -1;
  try {
    const [repR, repW] = pipe();
    const [ctlR, ctlW_] = pipe();
    const [ansR_, ansW] = pipe();
    ctlW = ctlW_;
    ansR = ansR_;
    const exe = c.memfd("ch-run-holder", Buffer.from(blobs[arch].holder, "base64"));
    open.add(exe);
    const b = new ProgramBuilder(arch);
    b.reportFd = repW;
    const why = { what: "join: can't start the namespace holder" };
    const passed = [dirFd, ctlR, ansW];
    for (const fd of passed) b.op(b.nr.fcntl, [fd, F_SETFD, 0], why);
    const argv = [
      process.argv0 || "ch-run",
      "join-holder",
      String(Math.ceil(holdMs)),
      ...passed.map(String),
      lockName,
      sharedName,
    ];
    b.op(b.nr.execveat, [exe, { str: "" }, { strs: argv }, { strs: [] }, AT_EMPTY_PATH], why);
    const m = mapProgram(b);
    // Like posix_spawn(3): the child shares our memory until its execve(2) (no copy of Node's
    // page tables: the holder starts in a fraction of the time), with every signal blocked so
    // that no handler of ours runs in it.
    const CLONE_VM = 0x100;
    const CLONE_VFORK = 0x4000;
    const SIG_SETMASK = 2;
    const mask = c.sigmask(SIG_BLOCK, (1n << 64n) - 1n);
    let pid: number;
    try {
      pid = c.clone(m.entry, m.stackTop, CLONE_VM | CLONE_VFORK | SIGCHLD, m.progAddr);
    } finally {
      c.sigmask(SIG_SETMASK, mask);
    }
    close(repW, ctlR, ansW, exe);
    open.delete(repR); // checkReport closes it
    checkReport(repR, pid, b.ops);
    const st = c.waitpid(pid); // the intermediate, which exits once the holder is detached
    if (st !== 0) throw new ChError(`join: can't start the namespace holder (it exited with status ${(st >> 8) & 0xff})`);
  } catch (e) {
    close(...open);
    throw e;
  }
  /** Sends a request; returns the answer's value, or throws naming the failed step. */
  const ask = (req: bigint, a: bigint, b: bigint, steps: string[], what: string): number => {
    const answer = new Uint8Array(8);
    let n = 0;
    try {
      c.write(ctlW, new Uint8Array(new BigInt64Array([req, a, b]).buffer));
      n = c.read(ansR, answer);
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
    }
    const [errno, value] = new Int32Array(answer.buffer); // value: the failed step, else the answer
    if (n !== 8) throw new ChError("join: the namespace holder died");
    if (errno) throw new ChError(`join: the namespace holder can't ${steps[value - 1] ?? "go on"}${what}`, { errno });
    return value;
  };
  const done = () => close(ctlW, ansR);
  return {
    fds: [ctlW, ansR],
    claim(lockIno: bigint, sharedIno: bigint): void {
      try {
        ask(CLAIM, lockIno, sharedIno, HOLDER_STEPS, "");
      } catch (e) {
        done();
        throw e;
      }
    },
    guard(fusePid: number): void {
      ask(FUSE, BigInt(fusePid), 0n, ["find squashfuse"], ` PID ${fusePid}`);
    },
    hold(containerPid: number): number {
      try {
        return ask(HOLD, BigInt(containerPid), 0n, HOLD_STEPS, ` PID ${containerPid}`);
      } finally {
        done();
      }
    },
    quit(): void {
      if (open.has(ctlW)) {
        try {
          c.write(ctlW, new Uint8Array(new BigInt64Array([QUIT, 0n, 0n]).buffer));
        } catch {} // gone already
      }
      done();
    },
  };
}
