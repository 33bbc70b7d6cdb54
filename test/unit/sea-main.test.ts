// The executable's loader (src/sea-main.cjs), run here with a stand-in for node:sea: a code cache
// V8 takes, one it rejects (the bundle still runs, compiled from source), none at all.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Script } from "node:vm";
import { ROOT } from "../helpers.ts";

/** A bundle; each test case's differs (V8 keeps what it compiled in this process, by source). */
const bundle = (tag: string) =>
  `(function (exports, require, module, __filename, __dirname, __chLoader) {module.exports.ran = [__chLoader, 6 * 7]; // ${tag}\n})`;

function load(source: string, cache: Uint8Array | null): unknown {
  const assets: Record<string, Uint8Array> = { "ch.js": Buffer.from(source, "latin1") };
  if (cache) assets["ch.cache"] = cache;
  const sea = {
    getRawAsset(name: string): ArrayBuffer {
      const a = assets[name];
      if (!a) throw new Error(`no asset ${name}`);
      return a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength) as ArrayBuffer;
    },
  };
  const nodeRequire = createRequire(import.meta.url);
  const req = (id: string) => (id === "node:sea" ? sea : nodeRequire(id));
  const file = join(ROOT, "src/sea-main.cjs");
  const fn = new Script(
    `(function (exports, require, module, __filename, __dirname) {${readFileSync(file, "utf8")}\n})`,
  ).runInThisContext();
  const module = { exports: {} as { ran?: unknown } };
  fn(module.exports, req, module, file, join(ROOT, "src"));
  return module.exports.ran;
}

describe("executable loader", () => {
  it("runs the bundle with its code cache, with a rejected one, and with none", () => {
    // This test's process isn't called ch-run: the whole bundle, ch.js. The cache is made in
    // another process, as the build's is.
    const src = bundle("accepted");
    const made = spawnSync(
      process.execPath,
      [
        "-e",
        `process.stdout.write(new (require("node:vm").Script)(${JSON.stringify(src)}, { filename: "ch.cjs" }).createCachedData().toString("base64"))`,
      ],
      { encoding: "utf8" },
    );
    assert.equal(made.status, 0, made.stderr);
    const good = Buffer.from(made.stdout, "base64");
    assert.deepEqual(load(src, good), [{ codeCache: "accepted", bundle: "ch", memo: null }, 42]);
    assert.deepEqual(load(bundle("rejected"), new Uint8Array(good.length).fill(7)), [
      { codeCache: "rejected", bundle: "ch", memo: null },
      42,
    ]);
    assert.deepEqual(load(bundle("none"), null), [{ codeCache: "none", bundle: "ch", memo: null }, 42]);
  });
});
