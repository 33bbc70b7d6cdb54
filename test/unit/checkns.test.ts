// ch-checkns without privilege: the steps it tries (through the recording syscall double), and
// its diagnoses from the host's facts and the probes' answers, one kernel or distribution
// setting at a time.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Check, diagnose, type Facts, kernelVersion, lockedFlagWords, type Probes } from "../../src/checkns/diagnose.ts";
import { mountOf, parseOsRelease } from "../../src/checkns/facts.ts";
import { containerSteps, overlaySteps } from "../../src/checkns/steps.ts";
import { lockedMountFlags } from "../../src/container/plan.ts";
import type { ProbeResult } from "../../src/sys/nsprobe.ts";
import { Recorder } from "../../src/sys/syscalls.ts";

describe("the steps tried in the namespaces", () => {
  it("ch-run's container setup on a probe directory of the storage file system, keeping its locked flags", () => {
    const r = new Recorder();
    containerSteps(r, "/st/.ch-checkns.x", lockedMountFlags(2 | 4), 1000, 1000); // nosuid,nodev, strictatime
    assert.deepEqual(r.calls, [
      "mount - / - MS_REC|MS_PRIVATE",
      "mount /st/.ch-checkns.x /st/.ch-checkns.x - MS_BIND|MS_REC",
      "mount /proc /st/.ch-checkns.x/proc - MS_BIND|MS_REC",
      "mount - /st/.ch-checkns.x - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_REMOUNT|MS_BIND|MS_STRICTATIME",
      "chdir /st/.ch-checkns.x",
      "pivot_root . .",
      "umount . MNT_DETACH",
      "chdir /",
      "unshare CLONE_NEWUSER",
      'write /proc/self/setgroups "deny"',
      'write /proc/self/uid_map "1000 0 1\\n"',
      'write /proc/self/gid_map "1000 0 1\\n"',
    ]);
  });

  it("ch-run -W's overlay: tmpfs upper layer over the storage file system", () => {
    const r = new Recorder();
    overlaySteps(r, "/st/p/lower", "/st/p/ovl");
    assert.deepEqual(r.calls.slice(1), [
      "mount tmpfs /st/p/ovl tmpfs 0 size=1m,mode=0700",
      "mkdir /st/p/ovl/upper 755",
      "mkdir /st/p/ovl/work 755",
      "mkdir /st/p/ovl/merged 755",
      "mount overlay /st/p/ovl/merged overlay 0 lowerdir=/st/p/lower,upperdir=/st/p/ovl/upper,workdir=/st/p/ovl/work,userxattr,volatile",
    ]);
  });
});

/** Facts of a host where everything works; tests change one thing at a time. */
function facts(over: Partial<Facts> = {}, sysctls: Record<string, string> = {}): Facts {
  const s: Record<string, string> = { "user.max_user_namespaces": "63000", ...sysctls };
  return {
    sysctl: (n) => s[n] ?? null,
    os: { id: "debian", idLike: "", versionId: "12", prettyName: "Debian GNU/Linux 12 (bookworm)" },
    kernel: "6.1.0-13-amd64",
    cmdline: "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet",
    seccomp: 0,
    selinux: null,
    uid: 1000,
    euid: 1000,
    gid: 1000,
    egid: 1000,
    exe: { path: "/usr/local/bin/ch-checkns", mode: 0o100755 },
    fuse: { errno: 0, mode: 0o20666, uid: 0 },
    squashfuse: "/usr/bin/squashfuse",
    storage: {
      dir: "/var/tmp/alice.ch",
      probed: "/var/tmp/alice.ch",
      exists: true,
      writable: 0,
      fstype: "ext4",
      mountPoint: "/",
      flags: 4096,
    },
    ...over,
  };
}

