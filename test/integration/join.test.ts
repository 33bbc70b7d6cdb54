// ch-run --join: peers share one container, so cross-memory attach works between them (the
// FAQ's OpenMPI failure), with nothing left in /dev/shm.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { copyFileSync, existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, CH_RUN, chRun, cleanup, ROOT, run, tmp } from "../helpers.ts";

let dir: string;
let img: string;
const uid = process.getuid?.() ?? 0;
const shmFiles = (tag: string) => readdirSync("/dev/shm").filter((f) => f.startsWith(`ch-run.${uid}.${tag}`));

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

  it("says which peers are missing when they don't come, and leaves nothing behind", () => {
    const tag = `alone-${process.pid}`;
    const r = chRun([`--join-tag=${tag}`, "--join-ct=3", img, "--", "true"], {
      env: { ...process.env, CH_RUN_JOIN_TIMEOUT: "1" },
    });
    assert.equal(r.status, 31);
    assert.match(r.stderr, new RegExp(`join: timed out waiting for peers \\(tag ${tag}, 3 peers \\(--join-ct\\), 1 arrived\\)`));
    assert.deepEqual(shmFiles(tag), []);
  });

  it("is not wedged by a crashed earlier group with the same tag", () => {
    const tag = `stale-${process.pid}`;
    // What a first peer killed with SIGKILL leaves: its claim, with a PID that is gone.
    writeFileSync(`/dev/shm/ch-run.${uid}.${tag}`, "999999999 1 424242\n");
    writeFileSync(`/dev/shm/ch-run.${uid}.${tag}.arrived.1`, "");
    const r = chRun([`--join-tag=${tag}`, "--join-ct=1", img, "--", "echo", "ok"]);
    assert.equal(r.stdout, "ok\n", r.stderr);
    assert.deepEqual(shmFiles(tag), []);
  });

  it("rejects a bad group", () => {
    const r = chRun(["-j", img, "--", "true"], { env: { PATH: "/bin", HOME: process.env.HOME, USER: process.env.USER } });
    assert.equal(r.status, 31);
    assert.match(r.stderr, /join: no valid peer group size found/);
    assert.ok(!existsSync(`/dev/shm/ch-run.${uid}.${process.pid}`));
  });
});
