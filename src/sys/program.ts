// ProgramBuilder: the real Syscalls. Each call becomes one or more ops of a program that the
// native launcher (native/launcher.c) runs in the clone(2) child. Strings and arrays are laid out
// after the ops; serialize() fixes their addresses once the program's memory is mapped.
import { type Arch, SYSCALLS, type SyscallNumbers } from "./arch.ts";
import { EXIT_ERR, formatError, programName } from "./errors.ts";
import { sourceLocation } from "./sourcemap.ts";
import { CLONE_NEWNS, MNT_DETACH, MS_PRIVATE, MS_REC, type Syscalls, type Why } from "./syscalls.ts";

const AT_FDCWD = -100;
const O_WRONLY = 0o1;
const O_RDWR = 0o2;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const O_CLOEXEC = 0o2000000;
const F_SETFD = 2;
const PR_SET_PDEATHSIG = 1;
const PR_SET_NO_NEW_PRIVS = 38;
const SIG_SETMASK = 2;
const EEXIST = 17;
const SECCOMP_SET_MODE_FILTER = 1;
/** The pseudo-op that installs a supervised seccomp(2) filter (native/supervise.h). */
export const OP_SUPERVISE = -2;

const OP_WORDS = 10;
const HEADER_WORDS = 3;

/** An argument: a number, one known only when the program is laid out, a register, or a pointer
 * to data laid out after the ops: a string, a NULL-terminated array of strings, bytes, or a
 * struct sock_fprog around a filter. */
type Arg =
  | number
  | bigint
  | { late: () => bigint }
  | { str: string }
  | { strs: string[] }
  | { bytes: Uint8Array }
  | { fprog: Uint8Array }
  | { reg: number };

interface Op {
  nr: number;
  args: Arg[];
  dst?: number;
  expect?: number;
  soft?: boolean;
  okErrno?: number;
  /** Messages the child prints itself on failure, by errno (0: any other), for when no one
   * is left to print them (after the hand-over to the waiter). */
  messages?: [number, string][];
  why: Why;
  at: Error;
}

export interface OpOptions {
  dst?: number;
  expect?: number;
  soft?: boolean;
  okErrno?: number;
  messages?: [number, string][];
}

/** What execve(2) may fail with; the child prints these itself, pre-rendered. */
const EXEC_ERRNOS = [2, 13, 8, 20, 40, 7, 26, 12, 1, 21, 36, 22, 80, 5, 24, 23, 14];

/** The descriptor where ch-run tells whoever started it (ch-image build's RUN) that it is about
 * to execve(2) the command ("started\n"), and that this failed ("failed\n"): a status of 31 or
 * 49 is then the command's own, or ch-run's, without guessing (CH_RUN_STATUS_FD); -1: none. */
let statusChannel = -1;

export function setStatusFd(fd: number): void {
  statusChannel = fd;
}

const FD_CLOEXEC = 1;

/** Registers that ch-run's launcher executable (native/exec.c) fills from its own environment
 * before its program runs: the command's environment (a NULL-terminated array), the syslog
 * message, its length, and its length with the NUL after it. */
export const REG_ENVP = 12;
export const REG_LOG = 13;
export const REG_LOG_LEN = 14;
export const REG_LOG_LEN0 = 11;

export class ProgramBuilder implements Syscalls {
  readonly ops: Op[] = [];
  readonly nr: SyscallNumbers;
  readonly arch: Arch;
  reportFd = -1;
  /** Index of this program's first op among all the launch's ops, for failure reports. */
  indexBase = 0;
  /** Whether the child prints an execve(2) failure itself (no one may be left to read it). */
  execMessages = true;
  /** The mapping of the launcher's code and stack (mapProgram's), which a supervisor forked by
   * this program keeps the pages of while it drops all others (a copy of Node's memory); null: drop none
   * (exec.c, a small static program). */
  ownMapping: { address: bigint; size: number } | null = null;
  /** The status channel, once the command's execve(2) is next (see setStatusFd()). */
  private statusFd = -1;
  /** A program for ch-run's launcher executable, whose environment is the command's and holds
   * the syslog message: execve(2) and sendLog() take them from its registers (REG_*), so that
   * the program itself holds neither (one plan serves any environment: container/memo.ts). */
  launcherInputs = false;
  /** Whether the program holds this process's PID (--seccomp's warning): no plan to remember
   * (container/memo.ts), whose launches have PIDs of their own. */
  holdsPid = false;

