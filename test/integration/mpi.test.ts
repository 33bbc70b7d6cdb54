// MPI launches with real components: a single-node Slurm (.ci/setup-slurm.sh) and Debian's
// OpenMPI and MPICH, on the host and in a Debian image that carries the same MPI
// (.ci/setup-debian.sh). Two ranks send 4 MiB there and back; every rank prints its user
// namespace. With --join the ranks share one, and cross-memory attach works (the FAQ's
// failure); they form one job of 2 ranks, not 2 jobs of one (the FAQ's "independent rank-0
// processes"), because the launcher's PMI environment and sockets pass through; and nothing of
// ours stays in /dev/shm, after success, failure, or kill -9 of a peer; a peer that comes after
// the first peer was killed still joins its container (kept by the join holder).
//
// OpenMPI is pinned to its ob1 PML and vader BTL with CMA forced: left alone, Debian's OpenMPI
// picks libfabric here (the cm PML), which never tries CMA, and vader would quietly copy twice
// instead of failing. Every launch runs under `timeout -k` (a hung mpirun ignores SIGTERM).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, lstatSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CH_RUN, cleanup, DIST, type Result, ROOT, run, tmp } from "../helpers.ts";

const IMAGE = process.env.CH_TEST_DEBIAN_IMAGE;
const SLURM = process.env.CH_TEST_SLURM === "1";
const skip =
  SLURM && IMAGE
    ? false
    : "needs a single-node Slurm and a Debian image with MPI: run .ci/setup-slurm.sh and .ci/setup-debian.sh as root " +
      "(they set CH_TEST_SLURM and CH_TEST_DEBIAN_IMAGE)";

const uid = process.getuid?.() ?? 0;
const OMPI = {
  OMPI_MCA_pml: "ob1",
  OMPI_MCA_btl: "self,vader",
  OMPI_MCA_btl_vader_single_copy_mechanism: "cma",
};
// Each test's options: skipped, with the reason, without Slurm and the image (counted as skipped).
const T = { skip, timeout: 120_000 };
const LIMIT = ["-k", "5", "60"];
const SRUN = ["srun", "--overcommit", "-n", "2"];

let dir: string;
let img: string;

/** Runs a launcher under timeout(1), with extra environment variables. */
function launch(cmd: string[], env: Record<string, string> = {}): Result {
  return run("timeout", [...LIMIT, ...cmd], { env: { ...process.env, ...env }, timeout: 90_000 });
}

/** The ranks' "rank R of N userns=NS" lines, by rank. */
function ranks(out: string): { rank: number; size: number; ns: string }[] {
  return [...out.matchAll(/^rank (\d+) of (\d+) userns=(\S+)$/gm)]
    .map((m) => ({ rank: Number(m[1]), size: Number(m[2]), ns: m[3] }))
    .sort((a, b) => a.rank - b.rank);
}

/** The user namespaces the processes printed before MPI_Init, distinct. */
function namespaces(out: string): Set<string> {
  return new Set([...out.matchAll(/^start userns=(\S+)$/gm)].map((m) => m[1]));
}

/** Entries in /dev/shm owned by the test user, except other test files' (running at the same
 * time): join groups with tags that are not numbers (ours are Slurm step IDs and mpirun PIDs)
 * and podman's lock. */
function shmOwned(): Set<string> {
  const others = /^((sem\.)?ch-run_(sem|shm)-(?!\d+(\.|$))|libpod_rootless_lock_)/;
  const mine = new Set<string>();
  for (const f of readdirSync("/dev/shm")) {
    try {
      if (lstatSync(join("/dev/shm", f)).uid === uid && !others.test(f)) mine.add(f);
    } catch {} // gone meanwhile
  }
  return mine;
}

/** Asserts that nothing of the test user's is in /dev/shm that was not there before. */
function assertNoLeftovers(before: Set<string>): void {
  assert.deepEqual(
    [...shmOwned()].filter((f) => !before.has(f)),
    [],
    "left in /dev/shm",
  );
}

/** Runs an MPI launch that must give one job of 2 ranks in one user namespace, with the round
 * trip right and nothing left in /dev/shm. */
function assertJoinedJob(cmd: string[], env: Record<string, string> = {}): void {
  const shm = shmOwned();
  const r = launch(cmd, env);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const rs = ranks(r.stdout);
  assert.deepEqual(
    rs.map((x) => `${x.rank}/${x.size}`),
    ["0/2", "1/2"],
    `one job of 2 ranks, not 2 jobs of one:\n${r.stdout}`,
  );
  assert.equal(new Set(rs.map((x) => x.ns)).size, 1, `one user namespace:\n${r.stdout}`);
  assert.match(r.stdout, /^rank 0: round trip of 4194304 bytes ok$/m);
  // No rank complains (PMIx's shared store under srun --mpi=pmix is in Slurm's spool, which
  // ch-run makes visible or replaces: src/container/pmix.ts).
  assert.doesNotMatch(r.stdout + r.stderr, /PMIX ERROR|ERROR/, r.stderr);
  assertNoLeftovers(shm);
}

