// ch-checkns's diagnoses: a pure function from the host's facts (sysctls, distribution, kernel,
// security modules, /dev/fuse, the storage directory's file system) and the probes' outcomes
// to a list of checks, each ok or a problem that names what blocks it and the command that
// fixes it. explainUserns() is reusable by anything that fails to make a user namespace.

import type { ProbeResult } from "../sys/nsprobe.ts";
import { errnoName as sysErrnoName } from "../sys/strerror.ts";
import type { StepId } from "./steps.ts";

export interface StorageFacts {
  /** The storage directory. */
  dir: string;
  /** What was looked at: the storage directory, or its nearest existing ancestor. */
  probed: string;
  exists: boolean;
  /** access(2) W_OK of `probed`: 0, or errno. */
  writable: number;
  /** File system type and mount point of `probed` (from /proc/self/mountinfo). */
  fstype: string | null;
  mountPoint: string | null;
  /** statvfs(3) f_flag of `probed`. */
  flags: number;
}

export interface Facts {
  /** A sysctl's value (its /proc/sys file, trimmed), or null if this kernel has none. */
  sysctl(name: string): string | null;
  os: { id: string; idLike: string; versionId: string; prettyName: string };
  /** uname -r. */
  kernel: string;
  /** /proc/cmdline. */
  cmdline: string;
  /** Seccomp mode of this process: 0 none, 1 strict, 2 filter. */
  seccomp: number;
  selinux: "enforcing" | "permissive" | null;
  uid: number;
  euid: number;
  gid: number;
  egid: number;
  /** This executable and its mode bits. */
  exe: { path: string; mode: number } | null;
  /** /dev/fuse: access(2) R_OK|W_OK (0 or errno), and its mode if it exists. */
  fuse: { errno: number; mode: number | null; uid: number | null };
  squashfuse: string | null;
  storage: StorageFacts;
}

export interface Probes {
  /** containerSteps() on the storage file system; null when not run. */
  container: ProbeResult | null;
  /** overlaySteps(); null when not run. */
  overlay: ProbeResult | null;
}

export type Status = "ok" | "problem" | "skipped";

export interface Check {
  id: string;
  title: string;
  status: Status;
  /** What was found (ok), or what blocks it (problem), or why not checked (skipped). */
  detail: string;
  /** The command or change that fixes a problem. */
  fix?: string;
}

/** errno's name (the sys layer's table); 0: the probe ended without one. */
function errnoName(e: number): string {
  return e ? sysErrnoName(e) : "an unexpected end";
}

const S_ISUID = 0o4000;
const S_ISGID = 0o2000;
const ST_NOSUID = 2;
const ST_NODEV = 4;
const ST_NOEXEC = 8;
const ST_NOATIME = 1024;
const ST_NODIRATIME = 2048;
const ST_RELATIME = 4096;

function rhel7(f: Facts): boolean {
  const rhelish = /\b(rhel|centos|fedora|rocky|almalinux|ol|scientific)\b/.test(`${f.os.id} ${f.os.idLike}`);
  return /\.el7\b/.test(f.kernel) || (rhelish && /^7(\.|$)/.test(f.os.versionId));
}

/** Why a user namespace could not be made (clone(2) or unshare(2) failed with errno), and the
 * fix, from the kernel and distribution settings known to block them. */
