// ch-run on SquashFS images: squashfuse mounts them inside the container's namespaces.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, CH_RUN, chRun, cleanup, DIST, ERROR_LINE, run, tmp } from "../helpers.ts";

let dir: string;
let sqfs: string;
let storage: string;

/** squashfuse processes serving this file. */
function fuseServers(file: string): string[] {
  return run("pgrep", ["-f", `squashfuse -f ${file}`])
    .stdout.trim()
    .split("\n")
    .filter(Boolean);
}

async function gone(file: string, tries = 100): Promise<string[]> {
  for (let i = 0; i < tries && fuseServers(file).length; i++) await new Promise((r) => setTimeout(r, 20));
  return fuseServers(file);
}

/** What a --join group of tag `tag` left: its join holders, its files in /dev/shm. */
function groupLeft(tag: string): string[] {
  const holders = run("pgrep", ["-f", `join-holder .* sem\\.ch-run_sem-${tag} `])
    .stdout.trim()
    .split("\n")
    .filter(Boolean);
  const files = readdirSync("/dev/shm").filter((f) => f === `ch-run_shm-${tag}` || f === `sem.ch-run_sem-${tag}`);
  return [...holders.map((p) => `holder ${p}`), ...files];
}

async function groupGone(tag: string): Promise<string[]> {
  for (let i = 0; i < 250 && groupLeft(tag).length; i++) await new Promise((r) => setTimeout(r, 20));
  return groupLeft(tag);
}

before(() => {
  dir = tmp();
  const img = busyboxImage(dir);
  writeFileSync(join(img, "hello.txt"), "from squashfs\n");
  sqfs = join(dir, "bb.sqfs");
  const r = run("mksquashfs", [img, sqfs, "-quiet", "-noappend"]);
  assert.equal(r.status, 0, r.stderr);
  storage = join(dir, "storage");
});
after(() => cleanup(dir));