  constructor(arch: Arch) {
    this.nr = SYSCALLS[arch];
    this.arch = arch;
  }

  /** Appends one raw system call. */
  op(nr: number, args: Arg[], why: Why, opts: OpOptions = {}): void {
    // Where the op was made (its error location): the first frame outside this file is at most
    // the fourth; fewer frames, less to capture and read back (ch-run's fast path makes ~50).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 8;
    const at = new Error();
    Error.stackTraceLimit = limit;
    this.ops.push({ nr, args, why, at, ...opts });
  }

  // --- launch protocol ---

  /** Dies with the parent; waits for the parent's go-ahead (it writes our ID maps first). */
  prologue(syncRead: number, syncWrite: number, gateWrite: number): void {
    const n = this.nr;
    this.op(n.prctl, [PR_SET_PDEATHSIG, 9], { what: "can't set parent-death signal" });
    this.op(n.close, [syncWrite], { what: "can't close sync pipe" });
    this.op(n.close, [gateWrite], { what: "can't close gate pipe" });
    this.op(n.read, [syncRead, { bytes: new Uint8Array(8) }, 1], { what: "parent did not start the container" }, { expect: 1 });
    this.op(n.close, [syncRead], { what: "can't close sync pipe" });
  }

  /** Dies with the parent; enters the user, then the mount namespace of process `pid`. */
  joinNamespaces(pid: number): void {
    const n = this.nr;
    this.op(n.prctl, [PR_SET_PDEATHSIG, 9], { what: "can't set parent-death signal" });
    for (const [ns, flag] of [
      ["user", 0x10000000],
      ["mnt", 0x20000],
    ] as const) {
      const why = { what: `can't join the container's ${ns} namespace` };
      this.op(n.openat, [AT_FDCWD, { str: `/proc/${pid}/ns/${ns}` }, O_CLOEXEC], why, { dst: 0 });
      this.op(n.setns, [{ reg: 0 }, flag], why);
      this.op(n.close, [{ reg: 0 }], why);
    }
  }

  /** Dies with the parent; enters the namespaces of process `pid`, a container's command: the
   * outer user namespace (parent of its own), the mount namespace, then its own user namespace,
   * so that peers share one user namespace (cross-memory attach works between them). */
  joinContainer(pid: number): void {
    const n = this.nr;
    const NS_GET_PARENT = 0xb702;
    this.op(n.prctl, [PR_SET_PDEATHSIG, 9], { what: "can't set parent-death signal" });
    const user = { what: `can't join the user namespace of PID ${pid}` };
    this.op(n.openat, [AT_FDCWD, { str: `/proc/${pid}/ns/user` }, O_CLOEXEC], user, { dst: 0 });
    this.op(n.ioctl, [{ reg: 0 }, NS_GET_PARENT], user, { dst: 1 });
    this.op(n.setns, [{ reg: 1 }, 0x10000000], user);
    const mnt = { what: `can't join the mount namespace of PID ${pid}` };
    this.op(n.openat, [AT_FDCWD, { str: `/proc/${pid}/ns/mnt` }, O_CLOEXEC], mnt, { dst: 2 });
    this.op(n.setns, [{ reg: 2 }, 0x20000], mnt);
    this.op(n.setns, [{ reg: 0 }, 0x10000000], user);
    for (const r of [0, 1, 2]) this.op(n.close, [{ reg: r }], user);
  }

