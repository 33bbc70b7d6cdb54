// What ch-checkns tries inside new user and mount namespaces: the steps of ch-run's container
// setup, through the Syscalls interface (the recording double shows them in tests). Each step's
// Why.what is the ID of its check, which a failure report names.
import { posix } from "node:path";
import { CLONE_NEWUSER, MNT_DETACH, MS_BIND, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, type Syscalls } from "../sys/syscalls.ts";

export type StepId = "mount-ns" | "bind" | "ro-remount" | "pivot-root" | "nested-userns" | "overlay-tmpfs" | "overlay";

/** A probe directory `dir` (on the storage directory's file system, with an empty proc/ in
 * it) becomes a container root as ch-run makes one: bind-mounted onto itself, /proc bound
 * into it, re-mounted read-only keeping `lockedFlags` (those a user namespace may not clear),
 * pivot_root(2) into it; then the command's own user namespace with its ID maps. */
export function containerSteps(sys: Syscalls, dir: string, lockedFlags: number, uid: number, gid: number): void {
  sys.mount(null, "/", null, MS_REC | MS_PRIVATE, null, { what: "mount-ns" });
  sys.mount(dir, dir, null, MS_BIND | MS_REC, null, { what: "bind" });
  sys.mount("/proc", posix.join(dir, "proc"), null, MS_BIND | MS_REC, null, { what: "bind" });
  sys.mount(null, dir, null, MS_REMOUNT | MS_BIND | MS_RDONLY | lockedFlags, null, { what: "ro-remount" });
  sys.chdir(dir, { what: "pivot-root" });
  sys.pivotRoot(".", ".", { what: "pivot-root" });
  sys.umount(".", MNT_DETACH, { what: "pivot-root" });
  sys.chdir("/", { what: "pivot-root" });
  sys.unshare(CLONE_NEWUSER, { what: "nested-userns" });
  sys.writeExisting("/proc/self/setgroups", "deny", { what: "nested-userns" });
  sys.writeExisting("/proc/self/uid_map", `${uid} 0 1\n`, { what: "nested-userns" });
  sys.writeExisting("/proc/self/gid_map", `${gid} 0 1\n`, { what: "nested-userns" });
}

/** ch-run -W's overlay: a tmpfs for the upper layer, over a lower directory `lower` on the
 * storage directory's file system; `at` is an empty directory to mount the tmpfs on. */
export function overlaySteps(sys: Syscalls, lower: string, at: string): void {
  sys.mount(null, "/", null, MS_REC | MS_PRIVATE, null, { what: "mount-ns" });
  sys.mount("tmpfs", at, "tmpfs", 0, "size=1m,mode=0700", { what: "overlay-tmpfs" });
  const [upper, work, merged] = ["upper", "work", "merged"].map((d) => posix.join(at, d));
  for (const d of [upper, work, merged]) sys.mkdir(d, 0o755, { what: "overlay-tmpfs" });
  sys.mount("overlay", merged, "overlay", 0, `lowerdir=${lower},upperdir=${upper},workdir=${work},userxattr,volatile`, {
    what: "overlay",
  });
}
