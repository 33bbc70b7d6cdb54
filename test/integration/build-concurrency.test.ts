// ch-image build against other builds and against kill -9: a second build into storage that a
// build is using fails at once with Charliecloud's one-line message, leaving the first build and
// storage alone; a build killed during a RUN leaves only its partial directory, which the same
// build run again removes (nothing of it used) before finishing.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, cleanup, DIST, type Result, run, tmp } from "../helpers.ts";

const IMAGE = join(DIST, "ch-image");
const ERROR = /^ch-image\[\d+\]: error: .+$/m;

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
  return { pid: p.pid as number, done };
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
  const bb = busyboxImage(dir, "bbimg");
  const t = run("tar", ["-C", bb, "-cf", join(dir, "bb.tar"), "."]);
  assert.equal(t.status, 0, t.stderr);
  const i = image(["import", join(dir, "bb.tar"), "bb"]);
  assert.equal(i.status, 0, i.stderr);
});
after(() => {
  cleanup(dir);
  cleanup(witness);
});

describe("ch-image build, concurrent and killed", () => {
  it("a second build into storage in use fails cleanly; the first finishes; storage consistent", async () => {
    const go = join(witness, "go");
    const ctxA = context(
      "ctxA",
      `FROM bb\nRUN echo a > /a.txt && touch ${witness}/a-running && while [ ! -e ${go} ]; do sleep 0.1; done\n`,
    );
    const ctxB = context("ctxB", "FROM bb\nRUN echo b > /b.txt\n");
    const a = startBuild(["build", "-t", "conc-a", ctxA]);
    try {
      await waitFor(join(witness, "a-running"));
      const b = image(["build", "-t", "conc-b", ctxB]);
      assert.equal(b.status, 1, b.stderr);
      assert.match(b.stderr, /error: storage directory is already in use: /);
      assert.match(b.stderr, ERROR);
      // B left nothing, and A's partial is still there (B didn't clean it up as a leftover).
      assert.equal(existsSync(img("conc-b")), false);
      assert.equal(partials().length, 1);
      assert.match(partials()[0], /^conc-a\+latest\.partial-/);
    } finally {
      writeFileSync(go, "");
    }
    const ra = await a.done;
    assert.equal(ra.status, 0, ra.stderr);
    assert.equal(readFileSync(img("conc-a", "a.txt"), "utf8"), "a\n");
    assert.deepEqual(partials(), []);
    // Storage is usable afterwards: B again succeeds.
    const b2 = image(["build", "-t", "conc-b", ctxB]);
    assert.equal(b2.status, 0, b2.stderr);
    assert.equal(readFileSync(img("conc-b", "b.txt"), "utf8"), "b\n");
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
      assert.equal(partials().length, 1);
    } finally {
      process.kill(-k.pid, "SIGKILL");
      r = await k.done;
    }
    assert.equal(r.signal, "SIGKILL");
    assert.equal(existsSync(img("killed")), false);
    assert.equal(partials().length, 1); // what kill -9 leaves
    rmSync(slow);
    const again = image(["build", "-t", "killed", ctx]);
    assert.equal(again.status, 0, again.stderr);
    assert.equal(readFileSync(img("killed", "runs"), "utf8"), "run\n");
    assert.equal(readFileSync(img("killed", "done"), "utf8"), "done\n");
    assert.deepEqual(partials(), []);
    assert.deepEqual(
      readdirSync(storage).filter((n) => n === "tmp"),
      [],
    );
  });
});