const OK: ProbeResult = { ok: true };
const ok: Probes = { container: OK, overlay: OK };
const clone = (errno: number): Probes => ({
  container: { ok: false, stage: "clone", errno, what: "clone" },
  overlay: { ok: false, stage: "clone", errno, what: "clone" },
});
const step = (what: string, errno: number, overlay: ProbeResult = OK): Probes => ({
  container: { ok: false, stage: "step", errno, what },
  overlay,
});

function problems(checks: Check[]): string[] {
  return checks.filter((c) => c.status === "problem").map((c) => `${c.id}: ${c.detail}; fix: ${c.fix}`);
}

/** The one problem, which must match `detail` and `fix`. */
function one(checks: Check[], id: string, detail: RegExp, fix: RegExp): void {
  const p = checks.filter((c) => c.status === "problem");
  assert.equal(p.length, 1, problems(checks).join("\n"));
  assert.equal(p[0].id, id);
  assert.match(p[0].detail, detail);
  assert.match(p[0].fix ?? "", fix);
}

/** Among the problems, the one of check `id`, which must match `detail` and `fix`. */
function has(checks: Check[], id: string, detail: RegExp, fix: RegExp): void {
  const p = checks.find((c) => c.status === "problem" && c.id === id);
  assert.ok(p, problems(checks).join("\n"));
  assert.match(p.detail, detail);
  assert.match(p.fix ?? "", fix);
}