  /** Detaches, once the parent says so on pipe `goRead` (it has handed this process to someone
   * who ends it should the parent die): a session of its own, out of reach of its terminal's
   * signals, and no parent-death signal. Until then it dies with the parent. */
  detachWhenTold(goRead: number, goWrite: number): void {
    const n = this.nr;
    const why = { what: "can't detach" };
    this.op(n.close, [goWrite], why);
    this.op(n.read, [goRead, { bytes: new Uint8Array(8) }, 1], { what: "parent did not let it detach" }, { expect: 1 });
    this.op(n.close, [goRead], why);
    this.op(n.setsid, [], why);
    this.op(n.prctl, [PR_SET_PDEATHSIG, 0], why);
  }

  /** A SquashFS image's container: moves to a copy of its mount namespace, then unmounts
   * `fuseMount` in the original one, where only the FUSE server stays. The mount then lives in
   * the container's namespace alone, and dies with it (whoever was the last process in it: a
   * --join group's late peer, say); the kernel then ends the FUSE connection and the server
   * exits. The original's mounts are made private first, so that the unmount can't propagate. */
  leaveFuseNamespace(fuseMount: string): void {
    const n = this.nr;
    const why = { what: "can't make a mount namespace of the container's own" };
    const self = { str: "/proc/self/ns/mnt" };
    this.mount(null, "/", null, MS_REC | MS_PRIVATE, null, why);
    this.op(n.openat, [AT_FDCWD, self, O_CLOEXEC], why, { dst: 0 });
    this.unshare(CLONE_NEWNS, why);
    this.op(n.openat, [AT_FDCWD, self, O_CLOEXEC], why, { dst: 1 });
    this.op(n.setns, [{ reg: 0 }, CLONE_NEWNS], why);
    this.umount(fuseMount, MNT_DETACH, { what: `can't unmount ${fuseMount} outside the container` });
    this.op(n.setns, [{ reg: 1 }, CLONE_NEWNS], why);
    for (const r of [0, 1]) this.op(n.close, [{ reg: r }], why);
  }

  /** Maps the second-stage program from a memfd at a fixed address, and runs it. */
  runStage2(memfd: number, address: bigint, size: number): void {
    const n = this.nr;
    const PROT_RW = 3;
    const MAP_PRIVATE_FIXED = 0x12;
    const why = { what: "can't map the container's setup program" };
    this.op(n.mmap, [address, size, PROT_RW, MAP_PRIVATE_FIXED, memfd, 0], why, { expect: Number(address) });
    this.op(-1, [address], why);
  }

  /** What the command needs from its launcher: no new privileges, default signal actions, no
   * blocked signals, standard descriptors kept across execve(2), stdout/stderr to /dev/null
   * when asked. */
  beforeExec(resetSignals: number[], keepFds: number[], nullFds: number[], gateRead: number): void {
    const n = this.nr;
    const zero = { bytes: new Uint8Array(32) };
    // Setup done: say so, then wait until the waiter has replaced ch-run's Node process.
    const done = new Uint8Array(new BigInt64Array([-1n, 0n]).buffer);
    this.op(n.write, [this.reportFd, { bytes: done }, 16], { what: "can't report to ch-run" }, { expect: 16 });
    this.op(n.read, [gateRead, { bytes: new Uint8Array(8) }, 1], { what: "ch-run's waiter did not start" }, { expect: 1 });
    this.op(n.close, [gateRead], { what: "can't close gate pipe" });
    // As Charliecloud: no setuid, setgid or file capabilities take effect in the container.
    this.op(n.prctl, [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0], { what: "can't set no_new_privs" });
    for (const sig of resetSignals) this.op(n.rt_sigaction, [sig, zero, 0, 8], { what: `can't reset signal ${sig}` });
    this.op(n.rt_sigprocmask, [SIG_SETMASK, zero, 0, 8], { what: "can't unblock signals" });
    for (const fd of keepFds) this.op(n.fcntl, [fd, F_SETFD, 0], { what: `can't keep descriptor ${fd}` }, { soft: true });
    if (nullFds.length) {
      this.op(n.openat, [AT_FDCWD, { str: "/dev/null" }, O_RDWR | O_CLOEXEC], { what: "can't open /dev/null" }, { dst: 1 });
      for (const fd of nullFds) this.op(n.dup3, [{ reg: 1 }, fd, 0], { what: `can't redirect descriptor ${fd}` });
    }
    this.commandStarts();
  }

