// The single executable: programs by argv[0], a copy that runs with no Node anywhere.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  watch,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, CH_RUN, cleanup, DIST, type Result, ROOT, run, tmp } from "../helpers.ts";

const PROGRAMS = ["ch-run", "ch-image", "ch-convert", "ch-tar2dir", "ch-fromhost", "ch-checkns"];
const UID = process.geteuid?.() ?? 0;
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
/** The module the build embeds. */
const KOFFI_SHA = sha(
  readFileSync(join(ROOT, `node_modules/@koromix/koffi-linux-${process.arch}/linux_${process.arch}/koffi.node`)),
);
/** The native modules in a directory. */
const modules = (d: string) => (existsSync(d) ? readdirSync(d).filter((f) => f.endsWith(".node")) : []);
let dir: string;

function runAsync(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<Result> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    c.stdout.on("data", (d: Buffer) => {
      stdout += d;
    });
    c.stderr.on("data", (d: Buffer) => {
      stderr += d;
    });
    c.on("close", (status, signal) => resolve({ status, signal, stdout, stderr }));
  });
}

before(() => {
  dir = tmp();
});
after(() => cleanup(dir));

describe("one executable", () => {
  it("answers --version and --help as every program", () => {
    // One version, package.json's, with -V as with --version.
    const version = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
    for (const p of PROGRAMS) {
      for (const opt of ["--version", "-V"]) {
        const v = run(join(DIST, p), [opt]);
        assert.equal(v.status, 0, `${p} ${opt}`);
        // ch-run's as Charliecloud's: the version alone, on stderr.
        if (p === "ch-run") assert.deepEqual([v.stdout, v.stderr], ["", `${version}\n`]);
        else assert.deepEqual([v.stdout, v.stderr], [`${p} (Charliecloud) ${version}\n`, ""], `${p} ${opt}`);
      }
      const h = run(join(DIST, p), ["--help"]);
      assert.equal(h.status, 0, p);
      assert.match(h.stdout, new RegExp(`^Usage: ${p} `));
    }
  });

  it("runs a program named as its first argument", () => {
    const version = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
    for (const opt of ["--version", "-V"])
      assert.equal(run(join(DIST, "charliecloud"), [opt]).stdout, `charliecloud ${version}\n`);
    const r = run(join(DIST, "charliecloud"), ["ch-image", "--version"]);
    assert.match(r.stdout, /^ch-image \(Charliecloud\)/);
    assert.match(run(join(DIST, "charliecloud"), ["ch-run", "--help"]).stdout, /^Usage: ch-run /);
    const u = run(join(DIST, "charliecloud"), ["no-such-program"]);
    assert.equal(u.status, 1);
    assert.match(u.stderr, /unknown program: no-such-program/);
  });

  it("ignores NODE_OPTIONS meant for the user's own Node programs", () => {
    const r = run(join(DIST, "ch-run"), ["--help"], { env: { ...process.env, NODE_OPTIONS: "--require /nonexistent.js" } });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^Usage: ch-run /);
  });

  it("every program is built: misuse gets an error line in Charliecloud's format", () => {
    const r = run(join(DIST, "ch-fromhost"), []);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^ch-fromhost\[\d+\]: error: no image specified \(usage: .*\)\n$/);
    const c = run(join(DIST, "ch-checkns"), ["extra"]);
    assert.equal(c.status, 1);
    assert.match(c.stderr, /^ch-checkns\[\d+\]: error: no arguments expected: extra\n$/);
  });

  it("loads its native module only from a private directory, and re-verifies it", () => {
    const img = busyboxImage(dir, "native-img");
    const cache = join(dir, "cache");
    mkdirSync(cache, { mode: 0o700 }); // $XDG_RUNTIME_DIR is made by the login, never by us
    const env = { ...process.env, XDG_RUNTIME_DIR: cache, XDG_CACHE_HOME: cache };
    // --join takes the clone path, which always needs libc (the fast path loads the module only
    // for an inherited descriptor or a user /etc/passwd lacks, so it wouldn't test the loading).
    const args = ["--join-ct=1", "--join-tag=native", img, "--", "true"];
    assert.equal(run(join(DIST, "ch-run"), args, { env }).status, 0);
    const [name] = readdirSync(join(cache, "charliecloud")).filter((f) => f.endsWith(".node"));
    const file = join(cache, "charliecloud", name);
    const good = readFileSync(file);
    assert.equal(sha(good), KOFFI_SHA);
    // Tampered with: it is replaced from the copy inside the executable before loading.
    writeFileSync(file, "not a shared object");
    assert.equal(run(join(DIST, "ch-run"), args, { env }).status, 0);
    assert.ok(readFileSync(file).equals(good));
    // A directory others can write is refused, with what to do, when every place is such.
    const tmpd = join(dir, "native-tmp");
    mkdirSync(join(tmpd, `.charliecloud-${UID}`), { recursive: true });
    for (const d of [join(cache, "charliecloud"), join(tmpd, `.charliecloud-${UID}`)]) chmodSync(d, 0o777);
    const r = run(join(DIST, "ch-run"), args, { env: { ...env, TMPDIR: tmpd } });
    assert.equal(r.status, 31);
    assert.match(
      r.stderr,
      /^ch-run\[\d+\]: error: can't load the native FFI module: no private directory for the native module \(.*charliecloud: writable by others \(mode 777\); .*native-tmp\/\.charliecloud-\d+: writable by others \(mode 777\); .*cache\/charliecloud: writable by others \(mode 777\)\).*set XDG_CACHE_HOME/,
    );
  });

  it("without its native module (no private directory for it), error lines still have strerror(3)'s text", () => {
    const home = join(dir, "nolibc-home");
    const open = join(dir, "nolibc-open");
    mkdirSync(join(open, "charliecloud"), { recursive: true });
    mkdirSync(join(open, `.charliecloud-${UID}`));
    mkdirSync(home);
    for (const d of [open, join(open, "charliecloud"), join(open, `.charliecloud-${UID}`)]) chmodSync(d, 0o777);
    const env = { PATH: "/usr/bin:/bin", HOME: home, USER: "u", TMPDIR: open, XDG_CACHE_HOME: open, XDG_RUNTIME_DIR: open };
    const r = run(CH_RUN, ["/nonexistent", "--", "true"], { env });
    assert.equal(r.status, 31);
    assert.match(
      r.stderr,
      /^ch-run\[\d+\]: error: can't find image: \/nonexistent: No such file or directory \(image\.ts:\d+ 2\)\n$/,
    );
    const t = run(join(DIST, "ch-tar2dir"), [join(dir, "nolibc.tar"), join(dir, "nolibc-nowhere")], { env });
    assert.equal(t.status, 1);
    assert.match(t.stderr, /error: .*nolibc-nowhere.*: No such file or directory \([a-z-]+\.ts:\d+ 2\)\n$/);
    assert.deepEqual(modules(join(open, "charliecloud")), [], "the module was never written");
    assert.deepEqual(modules(join(open, `.charliecloud-${UID}`)), []);
  });

  it("prefers node-local directories ($XDG_RUNTIME_DIR, then $TMPDIR or /tmp) to a shared home", () => {
    const home = join(dir, "local-home");
    mkdirSync(home);
    const nodes = [1, 2, 3].map((i) => join(dir, `local-node${i}`));
    const env = (t: string) => ({ PATH: "/usr/bin:/bin", HOME: home, USER: "u", TMPDIR: t });
    for (const t of nodes) {
      mkdirSync(t);
      const r = run(CH_RUN, ["/nonexistent", "--", "true"], { env: env(t) });
      assert.match(r.stderr, /can't find image: \/nonexistent/);
      assert.equal(modules(join(t, `.charliecloud-${UID}`)).length, 1);
    }
    assert.ok(!existsSync(join(home, ".cache")), "nothing written in the home directory");
    const xdg = join(dir, "local-xdg");
    mkdirSync(xdg, { mode: 0o700 });
    run(CH_RUN, ["/nonexistent", "--", "true"], { env: { ...env(nodes[0]), XDG_RUNTIME_DIR: xdg } });
    assert.equal(modules(join(xdg, "charliecloud")).length, 1);
  });

  it("passes over a planted symlink, a parent anyone can rename things in, and another owner's directory", () => {
    const home = join(dir, "plant-home");
    const t = join(dir, "plant-tmp");
    const elsewhere = join(dir, "plant-elsewhere");
    for (const d of [home, t, elsewhere]) mkdirSync(d);
    chmodSync(elsewhere, 0o700);
    symlinkSync(elsewhere, join(t, `.charliecloud-${UID}`));
    const env = { PATH: "/usr/bin:/bin", HOME: home, USER: "u", TMPDIR: t };
    const r = run(CH_RUN, ["/nonexistent", "--", "true"], { env });
    assert.match(r.stderr, /can't find image: \/nonexistent/);
    assert.deepEqual(readdirSync(elsewhere), [], "nothing written through the symlink");
    assert.equal(modules(join(home, ".cache/charliecloud")).length, 1);
    const open = join(dir, "plant-open");
    mkdirSync(open);
    chmodSync(open, 0o777); // not sticky
    const r2 = run(CH_RUN, ["/nonexistent", "--", "true"], { env: { ...env, TMPDIR: open } });
    assert.match(r2.stderr, /can't find image: \/nonexistent/);
    assert.deepEqual(readdirSync(open), []);
    // A parent its group may write (not sticky) is no better: a member could swap our directory.
    const shared = join(dir, "plant-group");
    mkdirSync(shared);
    chmodSync(shared, 0o775);
    const r4 = run(CH_RUN, ["/nonexistent", "--", "true"], { env: { ...env, TMPDIR: shared } });
    assert.match(r4.stderr, /can't find image: \/nonexistent/);
    assert.deepEqual(readdirSync(shared), []);
    // Another user's directory at that name (another user can't be made here: in a user
    // namespace, a bind mount of /usr there shows as owned by an unmapped UID), and no other place.
    const theirs = join(dir, "plant-theirs");
    mkdirSync(theirs);
    // The first file ch-run needs from it: the descriptor helper, for an inherited descriptor.
    const script =
      'mkdir "$TMPDIR/.charliecloud-0" && mount --bind /usr "$TMPDIR/.charliecloud-0" && exec "$0" "$1" -- true 5<"$0"';
    const r3 = run("unshare", ["-Urm", "sh", "-c", script, CH_RUN, busyboxImage(dir, "plant-img")], {
      env: { PATH: "/usr/bin:/bin", USER: "u", TMPDIR: theirs },
    });
    assert.equal(r3.status, 31, r3.stderr);
    assert.match(
      r3.stderr,
      /can't load the descriptor helper: no private directory for the descriptor helper \(.*plant-theirs\/\.charliecloud-0: owned by UID 65534, not 0\)/,
    );
  });

  it("200 first starts at once sharing one home directory, no node-local place usable (noexec): none fails, the module is written once or a few times, whole", async (t) => {
    const home = join(dir, "shared-home");
    const cacheDir = join(home, ".cache", "charliecloud");
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
    chmodSync(join(home, ".cache"), 0o700);
    const nodeTmp = join(dir, "node-tmp");
    mkdirSync(nodeTmp);
    // Each module write is a file made aside under a name of its own, then renamed.
    const writes = new Set<string>();
    const watcher = watch(cacheDir, (_event, f) => {
      if (f && /\.node\.[^/]+\.tmp$/.test(f) && !f.includes(".verified.")) writes.add(f);
    });
    // Each start in a mount namespace of its own, as on a node of its own, with $TMPDIR a
    // tmpfs mounted noexec there (so the module can't be loaded from it); all held at a gate (a
    // lock that this test holds) until every one is ready, then let go at once.
    const gate = join(dir, "gate");
    writeFileSync(gate, "");
    const holder = spawn("flock", ["-x", gate, "sh", "-c", "echo held; cat >/dev/null"], { stdio: ["pipe", "pipe", "inherit"] });
    await new Promise((r) => holder.stdout.once("data", r));
    const script = 'mount -t tmpfs -o noexec tmpfs "$TMPDIR" && flock -s "$1" true && exec "$0" /nonexistent -- true';
    const env = { PATH: "/usr/bin:/bin", HOME: home, USER: "u", TMPDIR: nodeTmp };
    const running = Array.from({ length: 200 }, () => runAsync("unshare", ["-Urm", "sh", "-c", script, CH_RUN, gate], env));
    await new Promise((r) => setTimeout(r, 2000));
    holder.stdin.end();
    const results = await Promise.all(running);
    await new Promise((r) => setTimeout(r, 300));
    watcher.close();
    for (const r of results) {
      assert.equal(r.status, 31, r.stderr);
      assert.match(r.stderr, /^ch-run\[\d+\]: error: can't find image: \/nonexistent/, r.stderr);
    }
    t.diagnostic(`module written ${writes.size} time(s) by 200 starts`);
    assert.ok(writes.size >= 1 && writes.size <= 5, `module written ${writes.size} times: ${[...writes].join(" ")}`);
    const [mod] = modules(cacheDir);
    assert.equal(sha(readFileSync(join(cacheDir, mod))), KOFFI_SHA);
    assert.deepEqual(readdirSync(cacheDir).sort(), [mod, `${mod}.verified`], "no temporary file or lock left");
  });

  it("runs ch-run's own bundle as ch-run, the whole one otherwise, each with its code cache taken", () => {
    const img = busyboxImage(dir, "loader-img");
    for (const [cmd, args, bundle] of [
      [join(DIST, "ch-run"), [], "ch-run"],
      [join(DIST, "charliecloud"), ["ch-run"], "ch"],
    ] as const) {
      const r = run(cmd, [...args, "-vv", img, "--", "/bin/true"]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, new RegExp(`^ch-run\\[\\d+\\]: loader: bundle ${bundle}, code cache accepted$`, "m"));
    }
  });

  it("points the launcher's errors at the TypeScript lines that made them", () => {
    // The line of each call in the source, as the build's position table must find it.
    const src = readFileSync(join(ROOT, "src/container/execute.ts"), "utf8").split("\n");
    const line = (needle: string) => src.findIndex((l) => l.includes(needle)) + 1;
    const img = busyboxImage(dir, "where-img");
    for (const [cmd, args] of [
      [join(DIST, "ch-run"), []],
      [join(DIST, "charliecloud"), ["ch-run"]],
    ] as const) {
      const cd = run(cmd, [...args, "--cd", "/no/such/dir", img, "--", "/bin/true"]);
      assert.equal(cd.status, 31, cd.stderr);
      assert.match(
        cd.stderr,
        new RegExp(`can't cd to /no/such/dir: No such file or directory \\(execute\\.ts:${line("sys.chdir(op.path")} 2\\)`),
      );
      const ex = run(cmd, [...args, img, "--", "/no/such/command"]);
      assert.equal(ex.status, 49, ex.stderr);
      assert.match(ex.stderr, new RegExp(`can't execve\\(2\\): /no/such/command: .*\\(execute\\.ts:${line("sys.execve(")} 2\\)`));
    }
  });

  it("runs a container from a copy in another directory, with no node on PATH", () => {
    const bin = join(dir, "bin");
    const copy = join(dir, "charliecloud");
    copyFileSync(join(DIST, "charliecloud"), copy);
    run("chmod", ["755", copy]);
    run("mkdir", [bin]);
    symlinkSync(copy, join(bin, "ch-run"));
    const img = busyboxImage(dir);
    const env = { PATH: "/nonexistent", HOME: process.env.HOME ?? "/", USER: process.env.USER ?? "u" };
    assert.notEqual(run("/bin/sh", ["-c", "command -v node"], { env }).status, 0);
    const r = run(join(bin, "ch-run"), [img, "--", "/bin/echo", "from a copy"], { env });
    assert.equal(r.stderr, "");
    assert.equal(r.stdout, "from a copy\n");
  });
});