describe("diagnoses", () => {
  it("all holds: every check ok, none skipped", () => {
    const c = diagnose(facts(), ok);
    assert.deepEqual(
      c.filter((x) => x.status !== "ok"),
      [],
    );
    assert.deepEqual(
      c.map((x) => x.id),
      ["setuid", "storage", "userns", "mount-ns", "bind", "ro-remount", "pivot-root", "nested-userns", "squash", "overlay"],
    );
  });

  it("user.max_user_namespaces = 0", () => {
    const c = diagnose(facts({}, { "user.max_user_namespaces": "0" }), clone(28));
    one(
      c,
      "userns",
      /creating it failed with ENOSPC: user\.max_user_namespaces is 0/,
      /^sudo sysctl -w user\.max_user_namespaces=65536/,
    );
    assert.deepEqual(
      c.filter((x) => x.status === "skipped").map((x) => x.id),
      ["mount-ns", "bind", "ro-remount", "pivot-root", "nested-userns", "overlay"],
    );
  });

  it("user.max_user_namespaces reached", () => {
    one(
      diagnose(facts({}, { "user.max_user_namespaces": "4" }), clone(28)),
      "userns",
      /the limit user\.max_user_namespaces \(4\) is reached/,
      /raise it/,
    );
  });

  it("kernel.unprivileged_userns_clone = 0 (Debian and Ubuntu kernels)", () => {
    one(
      diagnose(facts({}, { "kernel.unprivileged_userns_clone": "0" }), clone(1)),
      "userns",
      /EPERM: kernel\.unprivileged_userns_clone is 0 \(a Debian\/Ubuntu kernel setting\)/,
      /^sudo sysctl -w kernel\.unprivileged_userns_clone=1/,
    );
  });

  it("Ubuntu 24.04's AppArmor restriction, refusing the namespace or its capabilities", () => {
    const f = facts(
      { os: { id: "ubuntu", idLike: "debian", versionId: "24.04", prettyName: "Ubuntu 24.04" } },
      {
        "kernel.unprivileged_userns_clone": "1",
        "kernel.apparmor_restrict_unprivileged_userns": "1",
      },
    );
    one(
      diagnose(f, clone(13)),
      "userns",
      /AppArmor restricts unprivileged user namespaces/,
      /apparmor_restrict_unprivileged_userns=0.*"userns,"/,
    );
    one(
      diagnose(f, step("mount-ns", 1)),
      "mount-ns",
      /AppArmor lets unprivileged user namespaces exist but denies them capabilities/,
      /apparmor_restrict_unprivileged_userns=0/,
    );
  });

  it("RHEL 7: user_namespace.enable=1 on the kernel command line", () => {
    const rhel = {
      os: { id: "rhel", idLike: "fedora", versionId: "7.9", prettyName: "RHEL 7.9" },
      kernel: "3.10.0-1160.el7.x86_64",
    };
    has(
      diagnose(facts(rhel, { "user.max_user_namespaces": "0" }), clone(22)),
      "userns",
      /has no user namespaces enabled/,
      /grubby --args=user_namespace\.enable=1/,
    );
    has(
      diagnose(facts(rhel, { "user.max_user_namespaces": "0" }), clone(28)),
      "userns",
      /RHEL 7 kernels need user_namespace\.enable=1/,
      /grubby/,
    );
    // And SquashFS images can't be mounted by this kernel in user namespaces.
    has(diagnose(facts(rhel), ok), "squash", /needs 4\.18/, /ch-convert/);
    // Booted with it: only the sysctl remains.
    has(
      diagnose(facts({ ...rhel, cmdline: "ro user_namespace.enable=1" }, { "user.max_user_namespaces": "0" }), clone(28)),
      "userns",
      /user\.max_user_namespaces is 0/,
      /sysctl -w user\.max_user_namespaces/,
    );
  });

  it("a seccomp filter; SELinux", () => {
    one(diagnose(facts({ seccomp: 2 }), clone(1)), "userns", /a seccomp filter on this process forbids it/, /seccomp profile/);
    one(diagnose(facts({ selinux: "enforcing" }), clone(13)), "userns", /SELinux is enforcing/, /user_namespace create/);
    one(diagnose(facts({ selinux: "enforcing" }), step("bind", 13)), "bind", /SELinux is enforcing/, /policy/);
  });

  it("an unknown refusal still says it is one", () => {
    one(diagnose(facts(), clone(1)), "userns", /EPERM, for no reason ch-checkns knows/, /ask your admins/);
  });

  it("the ID maps can't be written", () => {
    one(
      diagnose(facts(), { container: { ok: false, stage: "maps", errno: 1, what: "uid_map" }, overlay: null }),
      "userns",
      /writing its uid_map failed with EPERM/,
      /kernel/,
    );
  });

  it("setuid or setgid: refused, and nothing else tried", () => {
    const suid = diagnose(facts({ exe: { path: "/x/ch-checkns", mode: 0o104755 } }), { container: null, overlay: null });
    assert.deepEqual(
      suid.map((c) => c.id),
      ["setuid"],
    );
    one(suid, "setuid", /\/x\/ch-checkns is setuid \(mode 4755/, /^chmod u-s,g-s \/x\/ch-checkns$/);
    one(diagnose(facts({ egid: 50 }), ok), "setuid", /is setgid/, /chmod u-s,g-s/);
  });

  it("the storage file system: noexec; not writable; locked flags kept", () => {
    const st = facts().storage;
    one(
      diagnose(facts({ storage: { ...st, flags: 8 | 4096 } }), ok),
      "storage",
      /mounted noexec,relatime: noexec, so images stored there can't run programs/,
      /CH_IMAGE_STORAGE/,
    );
    one(
      diagnose(facts({ storage: { ...st, writable: 13 } }), ok),
      "storage",
      /not writable by you \(EACCES\)/,
      /CH_IMAGE_STORAGE/,
    );
    const locked = diagnose(facts({ storage: { ...st, flags: 2 | 4, fstype: "tmpfs" } }), ok);
    assert.deepEqual(problems(locked), []);
    assert.match(locked.find((c) => c.id === "ro-remount")?.detail ?? "", /on tmpfs, keeping nosuid,nodev,strictatime/);
  });

  it("a step that fails: the ones before ok, the ones after skipped", () => {
    const c = diagnose(facts({ storage: { ...facts().storage, fstype: "nfs" } }), step("ro-remount", 1));
    one(c, "ro-remount", /re-mounting nfs \(relatime\) read-only failed with EPERM \(NFS/, /local disk/);
    assert.deepEqual(Object.fromEntries(c.map((x) => [x.id, x.status])), {
      setuid: "ok",
      storage: "ok",
      userns: "ok",
      "mount-ns": "ok",
      bind: "ok",
      "ro-remount": "problem",
      "pivot-root": "skipped",
      "nested-userns": "skipped",
      squash: "ok",
      overlay: "ok",
    });
  });

  it("pivot_root from an initramfs; the command's user namespace beyond the limit", () => {
    one(
      diagnose(facts(), step("pivot-root", 22)),
      "pivot-root",
      /EINVAL: the host's \/ is probably the initramfs/,
      /switch_root/,
    );
    one(
      diagnose(facts({}, { "user.max_user_namespaces": "1" }), step("nested-userns", 28)),
      "nested-userns",
      /user\.max_user_namespaces \(1\) allows too few/,
      /sysctl/,
    );
  });

  it("SquashFS: /dev/fuse missing or not accessible, squashfuse missing, kernel too old", () => {
    one(
      diagnose(facts({ fuse: { errno: 2, mode: null, uid: null } }), ok),
      "squash",
      /\/dev\/fuse does not exist/,
      /modprobe fuse/,
    );
    one(
      diagnose(facts({ fuse: { errno: 13, mode: 0o20600, uid: 0 } }), ok),
      "squash",
      /not readable and writable by you \(EACCES, mode 600, owner 0\)/,
      /chmod 666 \/dev\/fuse.*udev/,
    );
    one(diagnose(facts({ squashfuse: null }), ok), "squash", /squashfuse is not in \$PATH/, /install squashfuse/);
    one(diagnose(facts({ kernel: "4.15.0-20-generic" }), ok), "squash", /needs 4\.18/, /ch-convert/);
  });

  it("overlayfs for -W: kernel too old, no module, lower layer refused", () => {
    const ovl = (errno: number) => ({
      container: OK,
      overlay: { ok: false as const, stage: "step" as const, errno, what: "overlay" },
    });
    one(
      diagnose(facts({ kernel: "5.4.0-42-generic" }), ovl(22)),
      "overlay",
      /kernel 5\.4\.0-42-generic can't mount overlayfs in user namespaces \(needs 5\.11\)/,
      /ch-run -w/,
    );
    one(diagnose(facts(), ovl(19)), "overlay", /no overlayfs \(ENODEV\)/, /modprobe overlay/);
    one(
      diagnose(facts({ storage: { ...facts().storage, fstype: "nfs4" } }), ovl(22)),
      "overlay",
      /overlayfs refused nfs4 as its lower layer/,
      /local disk/,
    );
  });
});

describe("reading the host", () => {
  it("the mount holding a path: the longest mount point, the last one mounted there", () => {
    const mi = [
      "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
      "30 22 0:25 / /var/tmp rw,relatime - xfs /dev/sdb rw",
      "31 30 0:26 / /var/tmp/x\\040y rw,nosuid - tmpfs tmpfs rw",
      "32 30 0:27 / /var/tmp rw - nfs4 srv:/t rw",
    ].join("\n");
    assert.deepEqual(mountOf(mi, "/var/tmp/alice.ch"), { mountPoint: "/var/tmp", fstype: "nfs4" });
    assert.deepEqual(mountOf(mi, "/var/tmp/x y/z"), { mountPoint: "/var/tmp/x y", fstype: "tmpfs" });
    assert.deepEqual(mountOf(mi, "/home"), { mountPoint: "/", fstype: "ext4" });
  });

  it("os-release, kernel versions, flag words", () => {
    assert.deepEqual(parseOsRelease('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n'), {
      ID: "ubuntu",
      ID_LIKE: "debian",
      VERSION_ID: "24.04",
    });
    assert.deepEqual(kernelVersion("3.10.0-1160.el7.x86_64"), [3, 10]);
    assert.deepEqual(lockedFlagWords(2 | 4 | 1024), ["nosuid", "nodev", "noatime"]);
  });
});