  /** The same for ch-run's launcher executable (exec.c), which is the command's own process:
   * it resets signals and O_NONBLOCK itself, and ch-run kept the inherited descriptors before
   * it replaced itself with the launcher. */
  beforeExecHere(nullFds: number[]): void {
    const n = this.nr;
    this.op(n.prctl, [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0], { what: "can't set no_new_privs" });
    if (nullFds.length) {
      this.op(n.openat, [AT_FDCWD, { str: "/dev/null" }, O_RDWR | O_CLOEXEC], { what: "can't open /dev/null" }, { dst: 1 });
      for (const fd of nullFds) this.op(n.dup3, [{ reg: 1 }, fd, 0], { what: `can't redirect descriptor ${fd}` });
    }
    this.commandStarts();
  }

  /** Setup done, execve(2) next: says so on the status channel, if any, which the command does
   * not inherit. Last: a failure after it would pass for the command's. */
  private commandStarts(): void {
    if (statusChannel < 0) return;
    this.statusFd = statusChannel;
    const why = { what: "status channel" };
    this.op(this.nr.fcntl, [this.statusFd, F_SETFD, FD_CLOEXEC], why, { soft: true });
    this.statusWrite("started\n");
  }

  private statusWrite(text: string): void {
    const bytes = new TextEncoder().encode(text);
    this.op(this.nr.write, [this.statusFd, { bytes }, bytes.length], { what: "status channel" }, { soft: true });
  }

  /** Sends a message to a syslog socket, as libc.sendLog() does; nothing fails (a datagram
   * socket, else a stream one: only the kind the socket is connects). */
  sendLog(path: string, message: string | null): void {
    const n = this.nr;
    const name = new TextEncoder().encode(path);
    if (name.length >= 108) return;
    const addr = new Uint8Array(2 + name.length + 1);
    new DataView(addr.buffer).setUint16(0, 1 /* AF_UNIX */, true);
    addr.set(name, 2);
    const why = { what: "syslog" };
    const MSG_NOSIGNAL = 0x4000;
    // The message: here, or (null) the launcher's, its NUL included for a stream socket.
    const text = (nul: boolean): [Arg, Arg] => {
      if (message === null) return [{ reg: REG_LOG }, { reg: nul ? REG_LOG_LEN0 : REG_LOG_LEN }];
      const bytes = new TextEncoder().encode(nul ? `${message}\0` : message);
      return [{ bytes }, bytes.length];
    };
    for (const [type, nul] of [
      [2, false],
      [1, true],
    ] as const) {
      const [msg, len] = text(nul);
      this.op(n.socket, [1, type | O_CLOEXEC, 0], why, { dst: 2, soft: true });
      this.op(n.connect, [{ reg: 2 }, { bytes: addr }, addr.length], why, { soft: true });
      this.op(n.sendto, [{ reg: 2 }, msg, len, MSG_NOSIGNAL, 0, 0], why, { soft: true });
      this.op(n.close, [{ reg: 2 }], why, { soft: true });
    }
  }

