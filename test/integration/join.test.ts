// ch-run --join: peers share one container, so cross-memory attach works between them (the
// FAQ's OpenMPI failure). The first peer's command starts at once; a holder keeps its container
// joinable for later peers until all came or the join timeout passed; -v tells the join in
// Charliecloud's words; its files in /dev/shm have Charliecloud's names and none stays, after
// success, failure or kill -9.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { copyFileSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { busyboxImage, CH_RUN, chRun, cleanup, ROOT, run, tmp } from "../helpers.ts";

let dir: string;
let img: string;
/** A group's files in /dev/shm: Charliecloud's names (sem_open and shm_open put them there). */
const GROUP = (tag: string) => [`ch-run_shm-${tag}`, `sem.ch-run_sem-${tag}`];
const shmFiles = (tag: string) =>
  readdirSync("/dev/shm")
    .filter((f) => GROUP(tag).includes(f))
    .sort();

before(() => {
  dir = tmp();
  img = busyboxImage(dir);
  const cc = run("gcc", ["-static", "-O2", "-o", join(dir, "cma"), join(ROOT, "test/fixtures/cma.c")]);
  assert.equal(cc.status, 0, cc.stderr);
  copyFileSync(join(dir, "cma"), join(img, "bin/cma"));
  run("chmod", ["755", join(img, "bin/cma")]);
});
after(() => cleanup(dir));

