// ch-image build's cache (the built binary, as an ordinary user, FROM a busybox image imported
// into storage): hits run nothing and misses rerun only what follows (counted by RUNs that
// append to files in a host directory the containers see at the same path), a COPY source
// edited with the same size and mtime misses, whiteouts and opaque directories reach the image,
// --no-cache and --rebuild, kill -9 mid-build then a rebuild, two builds at once, build-cache
// --tree/--gc/--reset, delete then undelete, list -u, gestalt bucache.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cleanup, DIST, importBusybox, type Result, run, tmp } from "../helpers.ts";

const IMAGE = join(DIST, "ch-image");

let dir: string;
let storage: string;
/** A host directory the containers see at the same path (ch-run binds the host's /tmp). */
let witness: string;

function image(args: string[], env: Record<string, string> = {}): Result {
  return run(IMAGE, args, { cwd: dir, env: { ...process.env, CH_IMAGE_STORAGE: storage, ...env } });
}

/** A build context with a Dockerfile and files. */
function context(name: string, dockerfile: string, files: Record<string, string> = {}): string {
  const ctx = join(dir, name);
  mkdirSync(ctx, { recursive: true });
  writeFileSync(join(ctx, "Dockerfile"), dockerfile);
  for (const [p, v] of Object.entries(files)) writeFileSync(join(ctx, p), v);
  return ctx;
}

const img = (name: string, ...path: string[]) => join(storage, "img", `${name}+latest`, ...path);
const text = (p: string) => readFileSync(p, "utf8");
const lines = (p: string) => (existsSync(p) ? text(p).split("\n").filter(Boolean).length : 0);
/** The step lines of a build's output: "1*" for a hit, "1." for a miss. */
const steps = (r: Result) => [...r.stderr.matchAll(/^ +(\d+)([.*]) /gm)].map((m) => `${m[1]}${m[2]}`);
const cacheDir = () => join(storage, "dlcache", "build-cache");
const stateCount = () => {
  const r = image(["build-cache"]);
  assert.equal(r.status, 0, r.stderr);
  return Number(/^states: +(\d+)$/m.exec(r.stdout)?.[1]);
};

/** Every entry under a directory: type, permission bits, a file's content digest or a link's
 * target (not times: a copy's directories get new ones). */
function snapshot(path: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string, rel: string) => {
    const st = lstatSync(p);
    let what = `${st.mode.toString(8)}`;
    if (st.isSymbolicLink()) what += ` -> ${readlinkSync(p)}`;
    else if (st.isFile()) what += ` ${createHash("sha256").update(readFileSync(p)).digest("hex")}`;
    out[rel] = what;
    if (st.isDirectory()) for (const e of readdirSync(p).sort()) walk(join(p, e), `${rel}/${e}`);
  };
  walk(path, ".");
  return out;
}

before(() => {
  dir = tmp("ch-bucache-");
  storage = join(dir, "storage");
  witness = mkdtempSync("/tmp/ch-witness-");
  importBusybox(dir, image);
});
after(() => {
  cleanup(dir);
  cleanup(witness);
});