  // --- Syscalls ---

  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null, why: Why): void {
    const s = (x: string | null) => (x === null ? 0 : { str: x });
    this.op(this.nr.mount, [s(source), { str: target }, s(fstype), flags, s(data)], why);
  }

  umount(target: string, flags: number, why: Why): void {
    this.op(this.nr.umount2, [{ str: target }, flags], why);
  }

  mkdir(path: string, mode: number, why: Why): void {
    this.op(this.nr.mkdirat, [AT_FDCWD, { str: path }, mode], why, { okErrno: EEXIST });
  }

  private write(path: string, flags: number, mode: number, content: string, why: Why): void {
    const n = this.nr;
    const bytes = new TextEncoder().encode(content);
    this.op(n.openat, [AT_FDCWD, { str: path }, flags | O_WRONLY | O_CLOEXEC, mode], why, { dst: 0 });
    this.op(n.write, [{ reg: 0 }, { bytes }, bytes.length], why, { expect: bytes.length });
    this.op(n.close, [{ reg: 0 }], why);
  }

  writeFile(path: string, content: string, mode: number, why: Why): void {
    this.write(path, O_CREAT | O_TRUNC, mode, content, why);
  }

  writeExisting(path: string, content: string, why: Why): void {
    this.write(path, 0, 0, content, why);
  }

  chdir(path: string, why: Why): void {
    this.op(this.nr.chdir, [{ str: path }], why);
  }

  pivotRoot(newRoot: string, putOld: string, why: Why): void {
    this.op(this.nr.pivot_root, [{ str: newRoot }, { str: putOld }], why);
  }

  unshare(flags: number, why: Why): void {
    this.op(this.nr.unshare, [flags], why);
  }

  execve(candidates: string[], argv: string[], envp: string[], why: Why): void {
    const a = { strs: argv };
    const e: Arg = this.launcherInputs ? { reg: REG_ENVP } : { strs: envp };
    // Rendered only for the clone path's child; ch-run's launcher prints its own (no strerror()
    // for 18 errnos at every start).
    const messages = (): [number, string][] => {
      const where = sourceLocation(new Error());
      return [...EXEC_ERRNOS, 0].map((errno) => [errno, `${formatError(why.what, errno, where)}\n`]);
    };
    const fail = this.execMessages ? { messages: messages() } : {};
    if (this.statusFd >= 0) {
      // Each candidate, then the failure said on the status channel, then the last candidate
      // again, whose failure is reported as usual.
      for (const c of candidates) this.op(this.nr.execve, [{ str: c }, a, e], why, { soft: true });
      this.statusWrite("failed\n");
      this.op(this.nr.execve, [{ str: candidates[candidates.length - 1] }, a, e], why, fail);
      return;
    }
    candidates.forEach((c, i) => {
      const last = i === candidates.length - 1;
      this.op(this.nr.execve, [{ str: c }, a, e], why, last ? fail : { soft: true });
    });
  }

  seccomp(filter: Uint8Array, why: Why): void {
    // An unprivileged filter needs no_new_privs (set again before execve(2): no harm).
    this.op(this.nr.prctl, [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0], { what: "can't set no_new_privs" });
    this.op(this.nr.seccomp, [SECCOMP_SET_MODE_FILTER, 0, { fprog: filter }], why);
  }

  seccompNotify(filter: Uint8Array, fallback: Uint8Array, warning: string | null, why: Why): void {
    this.op(this.nr.prctl, [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0], { what: "can't set no_new_privs" });
    const text = new TextEncoder().encode(warning === null ? "" : `${programName()}[${process.pid}]: warning: ${warning}\n`);
    if (text.length) this.holdsPid = true;
    this.op(
      OP_SUPERVISE,
      [
        { fprog: filter },
        { fprog: fallback },
        text.length ? { bytes: text } : 0,
        text.length,
        { late: () => this.ownMapping?.address ?? 0n },
        { late: () => BigInt(this.ownMapping?.size ?? 0) },
      ],
      why,
    );
  }

  // --- serialization ---

  /** Serializes the program as if loaded at `base`. */
  serialize(base: bigint): Uint8Array {
    const { bytes, relocs } = this.layout();
    relocate(bytes, relocs, base);
    return bytes;
  }

  /** The program's bytes as if loaded at address 0, and the offsets of the pointer words that
   * relocate() moves to the real address once the memory is mapped. */
  layout(): { bytes: Uint8Array; relocs: number[] } {
    const fixed = (HEADER_WORDS + this.ops.length * OP_WORDS) * 8;
    const data: Uint8Array[] = [];
    const relocs: number[] = [];
    let dataLen = 0;
    const cache = new Map<string, bigint>();
    const place = (bytes: Uint8Array, key?: string, pointers = 0): bigint => {
      if (key !== undefined) {
        const hit = cache.get(key);
        if (hit !== undefined) return hit;
      }
      const off = fixed + dataLen;
      for (let k = 0; k < pointers; k++) relocs.push(off + 8 * k);
      const pad = (8 - (bytes.length % 8)) % 8;
      data.push(bytes, new Uint8Array(pad));
      dataLen += bytes.length + pad;
      const addr = BigInt(off);
      if (key !== undefined) cache.set(key, addr);
      return addr;
    };
    const enc = new TextEncoder();
    const cstr = (s: string) => place(enc.encode(`${s}\0`), `s:${s}`);
    const words = new BigInt64Array(fixed / 8);
    words[0] = BigInt(this.ops.length);
    words[1] = BigInt(this.reportFd);
    words[2] = BigInt(this.indexBase);
    this.ops.forEach((op, i) => {
      const w = HEADER_WORDS + i * OP_WORDS;
      let flags = 0n;
      words[w] = BigInt(op.nr);
      op.args.forEach((a, j) => {
        let v: bigint;
        if (typeof a === "number" || typeof a === "bigint") v = BigInt(a);
        else if ("late" in a) v = a.late();
        else if ("reg" in a) {
          flags |= BigInt(a.reg + 1) << BigInt(4 * j);
          v = 0n;
        } else {
          if ("str" in a) v = cstr(a.str);
          else if ("bytes" in a) v = place(a.bytes);
          else if ("fprog" in a) {
            // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
            const filter = place(a.fprog);
            v = place(new Uint8Array(new BigInt64Array([BigInt(a.fprog.length / 8), filter]).buffer));
            relocs.push(Number(v) + 8);
          } else {
            const ptrs = new BigInt64Array(a.strs.length + 1);
            a.strs.forEach((s, k) => {
              ptrs[k] = cstr(s);
            });
            v = place(new Uint8Array(ptrs.buffer), `v:${a.strs.join("\0")}`, a.strs.length);
          }
          relocs.push((w + 1 + j) * 8);
        }
        words[w + 1 + j] = BigInt.asIntN(64, v);
      });
      if (op.dst !== undefined) flags |= BigInt(op.dst + 1) << 24n;
      if (op.expect !== undefined) flags |= 1n << 28n;
      if (op.soft) flags |= 1n << 29n;
      const exit = op.why.exit ?? EXIT_ERR;
      flags |= BigInt(exit & 255) << 32n;
      words[w + 8] = BigInt(op.okErrno ?? 0);
      words[w + 9] = BigInt(op.expect ?? 0);
      if (op.messages) {
        flags |= 1n << 30n;
        const table = new BigInt64Array(op.messages.length * 3);
        const texts = op.messages.map(([errno, text], k) => {
          const bytes = enc.encode(text);
          table[3 * k] = BigInt(errno);
          table[3 * k + 1] = place(bytes);
          table[3 * k + 2] = BigInt(bytes.length);
          return k;
        });
        const at = place(new Uint8Array(table.buffer));
        for (const k of texts) relocs.push(Number(at) + 24 * k + 8);
        words[w + 9] = at;
        relocs.push((w + 9) * 8);
      }
      words[w + 7] = flags;
    });
    const out = new Uint8Array(fixed + dataLen);
    out.set(new Uint8Array(words.buffer), 0);
    let off = fixed;
    for (const d of data) {
      out.set(d, off);
      off += d.length;
    }
    return { bytes: out, relocs };
  }
}

/** Adds `base` to the 64-bit words at the given byte offsets. */
export function relocate(bytes: Uint8Array, relocs: number[], base: bigint): void {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const off of relocs) dv.setBigUint64(off, dv.getBigUint64(off, true) + base, true);
}