export function explainUserns(errno: number, f: Facts): { detail: string; fix: string } {
  const how = `creating it failed with ${errnoName(errno)}`;
  const max = f.sysctl("user.max_user_namespaces");
  const clone = f.sysctl("kernel.unprivileged_userns_clone");
  const apparmor = f.sysctl("kernel.apparmor_restrict_unprivileged_userns");
  const rhelBoot = rhel7(f) && !/(^|\s)user_namespace\.enable=1(\s|$)/.test(f.cmdline);
  const persist = "(and in /etc/sysctl.d/ to keep it)";
  if (errno === 28 || errno === 87) {
    if (rhelBoot)
      return {
        detail: `${how}: RHEL 7 kernels need user_namespace.enable=1 on the kernel command line, and user.max_user_namespaces above 0 (now ${max ?? "unset"})`,
        fix: "sudo grubby --args=user_namespace.enable=1 --update-kernel=ALL && echo user.max_user_namespaces=15076 | sudo tee /etc/sysctl.d/51-userns.conf, then reboot",
      };
    if (max === "0")
      return {
        detail: `${how}: user.max_user_namespaces is 0`,
        fix: `sudo sysctl -w user.max_user_namespaces=65536 ${persist}`,
      };
    return {
      detail: `${how}: the limit user.max_user_namespaces (${max ?? "?"}) is reached (each container needs 2)`,
      fix: `raise it: sudo sysctl -w user.max_user_namespaces=65536 ${persist}`,
    };
  }
  if (errno === 1 || errno === 13) {
    if (clone === "0")
      return {
        detail: `${how}: kernel.unprivileged_userns_clone is 0 (a Debian/Ubuntu kernel setting)`,
        fix: `sudo sysctl -w kernel.unprivileged_userns_clone=1 ${persist}`,
      };
    if (apparmor === "1")
      return {
        detail: `${how}: AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns is 1, Ubuntu 23.10 and later)`,
        fix: `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 ${persist}, or an AppArmor profile allowing "userns," for ch-run`,
      };
    if (rhelBoot)
      return {
        detail: `${how}: RHEL 7 kernels need user_namespace.enable=1 on the kernel command line`,
        fix: "sudo grubby --args=user_namespace.enable=1 --update-kernel=ALL, set user.max_user_namespaces above 0, then reboot",
      };
    if (f.seccomp === 2)
      return {
        detail: `${how}: a seccomp filter on this process forbids it (inside a container, or a service with RestrictNamespaces=?)`,
        fix: "run outside that container or service, or allow clone/unshare with CLONE_NEWUSER in its seccomp profile",
      };
    if (f.selinux === "enforcing")
      return {
        detail: `${how}: SELinux is enforcing and may deny it (look for "user_namespace" denials: sudo ausearch -m avc -ts recent)`,
        fix: "a policy allowing user_namespace create for your SELinux domain (or setenforce 0 to confirm)",
      };
    return {
      detail: `${how}, for no reason ch-checkns knows`,
      fix: "ask your admins: unprivileged user namespaces are disabled",
    };
  }
  if (errno === 22)
    return {
      detail: `${how}: this kernel (${f.kernel}) has no user namespaces${rhel7(f) ? " enabled" : ""}`,
      fix: rhelBoot
        ? "sudo grubby --args=user_namespace.enable=1 --update-kernel=ALL, then reboot"
        : "a kernel built with CONFIG_USER_NS=y",
    };
  if (errno === 38)
    return {
      detail: `${how}: a seccomp filter on this process forbids it`,
      fix: "run outside the sandbox or container that filters it",
    };
  return { detail: how, fix: "ask your admins: user namespaces are not usable" };
}

/** The mount flags a user namespace may not clear, as words (nosuid,nodev,...). */
export function lockedFlagWords(flags: number): string[] {
  const w: string[] = [];
  if (flags & ST_NOSUID) w.push("nosuid");
  if (flags & ST_NODEV) w.push("nodev");
  if (flags & ST_NOEXEC) w.push("noexec");
  if (flags & ST_NOATIME) w.push("noatime");
  if (flags & ST_NODIRATIME) w.push("nodiratime");
  if (flags & ST_RELATIME) w.push("relatime");
  else if (!(flags & ST_NOATIME)) w.push("strictatime");
  return w;
}

