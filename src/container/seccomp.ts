// Root emulation (ch-run --seccomp, ch-image build's default --force=seccomp): a seccomp(2)
// filter, classic BPF assembled here, that makes the system calls a package manager needs as
// root succeed without doing anything: the chown family, the set*id family, setgroups, capset,
// mknod(at) of a character or block device (other file types pass through), and kexec_load as a
// self-test (returns 0 only with the filter on). Installed just before execve(2), after
// PR_SET_NO_NEW_PRIVS (which an unprivileged filter needs).
// - seccomp_data.arch is checked: a call of another ABI (i386 through int 0x80, arm32 compat)
//   passes unfiltered, as without emulation (it fails as it would; nothing is gained by it). On
//   x86-64, x32 calls (nr with __X32_SYSCALL_BIT) would reach the same kernel code under other
//   numbers, so they are refused outright with EPERM (Charliecloud's filter lets them through).
// - Setting a POSIX ACL (setxattr(2) and kin of system.posix_acl_access or _default) succeeds
//   without effect too: systemd's package sets ACLs naming groups the container doesn't map,
//   which the kernel refuses (EINVAL), so `apt-get install systemd` fails under Charliecloud.
//   The name is a pointer into the caller's memory, which classic BPF can't read, and faking
//   every setxattr would hide real failures (user.* and security.* keep their behaviour): the
//   filter returns SECCOMP_RET_USER_NOTIF for the setxattr family, and a supervisor forked by
//   the launcher reads the name and answers (src/sys/native/supervise.h). That needs Linux 5.9
//   (SECCOMP_USER_NOTIF_FLAG_CONTINUE, and the listener's EPOLLHUP when no process is left,
//   which ends the supervisor); on older kernels, or where the kernel refuses a listener (an
//   outer supervisor has one), the filter without it is installed, with a warning.
import { type Arch, AUDIT_ARCH, SYSCALLS, type SyscallNumbers } from "../sys/arch.ts";

// struct sock_filter codes.
const LD_W_ABS = 0x20;
const ALU_AND_K = 0x54;
const JMP_JA = 0x05;
const JMP_JEQ_K = 0x15;
const JMP_JSET_K = 0x45;
const RET_K = 0x06;

export const SECCOMP_RET_ALLOW = 0x7fff0000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_USER_NOTIF = 0x7fc00000;
const EPERM = 1;
export const X32_SYSCALL_BIT = 0x40000000;
const S_IFMT = 0o170000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

/** The calls faked (return 0, do nothing) whatever their arguments. */
export const FAKED = [
  "chown",
  "fchown",
  "fchownat",
  "lchown",
  "setuid",
  "setgid",
  "setreuid",
  "setregid",
  "setresuid",
  "setresgid",
  "setfsuid",
  "setfsgid",
  "setgroups",
  "capset",
  "kexec_load",
] as const satisfies readonly (keyof SyscallNumbers)[];

/** mknod(2) and mknodat(2), by the index of their mode argument: faked only for devices. */
const MKNOD = [
  ["mknod", 1],
  ["mknodat", 2],
] as const satisfies readonly (readonly [keyof SyscallNumbers, number])[];

/** The calls whose name argument the supervisor reads (supervise.h knows the same indices). */
export const SETXATTR = ["setxattr", "lsetxattr", "fsetxattr", "setxattrat"] as const satisfies readonly (keyof SyscallNumbers)[];

/** What ch-run prints when the kernel refuses the supervisor's listener at run time. */
export const NOTIFY_FALLBACK_WARNING =
  "--seccomp: the kernel refused a seccomp(2) listener here (an outer supervisor has one?): setting POSIX ACLs is not faked";

/** Whether Linux `release` (uname -r) can run the supervisor: 5.9 or later. */
export function notifyKernel(release: string): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release);
  if (!m) return false;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major > 5 || (major === 5 && minor >= 9);
}

interface Insn {
  code: number;
  k: number | string;
  jt?: string;
  jf?: string;
  label?: string;
}

/** Lays out instructions as struct sock_filter (u16 code, u8 jt, u8 jf, u32 k), little-endian,
 * with labels resolved to relative jumps. */
function assemble(insns: Insn[]): Uint8Array {
  const at = new Map<string, number>();
  insns.forEach((x, i) => {
    if (x.label !== undefined) at.set(x.label, i);
  });
  const rel = (i: number, label: string | undefined, max: number): number => {
    if (label === undefined) return 0;
    const t = at.get(label);
    if (t === undefined || t <= i || t - i - 1 > max) throw new Error(`seccomp filter: bad jump to ${label}`);
    return t - i - 1;
  };
  const out = new Uint8Array(insns.length * 8);
  const dv = new DataView(out.buffer);
  insns.forEach((x, i) => {
    dv.setUint16(8 * i, x.code, true);
    dv.setUint8(8 * i + 2, rel(i, x.jt, 255));
    dv.setUint8(8 * i + 3, rel(i, x.jf, 255));
    dv.setUint32(8 * i + 4, typeof x.k === "string" ? rel(i, x.k, 0xffffffff) : x.k >>> 0, true);
  });
  return out;
}

/** offsetof(struct seccomp_data, args[i]), low 32 bits (both architectures are little-endian). */
const argOffset = (i: number) => 16 + 8 * i;

/** The filter for `arch`, as the bytes of its struct sock_filter array; with `notify`, the
 * setxattr family goes to the supervisor. */
export function seccompFilter(arch: Arch, notify = false): Uint8Array {
  const nr = SYSCALLS[arch];
  const p: Insn[] = [];
  p.push({ code: LD_W_ABS, k: 4 }); // seccomp_data.arch
  p.push({ code: JMP_JEQ_K, k: AUDIT_ARCH[arch], jf: "allow" });
  p.push({ code: LD_W_ABS, k: 0 }); // seccomp_data.nr
  if (arch === "x64") p.push({ code: JMP_JSET_K, k: X32_SYSCALL_BIT, jt: "eperm" });
  for (const name of FAKED) {
    const n = nr[name];
    if (n !== undefined) p.push({ code: JMP_JEQ_K, k: n, jt: "fake" });
  }
  for (const [name] of MKNOD) {
    const n = nr[name];
    if (n !== undefined) p.push({ code: JMP_JEQ_K, k: n, jt: name });
  }
  if (notify) for (const name of SETXATTR) p.push({ code: JMP_JEQ_K, k: nr[name], jt: "notify" });
  p.push({ code: RET_K, k: SECCOMP_RET_ALLOW });
  for (const [name, arg] of MKNOD) {
    if (nr[name] === undefined) continue;
    p.push({ code: LD_W_ABS, k: argOffset(arg), label: name });
    p.push({ code: JMP_JA, k: "mode" });
  }
  p.push({ code: ALU_AND_K, k: S_IFMT, label: "mode" });
  p.push({ code: JMP_JEQ_K, k: S_IFCHR, jt: "fake" });
  p.push({ code: JMP_JEQ_K, k: S_IFBLK, jt: "fake" });
  p.push({ code: RET_K, k: SECCOMP_RET_ALLOW, label: "allow" });
  p.push({ code: RET_K, k: SECCOMP_RET_ERRNO | 0, label: "fake" });
  p.push({ code: RET_K, k: SECCOMP_RET_ERRNO | EPERM, label: "eperm" });
  if (notify) p.push({ code: RET_K, k: SECCOMP_RET_USER_NOTIF, label: "notify" });
  return assemble(p);
}
