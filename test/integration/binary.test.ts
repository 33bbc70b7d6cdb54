// The single executable: programs by argv[0], a copy that runs with no Node anywhere.
import assert from "node:assert/strict";
import { chmodSync, copyFileSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, cleanup, DIST, run, tmp } from "../helpers.ts";

const PROGRAMS = ["ch-run", "ch-image", "ch-convert", "ch-tar2dir", "ch-fromhost", "ch-checkns"];
let dir: string;

before(() => {
  dir = tmp();
});
after(() => cleanup(dir));

describe("one executable", () => {
  it("answers --version and --help as every program", () => {
    for (const p of PROGRAMS) {
      const v = run(join(DIST, p), ["--version"]);
      assert.equal(v.status, 0, p);
      // ch-run's as Charliecloud's: the version alone, on stderr.
      if (p === "ch-run") assert.match(v.stderr, /^\d+\.\d+\.\d+\n$/);
      else assert.match(v.stdout, new RegExp(`^${p} \\(Charliecloud\\) \\d+\\.\\d+\\.\\d+\\n$`));
      const h = run(join(DIST, p), ["--help"]);
      assert.equal(h.status, 0, p);
      assert.match(h.stdout, new RegExp(`^Usage: ${p} `));
    }
  });

  it("runs a program named as its first argument", () => {
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
    const env = { ...process.env, XDG_RUNTIME_DIR: cache, XDG_CACHE_HOME: cache };
    assert.equal(run(join(DIST, "ch-run"), [img, "--", "true"], { env }).status, 0);
    const [name] = readdirSync(join(cache, "charliecloud"));
    const file = join(cache, "charliecloud", name);
    const good = readFileSync(file);
    // Tampered with: it is replaced from the copy inside the executable before loading.
    writeFileSync(file, "not a shared object");
    assert.equal(run(join(DIST, "ch-run"), [img, "--", "true"], { env }).status, 0);
    assert.ok(readFileSync(file).equals(good));
    // A directory others can write is refused, with what to do.
    chmodSync(join(cache, "charliecloud"), 0o777);
    const r = run(join(DIST, "ch-run"), [img, "--", "true"], { env });
    assert.equal(r.status, 31);
    assert.match(
      r.stderr,
      /^ch-run\[\d+\]: error: can't load the native FFI module: no private directory .*writable by others \(mode 777\).*set XDG_CACHE_HOME/,
    );
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