/** Runs an MPI launch of 2 separate containers that must fail; returns its result. */
function assertSeparateFails(cmd: string[], env: Record<string, string> = {}): Result {
  const shm = shmOwned();
  const r = launch(cmd, env);
  assert.notEqual(r.status, 0, r.stdout + r.stderr);
  assert.equal(namespaces(r.stdout).size, 2, `two user namespaces:\n${r.stdout}`);
  assert.doesNotMatch(r.stdout, /round trip/);
  assertNoLeftovers(shm);
  return r;
}

/** Whether a process of ours with exactly this command line is alive (not a zombie). */
function alive(cmdline: string[]): boolean {
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, "utf8") !== `${cmdline.join("\0")}\0`) continue;
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z") return true;
    } catch {}
  }
  return false;
}

/** Starts a launch in the background: its output so far, and its end. */
function background(cmd: string[], env: Record<string, string> = {}) {
  const c = spawn("timeout", [...LIMIT, ...cmd], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const out = { stdout: "", stderr: "" };
  c.stdout.on("data", (d) => {
    out.stdout += d;
  });
  c.stderr.on("data", (d) => {
    out.stderr += d;
  });
  const ended = new Promise<number | null>((r) => c.on("close", (code) => r(code)));
  return { out, ended };
}

/** Waits until f() gives a value (polling); fails after 30 s instead of hanging. */
async function until<T>(what: string, f: () => T | null | undefined): Promise<T> {
  for (let i = 0; i < 1500; i++) {
    const v = f();
    if (v !== null && v !== undefined) return v;
    await sleep(20);
  }
  throw new Error(`waited 30 s for ${what}`);
}

describe("MPI under Slurm and mpirun", () => {
  before(() => {
    if (skip) return;
    dir = tmp();
    img = join(dir, "img");
    const conv = run(join(DIST, "ch-convert"), [IMAGE as string, img]);
    assert.equal(conv.status, 0, conv.stderr);
    for (const [mpi, cc] of [
      ["openmpi", "mpicc.openmpi"],
      ["mpich", "mpicc.mpich"],
    ]) {
      const exe = join(dir, `pingpong-${mpi}`);
      const r = run(cc, ["-O2", "-Wall", "-o", exe, join(ROOT, "test/fixtures/mpi-pingpong.c")]);
      assert.equal(r.status, 0, r.stderr);
      copyFileSync(exe, join(img, `pingpong-${mpi}`));
      chmodSync(join(img, `pingpong-${mpi}`), 0o755);
    }
  });
  after(() => dir && cleanup(dir));

  describe("OpenMPI, srun --mpi=pmix", () => {
    it("with --join: one job of 2 ranks in one user namespace, forced CMA works", T, () => {
      assertJoinedJob([...SRUN, "--mpi=pmix", CH_RUN, "--join", img, "--", "/pingpong-openmpi"], OMPI);
    });

    it("without: separate user namespaces, forced CMA fails", T, () => {
      const r = assertSeparateFails([...SRUN, "--mpi=pmix", CH_RUN, img, "--", "/pingpong-openmpi"], OMPI);
      assert.match(r.stderr, /CMA support is\s+not available due to different user namespaces/);
    });
  });

  it("PMIx's shared store: bound where the image can have it (-w), else PMIx keeps data per process", T, () => {
    const show = ["sh", "-c", 'echo "gds=$(printenv PMIX_MCA_gds || echo unset)"; test -d "$PMIX_SERVER_TMPDIR" && echo seen'];
    const ro = launch(["srun", "-n", "1", "--mpi=pmix", CH_RUN, img, "--", ...show]);
    assert.equal(ro.stdout, "gds=hash\n", ro.stderr);
    const rw = launch(["srun", "-n", "1", "--mpi=pmix", CH_RUN, "-w", img, "--", ...show]);
    assert.equal(rw.stdout, "gds=unset\nseen\n", rw.stderr);
  });

  describe("MPICH, srun --mpi=pmi2 (its PMI socket is an inherited descriptor)", () => {
    it("with --join: one job of 2 ranks in one user namespace", T, () => {
      assertJoinedJob([...SRUN, "--mpi=pmi2", CH_RUN, "--join", img, "--", "/pingpong-mpich"]);
    });

    it("without: separate user namespaces, MPI_Init fails (UCX can't open the peer's shared memory)", T, () => {
      const r = assertSeparateFails([...SRUN, "--mpi=pmi2", CH_RUN, img, "--", "/pingpong-mpich"]);
      assert.match(r.stderr, /Shared memory error/);
    });

    it("the size check catches 2 jobs of one rank (MPICH under --mpi=pmix)", T, () => {
      const r = launch([...SRUN, "--mpi=pmix", CH_RUN, "--join", img, "--", "/pingpong-mpich"]);
      assert.deepEqual(
        ranks(r.stdout).map((x) => `${x.rank}/${x.size}`),
        ["0/1", "0/1"],
      );
      assert.equal(r.status, 2, r.stderr);
    });
  });

  describe("OpenMPI, mpirun on the host as an ordinary user", () => {
    const mpirun = ["mpirun.openmpi", "--oversubscribe", "-np", "2", CH_RUN];
    it("with --join: one job of 2 ranks in one user namespace, forced CMA works", T, () => {
      assertJoinedJob([...mpirun, "--join", img, "--", "/pingpong-openmpi"], OMPI);
    });

    it("without: separate user namespaces, forced CMA fails", T, () => {
      const r = assertSeparateFails([...mpirun, img, "--", "/pingpong-openmpi"], OMPI);
      // Under load, mpirun's forwarding of the help text sometimes garbles it ("Data unpack would
      // read past end of buffer in file show_help.c"); vader's abort line always comes through.
      assert.match(r.stderr, /CMA support is\s+not available due to different user namespaces|vader BTL is aborting the MPI job/);
    });
  });

  describe("kill -9 of one peer's ch-run under srun", () => {
    it("once joined: its command dies with it, nothing is left, and the next job works", T, async () => {
      const shm = shmOwned();
      const sleeper = ["sleep", "3001"];
      const job = background([
        ...SRUN,
        CH_RUN,
        "--join",
        img,
        "--",
        "sh",
        "-c",
        `if [ "$SLURM_PROCID" = 1 ]; then echo "task-pid $SLURM_TASK_PID"; exec ${sleeper.join(" ")}; fi; echo rank 0 done`,
      ]);
      const pid = await until("rank 1's PID", () => /^task-pid (\d+)$/m.exec(job.out.stdout)?.[1]);
      await until("rank 1's command", () => alive(sleeper) || null);
      // It is ch-run (its waiter, under the name it was run by) that dies, not the command.
      assert.match(readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0], /ch-run$/);
      process.kill(Number(pid), "SIGKILL");
      assert.notEqual(await job.ended, 0);
      assert.match(job.out.stderr, /task 1: Killed/);
      assert.ok(!alive(sleeper), "rank 1's command outlived its ch-run");
      assertNoLeftovers(shm);
      assertJoinedJob([...SRUN, "--mpi=pmi2", CH_RUN, "--join", img, "--", "/pingpong-mpich"]);
    });

    it("of the first peer, its command running: a later peer still joins its container; nothing is left", T, async () => {
      const shm = shmOwned();
      const go = join(dir, "go");
      // Rank 0 starts ch-run at once (the first peer); rank 1 only once the test says so.
      const job = background(
        [
          ...SRUN,
          "sh",
          "-c",
          `if [ "$SLURM_PROCID" = 1 ]; then while [ ! -e ${go} ]; do sleep 0.02; done; ` +
            `else echo "task-pid $$ step $SLURM_JOB_ID.$SLURM_STEP_ID"; fi; exec ${CH_RUN} --join ${img} -- ` +
            `sh -c 'echo "rank $SLURM_PROCID userns=$(readlink /proc/self/ns/user)"; [ $SLURM_PROCID = 1 ] || exec sleep 3002'`,
        ],
        { CH_RUN_JOIN_TIMEOUT: "20" },
      );
      const [pid, tag] = await until("rank 0's PID", () => /^task-pid (\d+) step (\d+\.\d+)$/m.exec(job.out.stdout)?.slice(1));
      const ns = await until("rank 0's command", () => /^rank 0 userns=(\S+)$/m.exec(job.out.stdout)?.[1]);
      // The group's files, with Charliecloud's names, wait for rank 1.
      assert.ok(existsSync(`/dev/shm/ch-run_shm-${tag}`) && existsSync(`/dev/shm/sem.ch-run_sem-${tag}`));
      process.kill(Number(pid), "SIGKILL");
      await until("rank 0's command to die with its ch-run", () => !alive(["sleep", "3002"]) || null);
      writeFileSync(go, "");
      assert.notEqual(await job.ended, 0);
      assert.match(job.out.stderr, /task 0: Killed/);
      assert.match(job.out.stdout, new RegExp(`^rank 1 userns=${ns.replace(/[[\]]/g, "\\$&")}$`, "m"));
      assertNoLeftovers(shm);
      assertJoinedJob([...SRUN, "--mpi=pmi2", CH_RUN, "--join", img, "--", "/pingpong-mpich"]);
    });
  });
});
