import assert from "node:assert/strict";
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { joinGroup, Peers } from "../../src/container/join.ts";
import { LOCK_SH, libc, loadLibc } from "../../src/sys/libc.ts";

describe("join group", () => {
  it("takes size and tag in Charliecloud's order", () => {
    assert.deepEqual(joinGroup({ count: 4, tag: "t" }, { OMPI_COMM_WORLD_LOCAL_SIZE: "8" }, 1), {
      tag: "t",
      count: 4,
      countFrom: "--join-ct",
      tagFrom: "--join-tag",
    });
    const env = {
      OMPI_COMM_WORLD_LOCAL_SIZE: "x",
      SLURM_STEP_TASKS_PER_NODE: "3(x2)",
      SLURM_CPUS_ON_NODE: "9",
      SLURM_STEP_ID: "7",
    };
    assert.deepEqual(joinGroup({ count: null, tag: null }, env, 1), {
      tag: "7",
      count: 3,
      countFrom: "SLURM_STEP_TASKS_PER_NODE",
      tagFrom: "SLURM_STEP_ID",
    });
    // With Slurm's job ID too, so that step 0 of two jobs are different groups.
    assert.equal(joinGroup({ count: null, tag: null }, { ...env, SLURM_JOB_ID: "123" }, 1).tag, "123.7");
    assert.deepEqual(joinGroup({ count: null, tag: null }, { SLURM_CPUS_ON_NODE: "16" }, 42), {
      tag: "42",
      count: 16,
      countFrom: "SLURM_CPUS_ON_NODE",
      tagFrom: "getppid(2)",
    });
    assert.throws(() => joinGroup({ count: null, tag: null }, {}, 1), /no valid peer group size found/);
    assert.throws(() => joinGroup({ count: 2, tag: "" }, {}, 1), /tag cannot be empty/);
    assert.throws(() => joinGroup({ count: 2, tag: "a/b" }, {}, 1), /tag cannot contain '\/'/);
  });
});

// The protocol in one process, a temporary directory standing for /dev/shm, without holders
// (test/integration/join.test.ts runs them): flock(2) locks belong to open file descriptions,
// so two Peers of one process exclude each other as two processes would. publish() gets a
// made-up PID of the command, which peers then join; the first peer's shared lock keeps the
// group live.
describe("join protocol", () => {
  let dir: string;
  const group = (count: number) => ({ tag: "g", count, countFrom: "--join-ct", tagFrom: "--join-tag" });
  const peer = (count: number, timeoutMs = 2000) => {
    const lines: string[] = [];
    return { p: new Peers(group(count), timeoutMs, (l) => lines.push(l), dir, null), lines };
  };
  before(async () => {
    await loadLibc();
    dir = mkdtempSync(join(tmpdir(), "chtest-join-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("uses Charliecloud's names; the first peer keeps the lock until it publishes; the last peer removes both files", () => {
    const a = peer(3);
    assert.deepEqual(a.p.claim(), { first: true });
    assert.deepEqual(readdirSync(dir).sort(), ["ch-run_shm-g", "sem.ch-run_sem-g"]);
    // While the first peer sets the container up, the others wait for the lock, at most the timeout.
    const early = peer(3, 50);
    assert.throws(
      () => early.p.claim(),
      /^Error: join: timeout waiting for join lock .*sem\.ch-run_sem-g \(tag g, 3 peers from --join-ct\)$/,
    );
    a.p.publish(4242);
    assert.equal(readFileSync(join(dir, "ch-run_shm-g"), "latin1"), "4242 2\n");
    assert.deepEqual(a.lines, [
      "join: I won",
      "join: winner initializing shared data",
      "join: 2 peers left excluding myself",
      "join: done",
    ]);
    const b = peer(3);
    const c = peer(3);
    assert.deepEqual(b.p.claim(), { first: false, pid: 4242 });
    assert.deepEqual(c.p.claim(), { first: false, pid: 4242 });
    b.p.leave();
    b.p.leave(); // once only
    assert.equal(readFileSync(join(dir, "ch-run_shm-g"), "latin1"), "4242 1\n");
    c.p.leave();
    assert.deepEqual(b.lines, ["join: I lost", "join: 1 peers left excluding myself", "join: done"]);
    assert.deepEqual(c.lines, [
      "join: I lost",
      "join: 0 peers left excluding myself",
      "join: cleaning up IPC resources",
      "join: done",
    ]);
    assert.deepEqual(readdirSync(dir), []);
  });

  it("a group of one removes its files at once", () => {
    const a = peer(1);
    assert.deepEqual(a.p.claim(), { first: true });
    a.p.publish(0);
    assert.ok(a.lines.includes("join: cleaning up IPC resources"));
    assert.deepEqual(readdirSync(dir), []);
  });

  it("a first peer that fails removes the files; the next peer starts over as first", () => {
    const a = peer(2);
    a.p.claim();
    a.p.abort();
    assert.deepEqual(readdirSync(dir), []);
    const b = peer(2);
    assert.deepEqual(b.p.claim(), { first: true });
    b.p.abort();
    assert.deepEqual(readdirSync(dir), []);
  });

  it("a peer that joins after the hold ended creates nothing", () => {
    const a = peer(3);
    a.p.claim();
    a.p.publish(1);
    const b = peer(3);
    b.p.claim();
    // The holder's time is up: it removes the files (as holder.c does).
    rmSync(join(dir, "ch-run_shm-g"));
    rmSync(join(dir, "sem.ch-run_sem-g"));
    b.p.leave();
    assert.deepEqual(readdirSync(dir), []);
    assert.deepEqual(b.lines, ["join: I lost"]);
  });

  it("takes over a dead group's files (nobody holds the shared file's lock)", () => {
    writeFileSync(join(dir, "sem.ch-run_sem-g"), "");
    writeFileSync(join(dir, "ch-run_shm-g"), "999999999 1\n");
    const a = peer(2);
    assert.deepEqual(a.p.claim(), { first: true });
    assert.match(a.lines[0], /^join: removing the IPC resources of a dead peer group: .*ch-run_shm-g$/);
    a.p.abort();
    assert.deepEqual(readdirSync(dir), []);
  });

  it("waits while a claimed, unpublished group is still live (its first peer just died), then takes it over", () => {
    writeFileSync(join(dir, "sem.ch-run_sem-g"), "");
    writeFileSync(join(dir, "ch-run_shm-g"), "");
    const fd = openSync(join(dir, "ch-run_shm-g"), "r");
    libc().flock(fd, LOCK_SH); // what the dead first peer's container child still holds, briefly
    assert.throws(() => peer(2, 100).p.claim(), /join: timeout waiting for join lock/);
    closeSync(fd);
    const a = peer(2);
    assert.deepEqual(a.p.claim(), { first: true });
    a.p.abort();
    assert.deepEqual(readdirSync(dir), []);
  });

  it("refuses a symbolic link in place of its files", () => {
    symlinkSync("/etc/passwd", join(dir, "sem.ch-run_sem-g"));
    try {
      assert.throws(() => peer(2).p.claim(), /join: can't open .*sem\.ch-run_sem-g/);
      assert.ok(existsSync("/etc/passwd"));
    } finally {
      rmSync(join(dir, "sem.ch-run_sem-g"));
    }
  });
});
