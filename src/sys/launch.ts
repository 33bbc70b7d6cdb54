// Starts a container: clone(2) a child in new user and mount namespaces that runs a prepared
// program in the native launcher, write its ID maps from outside, let it go, and learn from a
// pipe whether setup failed. Then ch-run replaces itself with the native waiter, which holds
// no Node heap while the command runs, forwards signals and exits with the command's status.
import { writeFileSync } from "node:fs";
import { hostArch } from "./arch.ts";
import { ChError } from "./errors.ts";
import { inheritedFds } from "./fds.ts";
import { LibcError, libc, PROT_EXEC, PROT_READ } from "./libc.ts";
import { blobs } from "./native/blobs.ts";
import { ProgramBuilder, relocate } from "./program.ts";
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
  /** Adds the setup steps to the child's program. */
  setup(b: ProgramBuilder): void;
  /** Adds the execve(2) step. */
  exec(b: ProgramBuilder): void;
  /** Descriptors to point at /dev/null for the command (ch-run -qq, -qqq). */
  nullFds: number[];
  /** Host IDs to map to root in the container's outer user namespace. */
  euid: number;
  egid: number;
}

/** Runs the container; returns only if setup failed (throws) or never (exec into waiter). */
export function launch(spec: LaunchSpec): never {
  const c = libc();
  const arch = hostArch();
  const native = blobs[arch];
  const code = Buffer.from(native.launcher, "base64");
  const [syncR, syncW] = c.pipe2(O_CLOEXEC);
  const [repR, repW] = c.pipe2(O_CLOEXEC);

  const b = new ProgramBuilder(arch);
  b.reportFd = repW;
  b.prologue(syncR, syncW);
  spec.setup(b);
  b.beforeExec(forwardedSignals(), [0, 1, 2, ...inheritedFds()], spec.nullFds);
  spec.exec(b);

  const codeSize = roundUp(code.length, PAGE);
  const prog = b.layout();
  const mem = c.mmap(codeSize + roundUp(prog.bytes.length, 16) + STACK);
  const progAddr = mem.address + BigInt(codeSize);
  relocate(prog.bytes, prog.relocs, progAddr);
  c.poke(mem, 0, code);
  c.poke(mem, codeSize, prog.bytes);
  c.mprotect(mem, 0, codeSize, PROT_READ | PROT_EXEC);

  // Signals stay pending from here until the waiter forwards them: the main thread blocks them,
  // and the native handler sends any that reach Node's other threads on to the main thread.
  const handler = mem.address + BigInt(native.forwardEntry);
  for (const sig of forwardedSignals()) if (!NODE_IGNORED.has(sig)) c.sigaction(sig, handler);
  c.sigmask(SIG_BLOCK, forwardedMask());
  const stackTop = mem.address + BigInt(mem.size);
  const pid = c.clone(mem.address + BigInt(native.launcherEntry), stackTop, CLONE_NEWUSER | CLONE_NEWNS | SIGCHLD, progAddr);
  c.close(syncR);
  c.close(repW);

  try {
    writeFileSync(`/proc/${pid}/setgroups`, "deny");
    writeFileSync(`/proc/${pid}/uid_map`, `0 ${spec.euid} 1\n`);
    writeFileSync(`/proc/${pid}/gid_map`, `0 ${spec.egid} 1\n`);
  } catch (e) {
    c.kill(pid, 9);
    c.waitpid(pid);
    const errno = Math.abs(Number((e as { errno?: number }).errno ?? 0));
    throw new ChError("can't write ID maps for the container's user namespace (are unprivileged user namespaces enabled?)", {
      errno,
    });
  }
  c.write(syncW, new Uint8Array([103]));
  c.close(syncW);

  const report = new Uint8Array(16);
  const n = c.read(repR, report);
  c.close(repR);
  if (n === 16) {
    const dv = new DataView(report.buffer);
    const index = Number(dv.getBigInt64(0, true));
    const errno = Number(dv.getBigInt64(8, true));
    const status = c.waitpid(pid);
    const op = b.ops[index];
    const exit = (status >> 8) & 0xff;
    throw new ChError(op?.why.what ?? `setup step ${index} failed`, { errno, exit, at: op?.at });
  }
  // The mapping stays: it holds the signal handler until the exec below discards it all.

  // The command is running (or its setup died without a word). Become the waiter.
  try {
    const fd = c.memfd("ch-run-waiter", Buffer.from(native.waiter, "base64"));
    c.execFd(fd, [process.argv0 || "ch-run", String(pid)], []);
  } catch (e) {
    if (!(e instanceof LibcError)) throw e;
  }
  // No waiter (memfd or execveat refused): wait here instead.
  const st = c.waitpid(pid);
  process.exit(st & 0x7f ? 128 + (st & 0x7f) : (st >> 8) & 0xff);
}
