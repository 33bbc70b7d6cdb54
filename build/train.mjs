// Build step, run by the pinned Node (the V8 the executable runs): V8's code caches for the
// executable's bundles (src/sea-main.cjs loads them). ch-run's is made after a training launch,
// so that it holds the bytecode of every function ch-run's fast path runs and not only the
// top-level code; the bundle of every program gets its top-level code's, as the SEA's own
// useCodeCache would make.
//   node build/train.mjs DIR          (DIR: the build's dist directory, holding ch.js, ch-run.js
//                                      and their line tables; writes ch.cache and ch-run.cache)
// The launch is `ch-run IMG -- /bin/true` on a throwaway image, run as the executable runs it
// (node:sea answering from DIR's files), up to the point where ch-run would replace itself with
// the launcher (process.execve): there the cache is written and the process exits. It runs twice,
// in two processes sharing one private directory: the first writes and tries the launcher file
// (once per file, in real use too), the second, as every later start, finds it ready and trains.
// A descriptor the shell leaks is kept by the descriptor helper as any inherited one (no koffi);
// koffi's module isn't there, so a launch that doesn't take the fast path fails the build
// instead of training the wrong path. A third process replays the launch the second remembered
// (src/container/memo.ts), with the facts it recorded through node:fs: the memo bundle's cache.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import vm from "node:vm";

const [dir, stage] = process.argv.slice(2);
if (!dir) {
  console.error("usage: node build/train.mjs DIST_DIR");
  process.exit(2);
}

if (stage === undefined) {
  // Parent: a throwaway image and private directory (in DIR, not $TMPDIR, which may be mounted
  // noexec: the launch tries its launcher there), the two launches, then clean up. A training
  // that fails leaves ch-run's cache with top-level code only (a warning, not a failed build).
  const tmp = fs.mkdtempSync(join(dir, ".train-"));
  try {
    const img = join(tmp, "img");
    for (const d of ["bin", "dev", "proc", "sys", "tmp", "etc", "home", "root"]) fs.mkdirSync(join(img, d), { recursive: true });
    fs.writeFileSync(join(img, "bin/true"), "", { mode: 0o755 });
    fs.writeFileSync(join(img, "etc/passwd"), "root:x:0:0::/root:/bin/sh\n");
    fs.writeFileSync(join(img, "etc/group"), "root:x:0:\n");
    const priv = join(tmp, "private");
    fs.mkdirSync(priv, { mode: 0o700 });
    const env = { PATH: "/usr/bin:/bin", HOME: tmp, TMPDIR: priv, LANG: "C" };
    for (const s of ["warm", "train"])
      execFileSync(process.execPath, [process.argv[1], dir, s, img], { stdio: ["ignore", "inherit", "inherit"], env });
    const size = fs.statSync(join(dir, "ch-run.cache")).size;
    if (size < 1024) throw new Error(`${dir}/ch-run.cache is only ${size} bytes`);
    // The launch just remembered (src/container/memo.ts), replayed: its bundle's cache.
    try {
      execFileSync(process.execPath, [process.argv[1], dir, "replay", img], { stdio: ["ignore", "inherit", "inherit"], env });
    } catch (e) {
      console.warn(`train: WARNING: no replay (${e.message}): ch-run-memo's code cache holds top-level code only`);
      topLevelCache("ch-run-memo");
    }
  } catch (e) {
    console.warn(`train: WARNING: no training launch (${e.message}): ch-run's code cache holds top-level code only`);
    topLevelCache("ch-run");
    topLevelCache("ch-run-memo");
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  topLevelCache("ch");
  process.exit(0);
}

/** The cache of a bundle's top-level code, as the SEA's own useCodeCache would make it. */
function topLevelCache(name) {
  const script = new vm.Script(fs.readFileSync(join(dir, `${name}.js`), "latin1"), { filename: `${name}.cjs` });
  fs.writeFileSync(join(dir, `${name}.cache`), script.createCachedData());
}

// Child: one launch.
const img = process.argv[4];
const sea = {
  isSea: () => true,
  getAsset(name, encoding) {
    const b = asset(name);
    return encoding ? b.toString(encoding) : b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
  },
  getRawAsset(name) {
    const b = asset(name);
    return b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
  },
};
function asset(name) {
  if (!["ch-run.lines", "ch-run.sources.json", "ch-run.starts"].includes(name))
    throw new Error(`train: the launch asked for the asset ${name}: it did not take the fast path`);
  return fs.readFileSync(join(dir, name));
}
const nodeRequire = createRequire(import.meta.url);
const require = (id) => (id === "node:sea" ? sea : nodeRequire(id));
let done = false;
let script;
process.execve = () => {
  done = true;
  if (stage === "train") fs.writeFileSync(join(dir, "ch-run.cache"), script.createCachedData());
  if (stage === "replay") fs.writeFileSync(join(dir, "ch-run-memo.cache"), script.createCachedData());
  process.exit(0);
};
process.on("exit", (code) => {
  if (!done) {
    console.error(`train: the ${stage} launch ended (status ${code}) before ch-run's process.execve()`);
    process.exitCode = 1;
  }
});
process.argv = [process.execPath, "ch-run", img, "--", "/bin/true"];
/** Runs a bundle as the loader does (src/sea-main.cjs); its module's exports. */
function run(name, loader) {
  script = new vm.Script(fs.readFileSync(join(dir, `${name}.js`), "latin1"), { filename: `${name}.cjs` });
  const module = { exports: {} };
  script.runInThisContext()(module.exports, require, module, join(dir, `${name}.cjs`), dir, loader);
  return module.exports;
}
if (stage === "replay") {
  run("ch-run-memo", {}).run();
  console.error("train: the remembered launch was not replayed");
  process.exit(1);
}
// The launch that records (the loader's context, without a replay: this one must plan).
const memo = run("ch-run-memo", {}).context();
run("ch-run", { codeCache: "training", bundle: "ch-run", memo });
