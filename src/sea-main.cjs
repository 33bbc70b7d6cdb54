// The single executable's entry point (sea-config.json's "main"). It runs a bundle that the
// executable carries as an asset (build/build.mjs): ch-run.js, ch-run alone, when called as
// ch-run (by a name that src/dispatch.ts's programFor() takes for ch-run), else ch.js, every
// program. Each is compiled with V8's code cache made by the build (build/train.mjs): ch-run's
// after a training launch, so that it holds the bytecode of every function a launch runs, not
// only the top-level code that the SEA's own useCodeCache covers; ch-run's start then compiles
// almost nothing.
//
// Called as ch-run, it first runs ch-run-memo.js (src/memo-main.ts), small: a remembered launch
// of the same command (src/container/memo.ts) execs the container from there, and ch-run's own
// bundle is never compiled; otherwise it says what ch-run is to record.
//
// The cache is V8's to check (its version and flags, the source's length): one it rejects is
// ignored and the bundle compiles from source as it would without one, correct and only slower;
// `ch-run -vv` says which (loader: code cache accepted|rejected|none).
"use strict";
const { getRawAsset } = require("node:sea");
const { Script } = require("node:vm");

/** The bundle's function, compiled with its code cache if it has one, and what became of that. */
function compile(bundle) {
  let cachedData;
  try {
    cachedData = new Uint8Array(getRawAsset(`${bundle}.cache`));
  } catch {
    // none: an executable built for another arch (the cache is specific to the one that made it)
  }
  // The bundle is ASCII (the build makes sure): Latin-1 is a copy, UTF-8 a decoding.
  const source = Buffer.from(getRawAsset(`${bundle}.js`)).toString("latin1");
  const script = new Script(source, { filename: `${bundle}.cjs`, cachedData });
  const codeCache = cachedData === undefined ? "none" : script.cachedDataRejected ? "rejected" : "accepted";
  return { fn: script.runInThisContext(), codeCache };
}

/** Whether the command line may be a remembered launch: not one that joins others (--join,
 * --join-pid, -j), which ch-run never remembers, so that a --join launch doesn't pay for the
 * lookup (~2 ms, x N ranks on a node). Loose: options up to "--" (or, without one, the
 * command's too); a false "no" costs only a lookup that would have found nothing better. */
function mayRemember(args) {
  for (const a of args) {
    if (a === "--") break;
    if (a.startsWith("--join") || /^-[A-Za-z]*j/.test(a)) return false;
  }
  return true;
}

const called = require("node:path").basename(process.argv0 || "");
const bundle = /^ch-run(?:[.-]|$)/.test(called) ? "ch-run" : "ch";
let memo = null;
if (bundle === "ch-run" && mayRemember(process.argv.slice(2))) {
  try {
    const m = { exports: {} };
    compile("ch-run-memo").fn(m.exports, require, m, __filename, __dirname, {});
    memo = m.exports.run();
  } catch {
    memo = null; // nothing remembered: ch-run plans as always
  }
}
const { fn, codeCache } = compile(bundle);
fn(exports, require, module, __filename, __dirname, { codeCache, bundle, memo });