describe("ch-image build cache", () => {
  it("hits run nothing; a COPY source edited with the same size and mtime misses, and only what follows reruns", () => {
    const w = join(witness, "hits");
    mkdirSync(w);
    const ctx = context(
      "hits",
      `FROM bb\nRUN echo x >> ${w}/first\nCOPY a.txt /a.txt\nRUN echo x >> ${w}/last && cat /a.txt > /copied\nENV DONE=yes\n`,
      { "a.txt": "one\n" },
    );
    const a = join(ctx, "a.txt");
    utimesSync(a, 1_700_000_000, 1_700_000_000);
    const r1 = image(["build", "-t", "hits", ctx]);
    assert.equal(r1.status, 0, r1.stderr);
    assert.deepEqual(steps(r1).slice(1), ["2.", "3.", "4.", "5."]);
    assert.equal(text(img("hits", "copied")), "one\n");
    const child = context("hits-child", "FROM hits\nRUN cat /copied > /seen\n");
    const c1 = image(["build", "-t", "hits-child", child]);
    assert.equal(c1.status, 0, c1.stderr);
    assert.equal(text(img("hits-child", "seen")), "one\n");
    // All hits: nothing runs, nothing is copied.
    const r2 = image(["build", "-t", "hits", ctx]);
    assert.equal(r2.status, 0, r2.stderr);
    assert.deepEqual(steps(r2), ["1*", "2*", "3*", "4*", "5*"]);
    assert.match(r2.stderr, /nothing to copy/);
    assert.equal(lines(join(w, "first")), 1);
    assert.equal(lines(join(w, "last")), 1);
    // Same size, same mtime, other content: Charliecloud's key (path, mode, size, mtime) would hit.
    const st = statSync(a);
    writeFileSync(a, "two\n");
    utimesSync(a, 1_700_000_000, 1_700_000_000);
    assert.equal(statSync(a).mtimeMs, st.mtimeMs);
    assert.equal(statSync(a).size, st.size);
    const r3 = image(["build", "-t", "hits", ctx]);
    assert.equal(r3.status, 0, r3.stderr);
    assert.deepEqual(steps(r3), ["1*", "2*", "3.", "4.", "5."]);
    assert.equal(lines(join(w, "first")), 1, "the RUN before the change didn't run again");
    assert.equal(lines(join(w, "last")), 2, "the RUN after it did");
    assert.equal(text(img("hits", "copied")), "two\n");
    assert.equal(text(img("hits", "a.txt")), "two\n");
    assert.match(r3.stderr, /updated in place: 2 layer\(s\) undone, 2 applied/);
    assert.equal(JSON.parse(text(img("hits", "ch/metadata.json"))).env.DONE, "yes");
    // An image built FROM this one sees its update in place (same directory, new content).
    const c2 = image(["build", "-t", "hits-child", child]);
    assert.equal(c2.status, 0, c2.stderr);
    assert.deepEqual(steps(c2), ["1.", "2."]);
    assert.equal(text(img("hits-child", "seen")), "two\n");
    // The same Dockerfile under another name: all hits, the image made whole.
    const r4 = image(["build", "-t", "hits2", ctx]);
    assert.equal(r4.status, 0, r4.stderr);
    assert.deepEqual(steps(r4), ["1*", "2*", "3*", "4*", "5*"]);
    assert.equal(text(img("hits2", "copied")), "two\n");
    assert.equal(text(img("hits2", "bin/busybox")).slice(0, 4), "\x7fELF");
  });

  it("RUN that deletes and replaces: whiteouts and opaque directories reach the image, in place and whole", () => {
    const base = "FROM bb\nRUN echo x > /gone && mkdir -p /dir/sub && echo y > /dir/sub/f && echo k > /dir/keep\n";
    const ctx = context("wh", base);
    const r1 = image(["build", "-t", "wh", ctx]);
    assert.equal(r1.status, 0, r1.stderr);
    assert.equal(text(img("wh", "dir/sub/f")), "y\n");
    writeFileSync(
      join(ctx, "Dockerfile"),
      `${base}RUN rm /gone /bin/rm && rm -r /dir && mkdir /dir && echo z > /dir/new\nRUN ls /dir > /listing\n`,
    );
    const r2 = image(["build", "-t", "wh", ctx]);
    assert.equal(r2.status, 0, r2.stderr);
    assert.deepEqual(steps(r2), ["1*", "2*", "3.", "4."]);
    assert.match(r2.stderr, /updated in place/);
    const r3 = image(["build", "-t", "wh-whole", ctx]);
    assert.equal(r3.status, 0, r3.stderr);
    for (const name of ["wh", "wh-whole"]) {
      assert.equal(existsSync(img(name, "gone")), false, name);
      assert.equal(existsSync(img(name, "bin/rm")), false, `${name}: a file of the base image deleted`);
      assert.deepEqual(readdirSync(img(name, "dir")), ["new"], name);
      assert.equal(text(img(name, "listing")), "new\n", `${name}: the RUN after saw the merged tree`);
      assert.equal(existsSync(img(name, "bin/busybox")), true);
    }
    // The last RUN changed: its old layer undone in place (what it wrote is gone), the new one
    // applied; what the RUN before deleted stays deleted.
    writeFileSync(
      join(ctx, "Dockerfile"),
      `${base}RUN rm /gone /bin/rm && rm -r /dir && mkdir /dir && echo z > /dir/new\nRUN echo o > /other\n`,
    );
    const r4 = image(["build", "-t", "wh", ctx]);
    assert.equal(r4.status, 0, r4.stderr);
    assert.deepEqual(steps(r4), ["1*", "2*", "3*", "4."]);
    assert.match(r4.stderr, /updated in place: 1 layer\(s\) undone, 1 applied/);
    assert.equal(existsSync(img("wh", "listing")), false);
    assert.equal(text(img("wh", "other")), "o\n");
    assert.equal(existsSync(img("wh", "gone")), false);
    assert.deepEqual(readdirSync(img("wh", "dir")), ["new"]);
    // Back to the first Dockerfile: the deletions undone (the base image's /bin/rm back).
    writeFileSync(join(ctx, "Dockerfile"), base);
    const r5 = image(["build", "-t", "wh", ctx]);
    assert.equal(r5.status, 0, r5.stderr);
    assert.deepEqual(steps(r5), ["1*", "2*"]);
    assert.match(r5.stderr, /updated in place: 2 layer\(s\) undone, 0 applied/);
    assert.equal(text(img("wh", "gone")), "x\n");
    assert.equal(existsSync(img("wh", "bin/rm")), true);
    assert.deepEqual(readdirSync(img("wh", "dir")).sort(), ["keep", "sub"]);
    assert.equal(text(img("wh", "dir/sub/f")), "y\n");
    assert.equal(existsSync(img("wh", "other")), false);
    // Updated in place four times, it is what a build under a new name makes whole.
    assert.equal(image(["build", "-t", "wh-fresh", ctx]).status, 0);
    assert.deepEqual(snapshot(img("wh")), snapshot(img("wh-fresh")));
  });

  it("ADD of a tarball goes through the image's symlinks and keeps its directories' modes (layers below the upper)", () => {
    const ctx = context(
      "addtar",
      "FROM bb\nRUN mkdir -p /usr/lib2 /opt2 && chmod 700 /opt2 && ln -s usr/lib2 /lib2\nADD t.tar /\n",
    );
    const t = join(dir, "addtar-members");
    mkdirSync(join(t, "lib2"), { recursive: true });
    mkdirSync(join(t, "opt2"));
    writeFileSync(join(t, "lib2", "x"), "x\n");
    writeFileSync(join(t, "opt2", "y"), "y\n");
    // Members only: no directory members, whose modes would be the archive's.
    const tr = run("tar", ["-C", t, "-cf", join(ctx, "t.tar"), "lib2/x", "opt2/y"]);
    assert.equal(tr.status, 0, tr.stderr);
    const r = image(["build", "-t", "addtar", ctx]);
    assert.equal(r.status, 0, r.stderr);
    // As unpacking into the image directory itself does (and Docker): /lib2 stays a symlink,
    // its member lands where it points; /opt2 keeps mode 700.
    assert.equal(lstatSync(img("addtar", "lib2")).isSymbolicLink(), true);
    assert.equal(text(img("addtar", "usr/lib2/x")), "x\n");
    assert.equal(lstatSync(img("addtar", "opt2")).mode & 0o7777, 0o700);
    assert.equal(text(img("addtar", "opt2/y")), "y\n");
    // A member through a file of the image: refused, as in a plain directory (not a directory
    // over the file).
    const ctx2 = context("addtar2", "FROM bb\nRUN echo f > /f2\nADD t.tar /\n");
    mkdirSync(join(t, "f2"));
    writeFileSync(join(t, "f2", "x"), "x\n");
    const tr2 = run("tar", ["-C", t, "-cf", join(ctx2, "t.tar"), "f2/x"]);
    assert.equal(tr2.status, 0, tr2.stderr);
    const r2 = image(["build", "-t", "addtar2", ctx2]);
    assert.notEqual(r2.status, 0);
    assert.match(r2.stderr, /not a directory: \/f2/);
  });

  it("a RUN's FIFO reaches the image as a FIFO (mode and mtime kept), built whole and updated in place", () => {
    const base = "FROM bb\nRUN busybox mkfifo -m 640 /fifo && busybox touch -d @978307200 /fifo\n";
    const ctx = context("fifo", base);
    const r1 = image(["build", "-t", "fifo", ctx]);
    assert.equal(r1.status, 0, r1.stderr);
    writeFileSync(join(ctx, "Dockerfile"), `${base}RUN busybox mkfifo -m 600 /fifo2\n`);
    const r2 = image(["build", "-t", "fifo", ctx]);
    assert.equal(r2.status, 0, r2.stderr);
    assert.match(r2.stderr, /updated in place/);
    for (const [p, mode] of [
      ["fifo", 0o640],
      ["fifo2", 0o600],
    ] as const) {
      const st = lstatSync(img("fifo", p));
      assert.ok(st.isFIFO(), p);
      assert.equal(st.mode & 0o7777, mode, p);
    }
    assert.equal(lstatSync(img("fifo", "fifo")).mtime.toISOString(), "2001-01-01T00:00:00.000Z");
  });

  it("--no-cache and $CH_IMAGE_CACHE=disabled run everything and keep nothing; --rebuild runs all but FROM", () => {
    const w = join(witness, "nocache");
    mkdirSync(w);
    const ctx = context("nocache", `FROM bb\nRUN echo x >> ${w}/n\nRUN echo y > /y\n`);
    assert.equal(image(["build", "-t", "nc", ctx]).status, 0);
    const n = stateCount();
    const r = image(["build", "--no-cache", "-t", "nc", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(steps(r), ["1.", "2.", "3."]);
    const e = image(["build", "-t", "nc", ctx], { CH_IMAGE_CACHE: "disabled" });
    assert.equal(e.status, 0, e.stderr);
    assert.deepEqual(steps(e), ["1.", "2.", "3."]);
    assert.equal(lines(join(w, "n")), 3);
    assert.equal(stateCount(), n, "nothing kept");
    assert.equal(text(img("nc", "y")), "y\n");
    assert.deepEqual(readdirSync(join(cacheDir(), "tmp")), [], "the throwaway cache removed");
    // (Its FROM layer was the image in storage itself, linked: the link removed, not the image.)
    assert.equal(text(img("bb", "etc/passwd")), "root:x:0:0:root:/root:/bin/sh\n");
    assert.equal(existsSync(img("nc", "bin/busybox")), true);
    assert.equal(image(["build", "-t", "nc-other", ctx]).status, 0);
    const rb = image(["build", "--rebuild", "-t", "nc", ctx]);
    assert.equal(rb.status, 0, rb.stderr);
    assert.deepEqual(steps(rb), ["1*", "2.", "3."]);
    assert.equal(lines(join(w, "n")), 4);
    // Another image of those states no longer trusts its record (their layers were replaced).
    const other = image(["build", "-t", "nc-other", ctx]);
    assert.deepEqual(steps(other), ["1*", "2*", "3*"]);
    assert.doesNotMatch(other.stderr, /nothing to copy/);
    assert.match(other.stderr, /replacing existing image/);
    const hit = image(["build", "-t", "nc", ctx]);
    assert.deepEqual(steps(hit), ["1*", "2*", "3*"]);
    assert.equal(text(img("nc", "y")), "y\n");
  });

  it("an image changed by ch-run -w --unsafe or ch-fromhost is made whole again by the next build, all hits or not", () => {
    const ctx = context("modified", "FROM bb\nRUN echo built > /f && echo keep > /g\n");
    const chRun = join(DIST, "ch-run");
    const env = { ...process.env, CH_IMAGE_STORAGE: storage };
    assert.equal(image(["build", "-t", "modified", ctx]).status, 0);
    const whole = snapshot(img("modified"));
    // Changed in place by the user, by name: the all-hit rebuild puts it back.
    let c = run(chRun, ["-w", "--unsafe", "modified", "--", "sh", "-c", "echo changed > /f; rm /g; echo new > /h"], { env });
    assert.equal(c.status, 0, c.stderr);
    assert.equal(text(img("modified", "f")), "changed\n");
    let r = image(["build", "-t", "modified", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(steps(r), ["1*", "2*"]);
    assert.deepEqual(snapshot(img("modified")), whole);
    // By path (--unsafe), then a changed RUN: no update in place over the user's change.
    c = run(chRun, ["-w", "--unsafe", img("modified"), "--", "sh", "-c", "echo again > /f; echo new > /h"], { env });
    assert.equal(c.status, 0, c.stderr);
    writeFileSync(join(ctx, "Dockerfile"), "FROM bb\nRUN echo built > /f && echo keep > /g\nRUN echo more > /m\n");
    r = image(["build", "-t", "modified", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(text(img("modified", "f")), "built\n");
    assert.ok(!existsSync(img("modified", "h")), "the user's file is gone: the image is what the Dockerfile makes");
    assert.equal(text(img("modified", "m")), "more\n");
    // ch-fromhost injects into the image in storage: the next build doesn't trust it either.
    const injected = join(dir, "injected.txt");
    writeFileSync(injected, "from the host\n");
    const f = run(join(DIST, "ch-fromhost"), ["--no-ldconfig", "-d", "/opt", "-p", injected, "modified"], { env });
    assert.equal(f.status, 0, f.stderr);
    assert.ok(existsSync(img("modified", "opt", "injected.txt")));
    r = image(["build", "-t", "modified", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(steps(r), ["1*", "2*", "3*"]);
    assert.ok(!existsSync(img("modified", "opt", "injected.txt")));
  });

  it("ch-run -w --unsafe writes nothing in the build cache of a storage directory that isn't safe (writable by others)", () => {
    const ctx = context("foreign", "FROM bb\nRUN echo built > /f\n");
    assert.equal(image(["build", "-t", "foreign", ctx]).status, 0);
    const tag = join(cacheDir(), "tags", "foreign+latest.json");
    assert.ok(existsSync(tag));
    const mode = statSync(storage).mode & 0o7777;
    chmodSync(storage, mode | 0o002);
    let c: Result;
    try {
      c = run(join(DIST, "ch-run"), ["-w", "--unsafe", img("foreign"), "--", "true"], {
        env: { ...process.env, CH_IMAGE_STORAGE: storage },
      });
    } finally {
      chmodSync(storage, mode);
    }
    assert.equal(c.status, 0, c.stderr);
    assert.ok(existsSync(tag), "the record stays: this run didn't trust the storage directory enough to write in it");
    assert.ok(!existsSync(join(cacheDir(), "changed", "foreign+latest")));
    // Safe again: the same run makes the cache forget.
    c = run(join(DIST, "ch-run"), ["-w", "--unsafe", img("foreign"), "--", "true"], {
      env: { ...process.env, CH_IMAGE_STORAGE: storage },
    });
    assert.equal(c.status, 0, c.stderr);
    assert.ok(!existsSync(tag));
    assert.ok(existsSync(join(cacheDir(), "changed", "foreign+latest")));
  });

  it("build-cache refuses a storage directory that isn't safe (writable by others), even only to list", () => {
    const mode = statSync(storage).mode & 0o7777;
    chmodSync(storage, mode | 0o002);
    let r: Result;
    try {
      r = image(["build-cache", "--tree"]);
    } finally {
      chmodSync(storage, mode);
    }
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /storage directory unusable: .* is writable by others .*fix: chmod go-w/);
    assert.equal(r.stdout, "");
  });

  it("FROM an image changed in place by ch-run -w --unsafe: the build sees the change (FROM misses)", () => {
    const chRun = join(DIST, "ch-run");
    const env = { ...process.env, CH_IMAGE_STORAGE: storage };
    assert.equal(image(["import", join(dir, "bb.tar"), "bbase"]).status, 0);
    const set = (v: string) => {
      const c = run(chRun, ["-w", "--unsafe", "bbase", "--", "sh", "-c", `mkdir -p /opt/v && echo ${v} > /opt/v/version`], {
        env,
      });
      assert.equal(c.status, 0, c.stderr);
    };
    set("v1");
    const ctx = context("from-changed", "FROM bbase\nRUN cat /opt/v/version > /seen\n");
    let r = image(["build", "-t", "from-changed", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(text(img("from-changed", "seen")), "v1\n");
    // The file's content changes in place: no directory entry of the image changes.
    const before = statSync(join(storage, "img", "bbase+latest")).ctimeMs;
    set("v2");
    assert.equal(statSync(join(storage, "img", "bbase+latest")).ctimeMs, before);
    r = image(["build", "-t", "from-changed", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(steps(r), ["1.", "2."]);
    assert.equal(text(img("from-changed", "seen")), "v2\n");
    // Unchanged since: hits again.
    r = image(["build", "-t", "from-changed", ctx]);
    assert.deepEqual(steps(r), ["1*", "2*"]);
  });

  it("kill -9 in the middle of a RUN: the next build finishes, and nothing half-written is used", async () => {
    const w = join(witness, "kill");
    mkdirSync(w);
    writeFileSync(join(w, "slow"), "");
    const ctx = context(
      "kill",
      `FROM bb\nRUN echo before > /before\nRUN echo partial > /partial && if [ -e ${w}/slow ]; then touch ${w}/started; sleep 60; fi; echo done > /result\n`,
    );
    const child = spawn(IMAGE, ["build", "-t", "killed", ctx], {
      cwd: dir,
      env: { ...process.env, CH_IMAGE_STORAGE: storage },
      detached: true,
      stdio: "ignore",
    });
    const exited = new Promise((res) => child.on("exit", res));
    for (let i = 0; i < 600 && !existsSync(join(w, "started")); i++) await new Promise((res) => setTimeout(res, 100));
    assert.ok(existsSync(join(w, "started")), "the RUN started");
    process.kill(-(child.pid as number), "SIGKILL");
    await exited;
    assert.equal(existsSync(img("killed")), false);
    rmSync(join(w, "slow"));
    const r = image(["build", "-t", "killed", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(steps(r), ["1*", "2*", "3."]);
    assert.equal(text(img("killed", "result")), "done\n");
    assert.equal(text(img("killed", "partial")), "partial\n");
    assert.deepEqual(readdirSync(join(cacheDir(), "tmp")), [], "what the killed build left removed");
    assert.deepEqual(
      readdirSync(join(storage, "img")).filter((n) => n.includes(".partial-")),
      [],
    );
  });

  it("two builds at once in one storage directory both finish", async () => {
    const w = join(witness, "two");
    mkdirSync(w);
    const go = (tag: string) => {
      const ctx = context(`two-${tag}`, `FROM bb\nRUN echo ${tag} > /who && sleep 1\nRUN echo ${tag} >> ${w}/ran\n`);
      const c = spawn(IMAGE, ["build", "-t", tag, ctx], { cwd: dir, env: { ...process.env, CH_IMAGE_STORAGE: storage } });
      let err = "";
      c.stderr.on("data", (d) => {
        err += d;
      });
      return new Promise<[number | null, string]>((res) => c.on("close", (code) => res([code, err])));
    };
    const [[a, ea], [b, eb]] = await Promise.all([go("twoa"), go("twob")]);
    assert.equal(a, 0, ea);
    assert.equal(b, 0, eb);
    assert.equal(text(img("twoa", "who")), "twoa\n");
    assert.equal(text(img("twob", "who")), "twob\n");
    assert.equal(lines(join(w, "ran")), 2);
  });

  it("build-cache --tree shows the states and the images; --gc keeps what images need; --reset empties it", () => {
    const w = join(witness, "gc");
    mkdirSync(w);
    const ctx = context("gc", `FROM bb\nRUN echo 1 > /v\n`);
    assert.equal(image(["build", "-t", "gc", ctx]).status, 0);
    const t = image(["build-cache", "--tree"]);
    assert.equal(t.status, 0, t.stderr);
    assert.match(t.stdout, /^layers: +\d+ \(/m);
    assert.match(t.stdout, /^ {2}\* [0-9a-f]{12} RUN echo 1 > \/v \[\d+ entries, .+\] <- gc:latest$/m);
    assert.match(t.stdout, /^\* [0-9a-f]{12} FROM bb \[flat /m);
    writeFileSync(join(ctx, "Dockerfile"), `FROM bb\nRUN echo 2 > /v\n`);
    assert.equal(image(["build", "-t", "gc", ctx]).status, 0);
    const n = stateCount();
    const g = image(["build-cache", "--gc"]);
    assert.equal(g.status, 0, g.stderr);
    assert.match(g.stderr, /garbage collected: [1-9]\d* state\(s\), [1-9]\d* layer\(s\) removed/);
    assert.ok(stateCount() < n);
    // What images need stays: rebuilding them hits.
    const again = image(["build", "-t", "gc", ctx]);
    assert.deepEqual(steps(again), ["1*", "2*"]);
    const hits = image(["build", "-t", "hits", join(dir, "hits")]);
    assert.deepEqual(steps(hits), ["1*", "2*", "3*", "4*", "5*"]);
    const reset = image(["build-cache", "--reset"]);
    assert.equal(reset.status, 0, reset.stderr);
    assert.match(reset.stdout, /^states: +0$/m);
    const cold = image(["build", "-t", "gc", ctx]);
    assert.equal(cold.status, 0, cold.stderr);
    assert.deepEqual(steps(cold), ["1.", "2."]);
    assert.equal(text(img("gc", "v")), "2\n");
  });

  it("a chain deeper than one overlay mount takes is squashed into a flat layer", () => {
    const runs = Array.from({ length: 27 }, (_, i) => `RUN echo ${i} > /f${i}\n`).join("");
    const ctx = context("deep", `FROM bb\n${runs}RUN ls / | grep -c '^f' > /count\n`);
    const r = image(["build", "-t", "deep", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(text(img("deep", "count")), "27\n");
    for (const i of [0, 13, 26]) assert.equal(text(img("deep", `f${i}`)), `${i}\n`);
    const t = image(["build-cache", "--tree"]);
    assert.match(t.stdout, /^ {2,}\* [0-9a-f]{12} RUN echo \d+ > \/f\d+ \[flat /m);
    // A change after the squash: the image is made whole again (a flat layer is no difference).
    writeFileSync(join(ctx, "Dockerfile"), `FROM bb\n${runs}RUN echo changed > /count\n`);
    const c = image(["build", "-t", "deep", ctx]);
    assert.equal(c.status, 0, c.stderr);
    assert.equal(text(img("deep", "count")), "changed\n");
    assert.equal(text(img("deep", "f26")), "26\n");
  });

  it("ch-run takes build layers only with --unsafe, and only well-formed", () => {
    const ch = join(DIST, "ch-run");
    const env = (v: string) => ({ env: { ...process.env, CH_RUN_BUILD_LAYERS: v } });
    const layers = JSON.stringify({ lower: [img("bb")], upper: join(dir, "u"), work: join(dir, "w") });
    const safe = run(ch, [img("bb"), "--", "true"], env(layers));
    assert.equal(safe.status, 31);
    assert.match(safe.stderr, /\$CH_RUN_BUILD_LAYERS: internal use only \(with --unsafe\)/);
    const bad = run(ch, ["--unsafe", img("bb"), "--", "true"], env('{"lower":"x"}'));
    assert.equal(bad.status, 31);
    assert.match(bad.stderr, /\$CH_RUN_BUILD_LAYERS: invalid: /);
    const join_ = run(ch, ["--unsafe", "--join-pid", String(process.pid), img("bb"), "--", "true"], env(layers));
    assert.equal(join_.status, 31);
    assert.match(join_.stderr, /--join: not with build layers/);
  });

  const debian = process.env.CH_TEST_DEBIAN_IMAGE;
  it("a Debian image: a changed last RUN after hits updates the image in place to what a whole build makes", {
    skip: debian ? false : "needs a Debian image (.ci/setup-debian.sh sets CH_TEST_DEBIAN_IMAGE)",
  }, () => {
    const i = image(["import", debian as string, "deb"]);
    assert.equal(i.status, 0, i.stderr);
    const base =
      "FROM deb\nARG V=1\nENV E=2\nWORKDIR /w\nRUN rm -rf /usr/share/doc /var/lib/dpkg/info/*.md5sums && echo x > /etc/motd\n";
    const ctx = context("deb", `${base}RUN dpkg -l > /w/pkgs\n`);
    const r1 = image(["build", "-t", "debc", ctx]);
    assert.equal(r1.status, 0, r1.stderr);
    writeFileSync(join(ctx, "Dockerfile"), `${base}RUN rm -r /usr/share/man && ls /usr/share > /w/share\n`);
    const r2 = image(["build", "-t", "debc", ctx]);
    assert.equal(r2.status, 0, r2.stderr);
    assert.deepEqual(steps(r2), ["1*", "2*", "3*", "4*", "5*", "6."]);
    assert.match(r2.stderr, /updated in place: 1 layer\(s\) undone, 1 applied/);
    assert.equal(existsSync(img("debc", "usr/share/doc")), false);
    assert.equal(existsSync(img("debc", "usr/share/man")), false);
    assert.equal(existsSync(img("debc", "w/pkgs")), false);
    assert.equal(text(img("debc", "etc/motd")), "x\n");
    assert.equal(image(["build", "-t", "debc-whole", ctx]).status, 0);
    assert.deepEqual(snapshot(img("debc")), snapshot(img("debc-whole")));
  });

  it("delete, list -u, undelete; gestalt bucache", () => {
    const ctx = context("undel", `FROM bb\nRUN echo keep > /k\nLABEL x=y\n`);
    assert.equal(image(["build", "-t", "undel", ctx]).status, 0);
    const d = image(["delete", "undel*"]);
    assert.equal(d.status, 0, d.stderr);
    assert.equal(existsSync(img("undel")), false);
    assert.match(image(["list", "-u"]).stdout, /^undel:latest$/m);
    // Deleted images' states are kept by --gc (they can be undeleted).
    assert.equal(image(["build-cache", "--gc"]).status, 0);
    const u = image(["undelete", "undel"]);
    assert.equal(u.status, 0, u.stderr);
    assert.equal(text(img("undel", "k")), "keep\n");
    assert.equal(JSON.parse(text(img("undel", "ch/metadata.json"))).labels.x, "y");
    assert.doesNotMatch(image(["list", "-u"]).stdout, /undel/);
    // The restored image is the build's: a rebuild copies nothing.
    const r = image(["build", "-t", "undel", ctx]);
    assert.match(r.stderr, /nothing to copy/);
    const again = image(["undelete", "undel"]);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /image still exists, not undeleting: undel:latest/);
    const none = image(["undelete", "never-built"]);
    assert.equal(none.status, 1);
    assert.match(none.stderr, /no deleted image to undelete in the build cache: never-built:latest/);
    assert.equal(image(["gestalt", "bucache"]).status, 0);
  });
});
