// ch-image build against other builds and against kill -9: a second build into storage that a
// build is using waits for it (the storage lock; Charliecloud's would fail), then finishes, and
// both images are right; a build killed during a RUN leaves nothing in img/ (the RUN works in the
// build cache's tmp/), and the same build run again finishes, the killed RUN's work unused.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cleanup, DIST, importBusybox, type Result, run, tmp } from "../helpers.ts";

const IMAGE = join(DIST, "ch-image");

let dir: string;
let storage: string;
/** A host directory the containers see at the same path (ch-run binds the host's /tmp). */
let witness: string;
const env = () => ({ ...process.env, CH_IMAGE_STORAGE: storage });
const image = (args: string[]): Result => run(IMAGE, args, { cwd: dir, env: env(), timeout: 120_000 });
const img = (name: string, ...path: string[]) => join(storage, "img", `${name}+latest`, ...path);
const partials = () => readdirSync(join(storage, "img")).filter((n) => n.includes(".partial-"));

/** Starts a build in its own process group; `done` resolves with its status and stderr. */
function startBuild(args: string[]) {
  const p = spawn(IMAGE, args, { cwd: dir, env: env(), detached: true, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  p.stderr.on("data", (d) => {
    stderr += String(d);
  });
  const done = new Promise<{ status: number | null; signal: string | null; stderr: string }>((resolve) =>
    p.on("close", (status, signal) => resolve({ status, signal, stderr })),
  );
  return { pid: p.pid as number, done, stderrNow: () => stderr };
}

async function waitFor(path: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!existsSync(path)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${path}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function context(name: string, dockerfile: string): string {
  const ctx = join(dir, name);
  mkdirSync(ctx);
  writeFileSync(join(ctx, "Dockerfile"), dockerfile);
  return ctx;
}

before(() => {
  dir = tmp("ch-buildconc-");
  storage = join(dir, "storage");
  witness = mkdtempSync("/tmp/ch-witness-");
  importBusybox(dir, image);
});
after(() => {
  cleanup(dir);
  cleanup(witness);
});

describe("ch-image build, concurrent and killed", () => {
  it("a second build into storage in use waits for the first; both finish; storage consistent", async () => {
    const go = join(witness, "go");
    const ctxA = context(
      "ctxA",
      `FROM bb\nRUN echo a > /a.txt && touch ${witness}/a-running && while [ ! -e ${go} ]; do sleep 0.1; done\n`,
    );
    const ctxB = context("ctxB", "FROM bb\nRUN echo b > /b.txt\n");
    const a = startBuild(["build", "-t", "conc-a", ctxA]);
    let b: ReturnType<typeof startBuild> | null = null;
    try {
      await waitFor(join(witness, "a-running"));
      b = startBuild(["build", "-t", "conc-b", ctxB]);
      let finished = false;
      b.done.then(() => {
        finished = true;
      });
      // B says it waits, and waits (A holds the lock until it ends).
      const end = Date.now() + 60_000;
      while (!/waiting for the storage lock/.test(b.stderrNow()) && !finished && Date.now() < end)
        await new Promise((r) => setTimeout(r, 50));
      assert.match(b.stderrNow(), /waiting for the storage lock: /);
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(finished, false);
      assert.equal(existsSync(img("conc-b")), false);
    } finally {
      writeFileSync(go, "");
    }
    const ra = await a.done;
    assert.equal(ra.status, 0, ra.stderr);
    assert.equal(readFileSync(img("conc-a", "a.txt"), "utf8"), "a\n");
    const rb = await (b as ReturnType<typeof startBuild>).done;
    assert.equal(rb.status, 0, rb.stderr);
    assert.match(rb.stderr, /waiting for the storage lock: /);
    assert.equal(readFileSync(img("conc-b", "b.txt"), "utf8"), "b\n");
    assert.equal(existsSync(img("conc-b", "a.txt")), false);
    assert.deepEqual(partials(), []);
  });

  it("kill -9 during a RUN; the same build again removes the partial and finishes from scratch", async () => {
    const slow = join(witness, "slow");
    const started = join(witness, "started");
    writeFileSync(slow, "");
    // Each run appends one line to /runs: an image built on the killed run's partial would have two.
    const ctx = context(
      "ctxK",
      `FROM bb\nRUN echo run >> /runs\nRUN if [ -e ${slow} ]; then touch ${started}; sleep 60; fi; echo done > /done\n`,
    );
    const k = startBuild(["build", "-t", "killed", ctx]);
    let r: Awaited<typeof k.done>;
    try {
      await waitFor(started);
      assert.equal(partials().length, 0, "a RUN works in the build cache, not in img/");
    } finally {
      process.kill(-k.pid, "SIGKILL");
      r = await k.done;
    }
    assert.equal(r.signal, "SIGKILL");
    assert.equal(existsSync(img("killed")), false);
    assert.equal(partials().length, 0);
    const tmpDir = join(storage, "dlcache", "build-cache", "tmp");
    assert.ok(readdirSync(tmpDir).length > 0, "what kill -9 leaves: the RUN's upper directory");
    rmSync(slow);
    const again = image(["build", "-t", "killed", ctx]);
    assert.equal(again.status, 0, again.stderr);
    assert.equal(readFileSync(img("killed", "runs"), "utf8"), "run\n");
    assert.equal(readFileSync(img("killed", "done"), "utf8"), "done\n");
    assert.deepEqual(partials(), []);
    assert.deepEqual(readdirSync(tmpDir), [], "removed by the next build");
    assert.deepEqual(
      readdirSync(storage).filter((n) => n === "tmp"),
      [],
    );
  });
});
