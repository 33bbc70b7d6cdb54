// The small executor: runs a plan's operations through a Syscalls implementation.
import { type Arch, hostArch } from "../sys/arch.ts";
import { EXIT_EXEC } from "../sys/errors.ts";
import { CLONE_NEWUSER, MNT_DETACH, MS_BIND, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, type Syscalls } from "../sys/syscalls.ts";
import type { Op } from "./plan.ts";
import { NOTIFY_FALLBACK_WARNING, seccompFilter } from "./seccomp.ts";

export function describeOp(op: Op): string {
  switch (op.op) {
    case "private":
      return "private mount propagation";
    case "bind":
      return `bind ${op.src} -> ${op.dst}`;
    case "tmpfs":
      return `tmpfs ${op.dst} (${op.options})`;
    case "overlay":
      return `overlay ${op.lower} + ${op.upper} -> ${op.dst}`;
    case "mkdir":
      return `mkdir ${op.path}`;
    case "file":
      return `write ${op.path}`;
    case "umount":
      return `unmount ${op.path}`;
    case "remount-ro":
      return `re-mount ${op.path} read-only`;
    case "pivot":
      return `pivot_root into ${op.root}`;
    case "userns":
      return `user namespace: uid ${op.uid}, gid ${op.gid}`;
    case "chdir":
      return `cd ${op.path}`;
    case "seccomp":
      return `seccomp(2) filter for root emulation${op.notify ? ", POSIX ACLs faked by a supervisor" : ""}`;
    case "exec":
      return `execve ${op.argv[0]}`;
  }
}

/** Runs `ops` through `sys`; `arch` is the one the program runs as (the seccomp filter's). */
export function execute(ops: Op[], sys: Syscalls, arch: Arch = hostArch()): void {
  for (const op of ops) {
    switch (op.op) {
      case "private":
        sys.mount(null, "/", null, MS_REC | MS_PRIVATE, null, { what: "can't make mounts private" });
        break;
      case "bind":
        sys.mount(op.src, op.dst, null, MS_BIND | MS_REC, null, { what: op.what });
        break;
      case "tmpfs":
        sys.mount("tmpfs", op.dst, "tmpfs", 0, op.options, { what: op.what });
        break;
      case "overlay":
        sys.mount(
          "overlay",
          op.dst,
          "overlay",
          0,
          `lowerdir=${op.lower},upperdir=${op.upper},workdir=${op.work},userxattr,volatile`,
          { what: op.what ?? "can't overlay tmpfs for --write-fake (needs Linux 5.11 or later)" },
        );
        break;
      case "mkdir":
        sys.mkdir(op.path, 0o755, { what: op.what });
        break;
      case "file":
        sys.writeFile(op.path, op.content, 0o644, { what: op.what });
        break;
      case "umount":
        sys.umount(op.path, MNT_DETACH, { what: `can't unmount ${op.path}` });
        break;
      case "remount-ro":
        sys.mount(null, op.path, null, MS_REMOUNT | MS_BIND | MS_RDONLY | op.flags, null, {
          what: `can't re-mount image read-only (is it on NFS?): ${op.path}; use -w, or move the image to local disk or tmpfs`,
        });
        break;
      case "pivot":
        sys.chdir(op.root, { what: `can't chdir into new root: ${op.root}` });
        sys.pivotRoot(".", ".", { what: `can't pivot_root(2) into ${op.root}` });
        sys.umount(".", MNT_DETACH, { what: "can't unmount old root" });
        sys.chdir("/", { what: "can't chdir to new root" });
        break;
      case "userns":
        sys.unshare(CLONE_NEWUSER, { what: "can't create user namespace for the command" });
        sys.writeExisting("/proc/self/setgroups", "deny", { what: "can't write /proc/self/setgroups" });
        sys.writeExisting("/proc/self/uid_map", `${op.uid} 0 1\n`, { what: `can't map UID ${op.uid}` });
        sys.writeExisting("/proc/self/gid_map", `${op.gid} 0 1\n`, { what: `can't map GID ${op.gid}` });
        break;
      case "chdir":
        sys.chdir(op.path, { what: `can't cd to ${op.path}` });
        break;
      case "seccomp":
        if (op.notify)
          sys.seccompNotify(seccompFilter(arch, true), seccompFilter(arch), op.warn ? NOTIFY_FALLBACK_WARNING : null, {
            what: "can't install seccomp(2) filter for root emulation (--seccomp)",
          });
        else sys.seccomp(seccompFilter(arch), { what: "can't install seccomp(2) filter for root emulation (--seccomp)" });
        break;
      case "exec":
        sys.execve(op.candidates, op.argv, op.env, { what: `can't execve(2): ${op.argv[0]}`, exit: EXIT_EXEC });
        break;
    }
  }
}
