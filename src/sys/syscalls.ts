// The system calls that set up a container, as an interface with two implementations:
// ProgramBuilder (program.ts) compiles them into a program for the native launcher, which runs
// them in the clone(2) child; Recorder (below) records them so tests can check the executor
// without privilege.

export const MS_RDONLY = 0x1;
export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_NOEXEC = 0x8;
export const MS_REMOUNT = 0x20;
export const MS_NOATIME = 0x400;
export const MS_NODIRATIME = 0x800;
export const MS_BIND = 0x1000;
export const MS_REC = 0x4000;
export const MS_PRIVATE = 0x40000;
export const MS_RELATIME = 0x200000;
export const MS_STRICTATIME = 0x1000000;
export const MNT_DETACH = 2;
export const CLONE_NEWNS = 0x20000;
export const CLONE_NEWUSER = 0x10000000;
export const SIGCHLD = 17;
export const SIGKILL = 9;

export const MS_NAMES: [number, string][] = [
  [MS_RDONLY, "MS_RDONLY"],
  [MS_NOSUID, "MS_NOSUID"],
  [MS_NODEV, "MS_NODEV"],
  [MS_NOEXEC, "MS_NOEXEC"],
  [MS_REMOUNT, "MS_REMOUNT"],
  [MS_NOATIME, "MS_NOATIME"],
  [MS_NODIRATIME, "MS_NODIRATIME"],
  [MS_BIND, "MS_BIND"],
  [MS_REC, "MS_REC"],
  [MS_PRIVATE, "MS_PRIVATE"],
  [MS_RELATIME, "MS_RELATIME"],
  [MS_STRICTATIME, "MS_STRICTATIME"],
];

export function msFlags(flags: number): string {
  const names = MS_NAMES.filter(([bit]) => flags & bit).map(([, n]) => n);
  return names.length ? names.join("|") : "0";
}

/** What a step is for: the message printed if it fails, and the exit status then. */
export interface Why {
  what: string;
  exit?: number;
}

export interface Syscalls {
  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null, why: Why): void;
  umount(target: string, flags: number, why: Why): void;
  mkdir(path: string, mode: number, why: Why): void;
  /** Creates (or truncates) a file with the given content. */
  writeFile(path: string, content: string, mode: number, why: Why): void;
  /** Writes to an existing file (e.g. /proc/self/uid_map). */
  writeExisting(path: string, content: string, why: Why): void;
  chdir(path: string, why: Why): void;
  pivotRoot(newRoot: string, putOld: string, why: Why): void;
  unshare(flags: number, why: Why): void;
  /** Installs a seccomp(2) filter (struct sock_filter array), setting no_new_privs first. */
  seccomp(filter: Uint8Array, why: Why): void;
  /** The same with a supervisor (native/supervise.h) answering the filter's user notifications;
   * `fallback` is installed instead, with `warning` printed, if the kernel refuses a listener. */
  seccompNotify(filter: Uint8Array, fallback: Uint8Array, warning: string | null, why: Why): void;
  /** execve(2) each candidate in turn, as execvp(3) does; the last failure is reported. */
  execve(candidates: string[], argv: string[], envp: string[], why: Why): void;
}

/** Records calls as text lines; tests compare them. */
export class Recorder implements Syscalls {
  readonly calls: string[] = [];
  private log(s: string): void {
    this.calls.push(s);
  }
  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void {
    this.log(`mount ${source ?? "-"} ${target} ${fstype ?? "-"} ${msFlags(flags)}${data ? ` ${data}` : ""}`);
  }
  umount(target: string, flags: number): void {
    this.log(`umount ${target}${flags & MNT_DETACH ? " MNT_DETACH" : ""}`);
  }
  mkdir(path: string, mode: number): void {
    this.log(`mkdir ${path} ${mode.toString(8)}`);
  }
  writeFile(path: string, content: string, mode: number): void {
    this.log(`write ${path} ${mode.toString(8)} ${JSON.stringify(content)}`);
  }
  writeExisting(path: string, content: string): void {
    this.log(`write ${path} ${JSON.stringify(content)}`);
  }
  chdir(path: string): void {
    this.log(`chdir ${path}`);
  }
  pivotRoot(newRoot: string, putOld: string): void {
    this.log(`pivot_root ${newRoot} ${putOld}`);
  }
  unshare(flags: number): void {
    this.log(`unshare ${flags & CLONE_NEWUSER ? "CLONE_NEWUSER" : ""}${flags & CLONE_NEWNS ? "CLONE_NEWNS" : ""}`);
  }
  seccomp(filter: Uint8Array): void {
    this.log(`seccomp ${filter.length / 8} instructions`);
  }
  seccompNotify(filter: Uint8Array, fallback: Uint8Array, warning: string | null): void {
    this.log(`seccomp ${filter.length / 8} instructions, supervised (else ${fallback.length / 8}${warning ? ", warning" : ""})`);
  }
  execve(candidates: string[], argv: string[]): void {
    this.log(`execve ${candidates.join("|")} ${JSON.stringify(argv)}`);
  }
}
