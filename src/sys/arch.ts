// System call numbers for the architectures the launcher is built for.

export type Arch = "x64" | "arm64";

export interface SyscallNumbers {
  read: number;
  write: number;
  openat: number;
  close: number;
  fcntl: number;
  dup3: number;
  mkdirat: number;
  chdir: number;
  mount: number;
  umount2: number;
  pivot_root: number;
  unshare: number;
  setns: number;
  execve: number;
  execveat: number;
  prctl: number;
  rt_sigaction: number;
  rt_sigprocmask: number;
  exit_group: number;
  setsid: number;
  mmap: number;
  ioctl: number;
  getppid: number;
  setxattr: number;
  // Root emulation sends these to its supervisor (POSIX ACLs faked): setxattrat(2) is Linux 6.13's.
  lsetxattr: number;
  fsetxattr: number;
  setxattrat: number;
  socket: number;
  connect: number;
  sendto: number;
  seccomp: number;
  // What root emulation (--seccomp) fakes; the legacy chown, lchown and mknod exist on x86-64
  // only (aarch64 has just the *at forms).
  chown?: number;
  lchown?: number;
  fchown: number;
  fchownat: number;
  setuid: number;
  setgid: number;
  setreuid: number;
  setregid: number;
  setresuid: number;
  setresgid: number;
  setfsuid: number;
  setfsgid: number;
  setgroups: number;
  capset: number;
  mknod?: number;
  mknodat: number;
  kexec_load: number;
}

export const SYSCALLS: Record<Arch, SyscallNumbers> = {
  x64: {
    read: 0,
    write: 1,
    openat: 257,
    close: 3,
    fcntl: 72,
    dup3: 292,
    mkdirat: 258,
    chdir: 80,
    mount: 165,
    umount2: 166,
    pivot_root: 155,
    unshare: 272,
    setns: 308,
    execve: 59,
    execveat: 322,
    prctl: 157,
    rt_sigaction: 13,
    rt_sigprocmask: 14,
    exit_group: 231,
    setsid: 112,
    mmap: 9,
    ioctl: 16,
    getppid: 110,
    setxattr: 188,
    lsetxattr: 189,
    fsetxattr: 190,
    setxattrat: 463,
    socket: 41,
    connect: 42,
    sendto: 44,
    seccomp: 317,
    chown: 92,
    lchown: 94,
    fchown: 93,
    fchownat: 260,
    setuid: 105,
    setgid: 106,
    setreuid: 113,
    setregid: 114,
    setresuid: 117,
    setresgid: 119,
    setfsuid: 122,
    setfsgid: 123,
    setgroups: 116,
    capset: 126,
    mknod: 133,
    mknodat: 259,
    kexec_load: 246,
  },
  arm64: {
    read: 63,
    write: 64,
    openat: 56,
    close: 57,
    fcntl: 25,
    dup3: 24,
    mkdirat: 34,
    chdir: 49,
    mount: 40,
    umount2: 39,
    pivot_root: 41,
    unshare: 97,
    setns: 268,
    execve: 221,
    execveat: 281,
    prctl: 167,
    rt_sigaction: 134,
    rt_sigprocmask: 135,
    exit_group: 94,
    setsid: 157,
    mmap: 222,
    ioctl: 29,
    getppid: 173,
    setxattr: 5,
    lsetxattr: 6,
    fsetxattr: 7,
    setxattrat: 463,
    socket: 198,
    connect: 203,
    sendto: 206,
    seccomp: 277,
    fchown: 55,
    fchownat: 54,
    setuid: 146,
    setgid: 144,
    setreuid: 145,
    setregid: 143,
    setresuid: 147,
    setresgid: 149,
    setfsuid: 151,
    setfsgid: 152,
    setgroups: 159,
    capset: 91,
    mknodat: 33,
    kexec_load: 104,
  },
};

/** seccomp_data.arch: AUDIT_ARCH_X86_64 and AUDIT_ARCH_AARCH64 (EM_* | 64-bit | little-endian). */
export const AUDIT_ARCH: Record<Arch, number> = { x64: 0xc000003e, arm64: 0xc00000b7 };

export function hostArch(): Arch {
  if (process.arch === "x64") return "x64";
  if (process.arch === "arm64") return "arm64";
  throw new Error(`unsupported architecture: ${process.arch}`);
}