/** Starts `cma serve` in a container; resolves with its PID and buffer address. */
function serve(args: string[]): Promise<{ child: ChildProcess; pid: string; addr: string }> {
  const child = spawn(CH_RUN, [...args, img, "--", "cma", "serve"], { stdio: ["pipe", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout?.on("data", (d) => {
      out += d;
      const m = /^(\d+) (\d+)\n/.exec(out);
      if (m) resolve({ child, pid: m[1], addr: m[2] });
    });
    child.on("exit", (code) => reject(new Error(`cma serve exited ${code}: ${out}`)));
  });
}

/** The exit code, once the child's output is all read ("close", not "exit": "exit" can come first). */
function ended(c: ChildProcess): Promise<number | null> {
  return new Promise((r) => c.on("close", (code) => r(code)));
}

/** Starts ch-run in the background, collecting its output. */
function start(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const child = spawn(CH_RUN, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  const out = { stdout: "", stderr: "" };
  child.stdout?.on("data", (d) => {
    out.stdout += d;
  });
  child.stderr?.on("data", (d) => {
    out.stderr += d;
  });
  return { child, out, ended: ended(child) };
}

/** Waits until f() gives a value (polling); fails after 20 s instead of hanging. */
async function until<T>(what: string, f: () => T | null | undefined | false): Promise<T> {
  for (let i = 0; i < 1000; i++) {
    const v = f();
    if (v !== null && v !== undefined && v !== false) return v;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** PIDs of the join holders of group `tag` (native/holder.c, started as "ch-run join-holder"). */
function holders(tag: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      if (argv[1] === "join-holder" && argv.includes(`sem.ch-run_sem-${tag}`) && stat.split(") ")[1][0] !== "Z")
        pids.push(Number(p));
    } catch {} // gone meanwhile
  }
  return pids;
}

/** Whether a process with this command line (arguments joined by NULs) is alive. */
function running(cmdline: string): boolean {
  for (const p of readdirSync("/proc")) {
    try {
      if (readFileSync(`/proc/${p}/cmdline`, "utf8") === `${cmdline}\0` && !/\) Z /.test(readFileSync(`/proc/${p}/stat`, "utf8")))
        return true;
    } catch {}
  }
  return false;
}

/** ch-run's -v lines about the join, without the "ch-run[PID]: " prefix. */
const joinLines = (stderr: string) => [...stderr.matchAll(/^ch-run\[\d+\]: ((?:join:|joining) .*)$/gm)].map((m) => m[1]);

const NS = ["sh", "-c", "readlink /proc/self/ns/user; readlink /proc/self/ns/mnt"];

describe("--join", () => {
  it("puts peers in one user namespace, where process_vm_readv works; without it, EPERM", { timeout: 30_000 }, async () => {
    // Both peers start at once, as under srun; the server's PID and address go through a file.
    const tag = `cma-${process.pid}`;
    const file = join(dir, "served");
    const a = spawn(CH_RUN, [`--join-tag=${tag}`, "--join-ct=2", img, "--", "sh", "-c", `cma serve > ${file}`], {
      stdio: ["pipe", "inherit", "inherit"],
    });
    const b = spawn(
      CH_RUN,
      [
        `--join-tag=${tag}`,
        "--join-ct=2",
        img,
        "--",
        "sh",
        "-c",
        `while [ ! -s ${file} ]; do sleep 0.02; done; cma read $(cat ${file})`,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    b.stdout?.on("data", (d) => {
      out += d;
    });
    assert.equal(await ended(b), 0, out);
    assert.equal(out, "read: hello across namespaces\n");
    a.stdin?.end();
    assert.equal(await ended(a), 0);
    assert.deepEqual(shmFiles(tag), []);

    // The FAQ's failure: sibling user namespaces.
    const c = await serve([]);
    const d = chRun([img, "--", "cma", "read", c.pid, c.addr]);
    assert.equal(d.stdout, "errno 1 Operation not permitted\n");
    c.child.stdin?.end();
    await ended(c.child);
  });

  it("joins a given process with --join-pid", { timeout: 30_000 }, async () => {
    const a = await serve([]);
    const b = chRun([`--join-pid=${a.pid}`, img, "--", "cma", "read", a.pid, a.addr]);
    assert.equal(b.stdout, "read: hello across namespaces\n", b.stderr);
    a.child.stdin?.end();
    await ended(a.child);
  });

  it("takes the group size and tag from the launcher's environment", { timeout: 30_000 }, async () => {
    const env = { ...process.env, SLURM_STEP_ID: `s${process.pid}`, SLURM_STEP_TASKS_PER_NODE: "2(x4)" };
    const one = spawn(CH_RUN, ["-j", img, "--", "sh", "-c", "readlink /proc/self/ns/user"], {
      env,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let first = "";
    one.stdout?.on("data", (d) => {
      first += d;
    });
    const two = chRun(["-j", img, "--", "sh", "-c", "readlink /proc/self/ns/user"], { env });
    assert.equal(await ended(one), 0);
    assert.equal(two.status, 0, two.stderr);
    assert.equal(two.stdout, first);
    assert.deepEqual(shmFiles(`s${process.pid}`), []);
  });

  it("starts the first peer's command at once; a late peer joins its container after it ended; -v tells how", {
    timeout: 60_000,
  }, () => {
    const tag = `late-${process.pid}`;
    // The first peer alone: its command runs and ends, and ch-run with it (its output closed:
    // the holder keeps no descriptor of the command's), while the holder keeps the group.
    const a = chRun(["-v", `--join-tag=${tag}`, "--join-ct=2", img, "--", ...NS]);
    assert.equal(a.status, 0, a.stderr);
    assert.match(a.stdout, /^user:\[\d+\]\nmnt:\[\d+\]\n$/);
    assert.deepEqual(shmFiles(tag), GROUP(tag).sort());
    const [holder] = holders(tag);
    assert.ok(holder, "a holder keeps the container");
    assert.deepEqual(joinLines(a.stderr), [
      "join: peer group size from command line",
      "join: peer group tag from command line",
      `join: 1 2 ${tag} 0`,
      "join: I won",
      "join: winner initializing shared data",
      "join: 1 peers left excluding myself",
      "join: done",
    ]);
    // The second peer: the same user and mount namespaces; being the last, it removes the files.
    const b = chRun(["-v", `--join-tag=${tag}`, "--join-ct=2", img, "--", ...NS]);
    assert.equal(b.status, 0, b.stderr);
    assert.equal(b.stdout, a.stdout);
    assert.deepEqual(joinLines(b.stderr), [
      "join: peer group size from command line",
      "join: peer group tag from command line",
      `join: 1 2 ${tag} 0`,
      "join: I lost",
      `joining namespaces of pid ${holder}`,
      "join: 0 peers left excluding myself",
      "join: cleaning up IPC resources",
      "join: done",
    ]);
    assert.deepEqual(shmFiles(tag), []);
  });

  it("holds the container for CH_RUN_JOIN_TIMEOUT seconds; a peer after that starts a new group", {
    timeout: 60_000,
  }, async () => {
    const tag = `timeout-${process.pid}`;
    const env = { ...process.env, CH_RUN_JOIN_TIMEOUT: "1" };
    const a = chRun([`--join-tag=${tag}`, "--join-ct=3", img, "--", ...NS], { env });
    assert.equal(a.status, 0, a.stderr);
    assert.deepEqual(shmFiles(tag), GROUP(tag).sort());
    await until("the hold to end", () => shmFiles(tag).length === 0 && holders(tag).length === 0);
    const b = chRun(["-v", `--join-tag=${tag}`, "--join-ct=3", img, "--", ...NS], { env });
    assert.equal(b.status, 0, b.stderr);
    assert.ok(joinLines(b.stderr).includes("join: I won"), b.stderr);
    assert.notEqual(b.stdout, a.stdout, "a new container");
    await until("the second hold to end", () => shmFiles(tag).length === 0 && holders(tag).length === 0);
    const bad = chRun([`--join-tag=${tag}`, "--join-ct=3", img, "--", "true"], { env: { ...env, CH_RUN_JOIN_TIMEOUT: "soon" } });
    assert.equal(bad.status, 31);
    assert.match(bad.stderr, /error: CH_RUN_JOIN_TIMEOUT: not a positive number of seconds: soon/);
  });

  it("waits for the join lock at most CH_RUN_JOIN_TIMEOUT seconds", { timeout: 30_000 }, async () => {
    const tag = `lock-${process.pid}`;
    const lock = `/dev/shm/sem.ch-run_sem-${tag}`;
    // A first peer that takes long to set its container up holds the lock meanwhile: flock(1)
    // and its sleep(1) (a duration of its own, to be found), in a process group of their own,
    // all killed at the end.
    const nap = ["sleep", "60", `0.${process.pid}`];
    const other = spawn("flock", [lock, ...nap], { stdio: "ignore", detached: true });
    const exited = new Promise((resolve) => other.on("exit", resolve));
    try {
      await until("flock(1) to hold the lock", () => run("flock", ["-n", lock, "true"]).status === 1);
      const r = chRun([`--join-tag=${tag}`, "--join-ct=2", img, "--", "echo", "ran"], {
        env: { ...process.env, CH_RUN_JOIN_TIMEOUT: "1" },
      });
      assert.equal(r.status, 31);
      assert.equal(r.stdout, "");
      assert.match(
        r.stderr,
        new RegExp(
          `^ch-run\\[\\d+\\]: error: join: timeout waiting for join lock ${lock} \\(tag ${tag}, 2 peers from --join-ct\\) \\(join\\.ts:\\d+ 0\\)\n$`,
        ),
      );
      assert.deepEqual(shmFiles(tag), [`sem.ch-run_sem-${tag}`], "only the lock file, which is flock(1)'s");
    } finally {
      process.kill(-(other.pid as number), "SIGKILL");
      await exited;
      rmSync(lock, { force: true });
    }
    await until("flock(1)'s sleep(1) to go", () => !running(nap.join("\0")));
  });

  it("a failed peer leaves nothing: a first peer whose setup fails, a peer that can't join", { timeout: 60_000 }, async () => {
    const tag = `fail-${process.pid}`;
    const a = chRun([`--join-tag=${tag}`, "--join-ct=2", "-b", `/nonexistent-${process.pid}:/mnt/0`, img, "--", "true"]);
    assert.equal(a.status, 31, a.stderr);
    assert.deepEqual(shmFiles(tag), []);
    await until("its holder to go", () => holders(tag).length === 0);
    // A group of 3 whose second peer fails to join: it counts itself out all the same, so the
    // third completes the group and removes the files.
    const first = chRun([`--join-tag=${tag}`, "--join-ct=3", img, "--", "true"]);
    assert.equal(first.status, 0, first.stderr);
    const second = chRun([`--join-tag=${tag}`, "--join-ct=3", "--cd", `/nonexistent-${process.pid}`, img, "--", "true"]);
    assert.equal(second.status, 31, second.stderr);
    assert.deepEqual(shmFiles(tag), GROUP(tag).sort());
    const third = chRun(["-v", `--join-tag=${tag}`, "--join-ct=3", img, "--", "true"]);
    assert.equal(third.status, 0, third.stderr);
    assert.ok(joinLines(third.stderr).includes("join: 0 peers left excluding myself"), third.stderr);
    assert.deepEqual(shmFiles(tag), []);
    await until("the holder to go", () => holders(tag).length === 0);
  });

  it("kill -9 of the first peer: its command dies, its container stays joinable, nothing is left", {
    timeout: 60_000,
  }, async () => {
    const tag = `kill-${process.pid}`;
    const a = start([`--join-tag=${tag}`, "--join-ct=2", img, "--", "sh", "-c", "readlink /proc/self/ns/user; exec sleep 3003"]);
    const ns = await until("the first peer's command", () => /^(user:\[\d+\])\n/.exec(a.out.stdout)?.[1]);
    a.child.kill("SIGKILL");
    assert.equal(await a.ended, null);
    await until("its command to die with it", () => !running("sleep\x003003"));
    assert.deepEqual(shmFiles(tag), GROUP(tag).sort());
    const b = chRun([`--join-tag=${tag}`, "--join-ct=2", img, "--", "readlink", "/proc/self/ns/user"]);
    assert.equal(b.status, 0, b.stderr);
    assert.equal(b.stdout.trim(), ns);
    assert.deepEqual(shmFiles(tag), []);
  });

  it("kill -9 of the first peer while it sets the container up: its holder removes the files", { timeout: 60_000 }, async () => {
    const tag = `killsetup-${process.pid}`;
    const env = { ...process.env, CH_RUN_JOIN_TIMEOUT: "1" };
    for (let i = 0; i < 3; i++) {
      const a = start([`--join-tag=${tag}`, "--join-ct=2", img, "--", "true"], env);
      await until("the group's files", () => shmFiles(tag).length > 0);
      a.child.kill("SIGKILL");
      await a.ended;
      await until("the files to go", () => shmFiles(tag).length === 0 && holders(tag).length === 0);
    }
  });

  it("kill -9 of the holder: the next peer takes the dead group's files over", { timeout: 60_000 }, async () => {
    const tag = `stale-${process.pid}`;
    const env = { ...process.env, CH_RUN_JOIN_TIMEOUT: "1" };
    const a = chRun([`--join-tag=${tag}`, "--join-ct=2", img, "--", "true"], { env });
    assert.equal(a.status, 0, a.stderr);
    const [holder] = holders(tag);
    process.kill(holder, "SIGKILL");
    await until("the holder to die", () => holders(tag).length === 0);
    assert.deepEqual(shmFiles(tag), GROUP(tag).sort(), "what a group whose holder died leaves");
    const b = chRun(["-v", `--join-tag=${tag}`, "--join-ct=1", img, "--", "echo", "ok"], { env });
    assert.equal(b.stdout, "ok\n", b.stderr);
    assert.deepEqual(joinLines(b.stderr).slice(3, 5), [
      `join: removing the IPC resources of a dead peer group: /dev/shm/ch-run_shm-${tag}`,
      "join: I won",
    ]);
    assert.deepEqual(shmFiles(tag), []);
    // Likewise files a crash left with any content.
    writeFileSync(`/dev/shm/ch-run_shm-${tag}`, "garbage");
    writeFileSync(`/dev/shm/sem.ch-run_sem-${tag}`, "");
    const c = chRun([`--join-tag=${tag}`, "--join-ct=1", img, "--", "echo", "ok"]);
    assert.equal(c.stdout, "ok\n", c.stderr);
    assert.deepEqual(shmFiles(tag), []);
  });

  it("--join-pid of a process that can't be entered, or of none: an error, exit 31", () => {
    const r = chRun(["--join-pid=1", img, "--", "true"]);
    assert.equal(r.status, 31);
    assert.match(
      r.stderr,
      /^ch-run\[\d+\]: error: join: can't open \/proc\/1\/ns\/user: Permission denied \(join\.ts:\d+ 13\)\n$/,
    );
    const gone = chRun(["--join-pid=2147483647", img, "--", "true"]);
    assert.equal(gone.status, 31);
    assert.match(
      gone.stderr,
      /^ch-run\[\d+\]: error: join: no PID 2147483647: \/proc\/2147483647\/ns\/user not found \(join\.ts:\d+ 0\)\n$/,
    );
  });

  it("rejects a bad group", () => {
    const r = chRun(["-j", img, "--", "true"], { env: { PATH: "/bin", HOME: process.env.HOME, USER: process.env.USER } });
    assert.equal(r.status, 31);
    assert.match(r.stderr, /join: no valid peer group size found/);
    assert.deepEqual(shmFiles(String(process.pid)), []);
  });
});
