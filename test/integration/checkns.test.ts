// ch-checkns for real, as an ordinary user: ok on this host; each diagnosis the ordinary user can
// bring about triggered for real: a setgid copy, /dev/fuse out of reach and
// user.max_user_namespaces = 0 (both in user namespaces of our own: the sysctl is per user
// namespace), storage directories on noexec and on nosuid,nodev file systems.
import assert from "node:assert/strict";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, cleanup, DIST, type Result, run, tmp } from "../helpers.ts";

const CHECKNS = join(DIST, "ch-checkns");
const CHECKS = [
  "not setuid or setgid",
  "storage directory",
  "user namespace with UID/GID maps",
  "mount namespace",
  "bind mount",
  "read-only bind re-mount",
  "pivot_root(2)",
  "the command's own user namespace",
  "SquashFS images (/dev/fuse)",
  "overlayfs (ch-run -W)",
];

/** Problem lines: PROG[PID]: CHECK: DETAIL; fix: FIX. */
function problems(r: Result): string[] {
  return r.stderr.split("\n").filter(Boolean);
}

describe("ch-checkns", () => {
  let dir: string;
  let storage: string;
  before(() => {
    dir = tmp();
    storage = join(dir, "storage");
  });
  after(() => dir && cleanup(dir));

  it('says "ok" and exits 0 on this host; -v prints each check', () => {
    const r = run(CHECKNS, ["-s", storage]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "ok\n");
    assert.equal(r.stderr, "");
    const v = run(CHECKNS, ["-v", "-s", storage]);
    assert.equal(v.status, 0, v.stderr);
    const lines = v.stdout.trimEnd().split("\n");
    assert.deepEqual(
      lines.map((l) => l.split(": ")[0]),
      [...CHECKS, "ok"],
    );
    for (const l of lines.slice(0, -1)) assert.match(l, /^[^:]+: ok: /);
    assert.match(v.stdout, new RegExp(`storage directory: ok: ${storage} \\(not yet made; looked at ${dir}\\)`));
    // Nothing left behind where it probed.
    assert.deepEqual(readdirSync(dir), []);
  });

  it("a setgid copy is refused, and nothing else tried", (t) => {
    const exe = join(dir, "ch-checkns");
    copyFileSync(join(DIST, "charliecloud"), exe);
    chmodSync(exe, 0o2755); // our own group: the kernel keeps the bit
    if (!(statSync(exe).mode & 0o2000)) return t.skip("the kernel cleared the setgid bit");
    const r = run(exe, ["-v"]);
    assert.equal(r.status, 1);
    assert.deepEqual(problems(r).length, 1, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(
        `^ch-checkns\\[\\d+\\]: not setuid or setgid: ${exe} is setgid \\(mode 2755, .*refuses to run with it; fix: chmod u-s,g-s ${exe}\\n$`,
      ),
    );
    assert.match(r.stdout, /^not setuid or setgid: PROBLEM: /);
    assert.equal(r.stdout.split("\n").filter(Boolean).length, 1, "no other check");
  });

  it("/dev/fuse out of reach (hidden behind a root-only file, in a namespace of our own)", (t) => {
    if (!existsSync("/etc/shadow")) return t.skip("no root-only file to hide /dev/fuse behind");
    const r = run("unshare", ["-Urm", "sh", "-c", `mount --bind /etc/shadow /dev/fuse && exec ${CHECKNS} -s ${storage}`]);
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.deepEqual(problems(r).length, 1, r.stderr);
    assert.match(
      r.stderr,
      /^ch-checkns\[\d+\]: SquashFS images \(\/dev\/fuse\): \/dev\/fuse is not readable and writable by you \(EACCES, mode 6[0-4]0, .*; fix: sudo chmod 666 \/dev\/fuse, kept by a udev rule/,
    );
    assert.equal(r.stdout, "");
  });

  it("user.max_user_namespaces = 0 (set in a user namespace of our own); ch-run says what to run", () => {
    const img = busyboxImage(dir, "bb");
    const r = run("unshare", [
      "-Ur",
      "sh",
      "-c",
      `echo 0 > /proc/sys/user/max_user_namespaces && ${CHECKNS} -s ${storage}; echo "checkns=$?"; ${join(DIST, "ch-run")} ${img} -- true; echo "run=$?"`,
    ]);
    assert.match(r.stdout, /^checkns=1\nrun=31\n$/, r.stderr);
    const lines = problems(r);
    assert.equal(lines.length, 2, r.stderr);
    assert.match(
      lines[0],
      /^ch-checkns\[\d+\]: user namespace with UID\/GID maps: creating it failed with ENOSPC: user\.max_user_namespaces is 0; fix: sudo sysctl -w user\.max_user_namespaces=65536/,
    );
    assert.match(
      lines[1],
      /^ch-run\[\d+\]: error: can't create the container's user namespace \(ch-checkns says what blocks it\): No space left on device \((exec-)?launch\.ts:\d+ 28\)$/,
    );
  });

  it("a storage directory on a noexec file system (mounted in a namespace of our own)", () => {
    const nx = join(dir, "noexec");
    mkdirSync(nx);
    const r = run("unshare", ["-Urm", "sh", "-c", `mount -t tmpfs -o noexec tmpfs ${nx} && exec ${CHECKNS} -s ${nx}/store`]);
    assert.equal(r.status, 1, r.stderr);
    assert.deepEqual(problems(r).length, 1, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(
        `^ch-checkns\\[\\d+\\]: storage directory: ${nx}/store \\(not yet made; looked at ${nx}\\): tmpfs file system at ${nx}, mounted noexec,.*: noexec, so images stored there can't run programs; fix: set CH_IMAGE_STORAGE`,
      ),
    );
  });

  it("a storage directory on a nosuid,nodev,strictatime file system: ok, the read-only re-mount keeping those flags", (t) => {
    const fs = process.env.CH_TEST_LOCKED_FS;
    if (!fs) return t.skip("CH_TEST_LOCKED_FS not set (.ci/run mounts a strictatime,nosuid,nodev tmpfs)");
    const where = join(fs, `checkns.${process.pid}`);
    mkdirSync(where);
    try {
      const r = run(CHECKNS, ["-v", "-s", where]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(
        r.stdout,
        new RegExp(
          `storage directory: ok: ${where}: tmpfs file system at ${fs}, mounted nosuid,nodev,strictatime \\(a read-only re-mount must keep these flags; ch-run does\\)`,
        ),
      );
      assert.match(r.stdout, /read-only bind re-mount: ok: on tmpfs, keeping nosuid,nodev,strictatime/);
      assert.deepEqual(readdirSync(where), [], "the probe directory is gone");
    } finally {
      cleanup(where);
    }
  });

  it("--help, --version, stray arguments", () => {
    const h = run(CHECKNS, ["--help"]);
    assert.equal(h.status, 0);
    assert.match(h.stdout, /^Usage: ch-checkns \[OPTION\.\.\.\]/);
    assert.match(run(CHECKNS, ["--version"]).stdout, /^ch-checkns \(Charliecloud\) /);
    const x = run(CHECKNS, ["foo"]);
    assert.equal(x.status, 1);
    assert.match(x.stderr, /no arguments expected: foo/);
  });
});