describe("SquashFS images", () => {
  it("runs a command in a SquashFS image, read-only, with no mount left behind", async () => {
    const r = chRun(["-s", storage, sqfs, "--", "sh", "-c", "cat /hello.txt; id -un; touch /x"]);
    assert.equal(r.stdout, `from squashfs\n${process.env.USER}\n`);
    assert.match(r.stderr, /Read-only file system/);
    assert.deepEqual(await gone(sqfs), [], "squashfuse ended with the container");
    assert.ok(!readFileSync("/proc/self/mountinfo", "utf8").includes(join(storage, "mnt")), "no mount on the host");
  });

  it("works with -W, -b and a mount point given with -m", () => {
    const mnt = join(dir, "mnt-here");
    mkdirSync(mnt);
    const r = chRun([
      "-m",
      mnt,
      "-W",
      "-b",
      `${dir}:/mnt/1`,
      sqfs,
      "--",
      "sh",
      "-c",
      "echo w > /new && cat /new && ls /mnt/1/bb.sqfs",
    ]);
    assert.equal(r.stdout, `w\n/mnt/1/bb.sqfs\n`, r.stderr);
    const bad = chRun(["-m", join(dir, "nope"), sqfs, "--", "true"]);
    assert.equal(bad.status, 31);
    assert.match(bad.stderr, /--mount: mount point not found or not a directory/);
  });

  it("takes squashfuse down when ch-run is killed", async () => {
    const child: ChildProcess = spawn(CH_RUN, ["-s", storage, sqfs, "--", "sh", "-c", "echo ready; sleep 30"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    await new Promise<void>((res) => child.stdout?.on("data", (d) => String(d).includes("ready") && res()));
    assert.equal(fuseServers(sqfs).length, 1);
    child.kill("SIGKILL");
    assert.deepEqual(await gone(sqfs), []);
  });

  it("says what failed for a broken image", () => {
    const broken = join(dir, "broken.sqfs");
    writeFileSync(broken, `hsqs${"\0".repeat(200)}`);
    const r = chRun(["-s", storage, broken, "--", "true"]);
    assert.equal(r.status, 31);
    assert.match(r.stderr, /can't mount SquashFS image .*broken\.sqfs: squashfuse exited with status \d+/);
  });

  it("says so when /dev/fuse is unusable, and suggests unpacking", (t) => {
    // In a user namespace of our own, hide /dev/fuse behind a root-only file.
    if (!existsSync("/etc/shadow")) return t.skip("no root-only file to hide /dev/fuse behind");
    const r = run("unshare", [
      "-Urm",
      "sh",
      "-c",
      `mount --bind /etc/shadow /dev/fuse && exec ${join(DIST, "ch-run")} -s ${storage} ${sqfs} -- true`,
    ]);
    assert.equal(r.status, 31, r.stderr);
    assert.match(r.stderr, ERROR_LINE);
    assert.match(
      r.stderr,
      /\/dev\/fuse is not usable by you \(ask your admins for mode 0666, or unpack it instead: ch-convert .*bb\.sqfs DIR\): Permission denied/,
    );
  });
});

describe("SquashFS images with --join", () => {
  const JOIN = (tag: string) => ["-s", storage, `--join-tag=${tag}`, "--join-ct=2", sqfs, "--"];

  it("a late peer still reads the image after the first peer ended; then nothing is left", { timeout: 60_000 }, async () => {
    const tag = `sq-late-${process.pid}`;
    const a = chRun([...JOIN(tag), "cat", "/hello.txt"]);
    assert.equal(a.stdout, "from squashfs\n", a.stderr);
    // The first peer is gone; its squashfuse serves the group's container.
    const b = chRun([...JOIN(tag), "sh", "-c", "cat /hello.txt; ls /bin/busybox"]);
    assert.equal(b.stderr, "");
    assert.equal(b.stdout, "from squashfs\n/bin/busybox\n");
    assert.equal(b.status, 0);
    assert.deepEqual(await gone(sqfs), [], "squashfuse ended with the last peer");
    assert.deepEqual(await groupGone(tag), []);
  });

  it("a group whose late peer never comes: squashfuse ends with the hold", { timeout: 60_000 }, async () => {
    const tag = `sq-never-${process.pid}`;
    const a = chRun([...JOIN(tag), "cat", "/hello.txt"], { env: { ...process.env, CH_RUN_JOIN_TIMEOUT: "1" } });
    assert.equal(a.stdout, "from squashfs\n", a.stderr);
    assert.deepEqual(await gone(sqfs, 500), [], "squashfuse ended once the hold did");
    assert.deepEqual(await groupGone(tag), []);
  });

  it("kill -9 of the first peer while squashfuse mounts: its holder kills squashfuse, nothing is left", {
    timeout: 60_000,
  }, async () => {
    // A squashfuse that never mounts, found first in PATH, says its PID.
    const bin = join(dir, "slow-fuse");
    const pidFile = join(dir, "slow-fuse.pid");
    mkdirSync(bin);
    writeFileSync(
      join(bin, "squashfuse"),
      `#!/bin/sh\necho $$ > ${pidFile}.new && mv ${pidFile}.new ${pidFile}\nexec sleep 60\n`,
      {
        mode: 0o755,
      },
    );
    const tag = `sq-kill-${process.pid}`;
    const child = spawn(CH_RUN, JOIN(tag).concat("true"), {
      stdio: "ignore",
      env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
    });
    let pid = 0;
    for (let i = 0; i < 1000 && !pid; i++) {
      await new Promise((r) => setTimeout(r, 20));
      pid = existsSync(pidFile) ? Number(readFileSync(pidFile, "utf8")) : 0;
    }
    assert.ok(pid > 0, "the fake squashfuse started");
    child.kill("SIGKILL");
    const alive = () => {
      try {
        return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 250 && alive(); i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(alive(), false, "squashfuse killed");
    assert.deepEqual(await groupGone(tag), []);
  });

  it("a first peer whose setup fails takes its squashfuse down and leaves nothing", { timeout: 60_000 }, async () => {
    const tag = `sq-fail-${process.pid}`;
    const r = chRun(["-b", `${join(dir, "absent")}:/mnt/1`, ...JOIN(tag), "true"]);
    assert.equal(r.status, 31, r.stderr);
    assert.match(r.stderr, /absent/);
    assert.deepEqual(await gone(sqfs), []);
    assert.deepEqual(await groupGone(tag), []);
  });
});
