// Loads koffi's native module inside the single executable. esbuild points koffi's own
// require("@koromix/koffi-<platform>") here (build/build.mjs).
//
// The module travels as an SEA asset; private-file.cjs writes it once per version into a private
// node-local directory, verified by its SHA-256, and it is loaded from there with
// process.dlopen(). A directory where it won't load (a file system mounted noexec) passes to the
// next.
"use strict";
const sea = require("node:sea");
const { loadPrivateModule } = require("./private-file.cjs");

/* global __KOFFI_SHA256__, __KOFFI_VERSION__ */
const expected = __KOFFI_SHA256__;
const version = __KOFFI_VERSION__;

function load() {
  return loadPrivateModule({
    what: "native module",
    name: `koffi-${version}-${process.arch}-${expected.slice(0, 16)}.node`,
    sha256: expected,
    bytes: () => Buffer.from(sea.getRawAsset("koffi.node")),
    mode: 0o600,
  });
}

// koffi swallows errors of this require and says only that it found no module; keep ours
// where loadLibc() (libc.ts) finds it.
try {
  module.exports = load();
} catch (e) {
  globalThis[Symbol.for("charliecloud.koffi-error")] = e;
  throw e;
}
