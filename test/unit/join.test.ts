import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { joinGroup, Peers } from "../../src/container/join.ts";
import { startTime } from "../../src/sys/proc.ts";

describe("join group", () => {
  it("takes size and tag in Charliecloud's order", () => {
    assert.deepEqual(joinGroup({ count: 4, tag: "t" }, { OMPI_COMM_WORLD_LOCAL_SIZE: "8" }, 1), {
      tag: "t",
      count: 4,
      countFrom: "--join-ct",
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
    });
    // With Slurm's job ID too, so that step 0 of two jobs are different groups.
    assert.equal(joinGroup({ count: null, tag: null }, { ...env, SLURM_JOB_ID: "123" }, 1).tag, "123.7");
    assert.equal(joinGroup({ count: null, tag: null }, { SLURM_CPUS_ON_NODE: "16" }, 42).tag, "42");
    assert.throws(() => joinGroup({ count: null, tag: null }, {}, 1), /no valid peer group size found/);
    assert.throws(() => joinGroup({ count: 2, tag: "" }, {}, 1), /tag cannot be empty/);
  });

  it("coordinates peers through files and leaves none", () => {
    const dir = mkdtempSync(join(tmpdir(), "chtest-join-"));
    try {
      const group = { tag: "g", count: 2, countFrom: "--join-ct" };
      const first = new Peers(group, 1000, 2000, dir);
      const second = new Peers(group, 1000, 2000, dir);
      assert.equal(first.claim(), true);
      assert.equal(second.claim(), false);
      second.arrive();
      first.publishAndWait(4242);
      assert.deepEqual(readdirSync(dir), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("clears a dead first peer's claim, and times out naming the group", () => {
    const dir = mkdtempSync(join(tmpdir(), "chtest-join-"));
    try {
      writeFileSync(join(dir, "ch-run.1000.g"), "999999999 1\n");
      const p = new Peers({ tag: "g", count: 3, countFrom: "SLURM_CPUS_ON_NODE" }, 1000, 50, dir);
      assert.equal(p.claim(), true, "the stale claim is cleared");
      assert.throws(
        () => p.publishAndWait(1),
        /timed out waiting for peers \(tag g, 3 peers \(SLURM_CPUS_ON_NODE\), 1 arrived\)/,
      );
      assert.deepEqual(readdirSync(dir), []);
      assert.ok(startTime(process.pid));
      assert.equal(startTime(999999999), null);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