/** A kernel release as [major, minor]. */
export function kernelVersion(release: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(release);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

function atLeast(release: string, major: number, minor: number): boolean {
  const [a, b] = kernelVersion(release);
  return a > major || (a === major && b >= minor);
}

const TITLES: Record<string, string> = {
  setuid: "not setuid or setgid",
  userns: "user namespace with UID/GID maps",
  "mount-ns": "mount namespace",
  bind: "bind mount",
  "ro-remount": "read-only bind re-mount",
  "pivot-root": "pivot_root(2)",
  "nested-userns": "the command's own user namespace",
  storage: "storage directory",
  squash: "SquashFS images (/dev/fuse)",
  overlay: "overlayfs (ch-run -W)",
};

const CONTAINER_STEPS: StepId[] = ["mount-ns", "bind", "ro-remount", "pivot-root", "nested-userns"];

/** Whether running this executable gained privilege it shouldn't have (setuid or setgid). */
export function privileged(f: Facts): string | null {
  const bits = f.exe ? f.exe.mode & (S_ISUID | S_ISGID) : 0;
  if (f.uid !== f.euid || bits & S_ISUID) return "setuid";
  if (f.gid !== f.egid || bits & S_ISGID) return "setgid";
  return null;
}

export function diagnose(f: Facts, p: Probes): Check[] {
  const checks: Check[] = [];
  const add = (id: string, status: Status, detail: string, fix?: string) =>
    checks.push({ id, title: TITLES[id] ?? id, status, detail, ...(fix ? { fix } : {}) });

  const priv = privileged(f);
  const exe = f.exe?.path ?? "this program";
  if (priv) {
    const mode = f.exe ? (f.exe.mode & 0o7777).toString(8) : "?";
    add(
      "setuid",
      "problem",
      `${exe} is ${priv} (mode ${mode}, uid ${f.uid}/${f.euid}, gid ${f.gid}/${f.egid}): Charliecloud needs no privilege and refuses to run with it`,
      `chmod u-s,g-s ${exe}`,
    );
    return checks; // nothing more is tried with privilege
  }
  add("setuid", "ok", `${exe}, real and effective IDs equal`);

  // The storage directory's file system, which images run from.
  const s = f.storage;
  const where = `${s.dir}${s.exists ? "" : ` (not yet made; looked at ${s.probed})`}`;
  const fs = `${s.fstype ?? "unknown"} file system at ${s.mountPoint ?? "?"}, mounted ${lockedFlagWords(s.flags).join(",")}`;
  if (s.writable)
    add(
      "storage",
      "problem",
      `${where}: not writable by you (${errnoName(s.writable)}); ${fs}`,
      "set CH_IMAGE_STORAGE (or -s) to a directory of yours on local disk, e.g. /var/tmp/$USER.ch",
    );
  else if (s.flags & ST_NOEXEC)
    add(
      "storage",
      "problem",
      `${where}: ${fs}: noexec, so images stored there can't run programs`,
      "set CH_IMAGE_STORAGE (or -s) to a directory on a file system without noexec, e.g. /var/tmp/$USER.ch",
    );
  else
    add(
      "storage",
      "ok",
      `${where}: ${fs}${s.flags & (ST_NOSUID | ST_NODEV) ? " (a read-only re-mount must keep these flags; ch-run does)" : ""}`,
    );

  // The container: user namespace, then ch-run's steps in order.
  const c = p.container;
  if (c === null) {
    add("userns", "skipped", "not tried");
    for (const id of CONTAINER_STEPS) add(id, "skipped", "not tried");
  } else if (!c.ok && (c.stage === "clone" || c.stage === "maps")) {
    if (c.stage === "clone") {
      const e = explainUserns(c.errno, f);
      add("userns", "problem", e.detail, e.fix);
    } else
      add(
        "userns",
        "problem",
        `writing its ${c.what} failed with ${errnoName(c.errno)}`,
        "a kernel with unprivileged user namespaces (3.19 or later maps a single ID without privilege)",
      );
    for (const id of CONTAINER_STEPS) add(id, "skipped", "needs a user namespace");
  } else {
    add("userns", "ok", "created, ID maps written");
    const failed = c.ok ? -1 : CONTAINER_STEPS.indexOf(c.what as StepId);
    CONTAINER_STEPS.forEach((id, i) => {
      if (c.ok || i < failed) add(id, "ok", okDetail(id, s));
      else if (i > failed) add(id, "skipped", "an earlier step failed");
      else {
        const e = stepProblem(id, (c as { errno: number }).errno, f);
        add(id, "problem", e.detail, e.fix);
      }
    });
    if (!c.ok && failed < 0) add("userns", "problem", `the probe failed at ${c.what} with ${errnoName(c.errno)}`);
  }

  // SquashFS: squashfuse, /dev/fuse, and FUSE in user namespaces (Linux 4.18).
  const fuse = f.fuse;
  if (!atLeast(f.kernel, 4, 18))
    add(
      "squash",
      "problem",
      `kernel ${f.kernel} can't mount FUSE file systems in user namespaces (needs 4.18)`,
      "unpack SquashFS images: ch-convert IMG.sqfs DIR",
    );
  else if (fuse.errno === 2)
    add(
      "squash",
      "problem",
      "/dev/fuse does not exist (the fuse module is not loaded)",
      "sudo modprobe fuse (or unpack SquashFS images: ch-convert IMG.sqfs DIR)",
    );
  else if (fuse.errno)
    add(
      "squash",
      "problem",
      `/dev/fuse is not readable and writable by you (${errnoName(fuse.errno)}${fuse.mode !== null ? `, mode ${(fuse.mode & 0o777).toString(8)}` : ""}${fuse.uid !== null ? `, owner ${fuse.uid}` : ""})`,
      'sudo chmod 666 /dev/fuse, kept by a udev rule: KERNEL=="fuse", MODE="0666" (or unpack SquashFS images: ch-convert IMG.sqfs DIR)',
    );
  else if (!f.squashfuse)
    add(
      "squash",
      "problem",
      "squashfuse is not in $PATH",
      "install squashfuse (or unpack SquashFS images: ch-convert IMG.sqfs DIR)",
    );
  else add("squash", "ok", `/dev/fuse usable, ${f.squashfuse}`);

  // overlayfs for -W.
  const o = p.overlay;
  if (o === null) add("overlay", "skipped", c && !c.ok && c.stage !== "step" ? "needs a user namespace" : "not tried");
  else if (o.ok) add("overlay", "ok", `tmpfs over ${s.fstype ?? "the storage file system"}, with userxattr`);
  else if (o.stage !== "step") add("overlay", "skipped", "needs a user namespace");
  else if (o.what === "mount-ns") add("overlay", "skipped", "needs a mount namespace");
  else if (o.what === "overlay-tmpfs")
    add("overlay", "problem", `can't mount the tmpfs for the upper layer (${errnoName(o.errno)})`, "ask your admins");
  else if (!atLeast(f.kernel, 5, 11))
    add(
      "overlay",
      "problem",
      `kernel ${f.kernel} can't mount overlayfs in user namespaces (needs 5.11)`,
      "use ch-run -w on a writable copy of the image instead of -W",
    );
  else if (o.errno === 19)
    add(
      "overlay",
      "problem",
      "the kernel has no overlayfs (ENODEV)",
      "sudo modprobe overlay (or use ch-run -w on a writable copy)",
    );
  else
    add(
      "overlay",
      "problem",
      `overlayfs refused ${s.fstype ?? "the storage file system"} as its lower layer, or userxattr (${errnoName(o.errno)})`,
      "keep images for -W on local disk (CH_IMAGE_STORAGE=/var/tmp/$USER.ch), or use ch-run -w on a writable copy",
    );
  return checks;
}

function okDetail(id: StepId, s: StorageFacts): string {
  switch (id) {
    case "ro-remount":
      return `on ${s.fstype ?? "the storage file system"}, keeping ${lockedFlagWords(s.flags).join(",")}`;
    case "nested-userns":
      return "created, ID maps written";
    default:
      return "works";
  }
}

function stepProblem(id: StepId, errno: number, f: Facts): { detail: string; fix: string } {
  const how = `failed with ${errnoName(errno)}`;
  const apparmor = f.sysctl("kernel.apparmor_restrict_unprivileged_userns") === "1";
  if ((errno === 1 || errno === 13) && apparmor && id !== "nested-userns")
    return {
      detail: `${how}: AppArmor lets unprivileged user namespaces exist but denies them capabilities (kernel.apparmor_restrict_unprivileged_userns is 1)`,
      fix: 'sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile allowing "userns," for ch-run',
    };
  if ((errno === 1 || errno === 13) && f.selinux === "enforcing")
    return {
      detail: `${how}: SELinux is enforcing and may deny it (sudo ausearch -m avc -ts recent)`,
      fix: "a policy allowing mounts in user namespaces for your SELinux domain",
    };
  if ((errno === 1 || errno === 38) && f.seccomp === 2)
    return {
      detail: `${how}: a seccomp filter on this process may forbid it`,
      fix: "run outside the sandbox or container that filters it",
    };
  const s = f.storage;
  switch (id) {
    case "mount-ns":
      return {
        detail: `making mounts private ${how}`,
        fix: "ask your admins: mount namespaces are not usable without privilege here",
      };
    case "bind":
      return {
        detail: `a bind mount of ${s.probed} ${how} (${s.fstype ?? "unknown"} file system)`,
        fix: "put images on local disk (CH_IMAGE_STORAGE=/var/tmp/$USER.ch)",
      };
    case "ro-remount":
      return {
        detail: `re-mounting ${s.fstype ?? "the storage file system"} (${lockedFlagWords(s.flags).join(",")}) read-only ${how} (NFS, or flags a user namespace may not change)`,
        fix: "put images on local disk or tmpfs (CH_IMAGE_STORAGE=/var/tmp/$USER.ch), or run them with ch-run -w",
      };
    case "pivot-root":
      return {
        detail: `${how}${errno === 22 ? ": the host's / is probably the initramfs (rootfs), which can't be pivoted away from (diskless nodes)" : ""}`,
        fix: errno === 22 ? "ask your admins to switch_root to a tmpfs (or other) root at boot" : "ask your admins",
      };
    case "nested-userns":
      return errno === 28 || errno === 87
        ? {
            detail: `${how}: user.max_user_namespaces (${f.sysctl("user.max_user_namespaces") ?? "?"}) allows too few (each container needs 2)`,
            fix: "sudo sysctl -w user.max_user_namespaces=65536 (and in /etc/sysctl.d/ to keep it)",
          }
        : explainUserns(errno, f);
    default:
      return { detail: how, fix: "ask your admins" };
  }
}

/** One line per problem. */
export function problemLine(c: Check): string {
  return `${c.title}: ${c.detail}${c.fix ? `; fix: ${c.fix}` : ""}`;
}
