// Loads koffi's native module inside the single executable. esbuild points koffi's own
// require("@koromix/koffi-<platform>") here (build/build.mjs).
//
// The module travels as an SEA asset. It is written once per version into a directory that only
// the invoking user can write, checked for owner and mode, and verified by its SHA-256 before
// process.dlopen() (see load()): a file another user could have planted or changed is never loaded.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const sea = require("node:sea");

/* global __KOFFI_SHA256__, __KOFFI_VERSION__ */
const expected = __KOFFI_SHA256__;
const version = __KOFFI_VERSION__;

function fail(msg) {
  const e = new Error(msg);
  e.chKoffi = true;
  throw e;
}

function privateDir(base) {
  const euid = process.geteuid();
  fs.mkdirSync(base, { recursive: true, mode: 0o700 });
  const dir = path.join(base, "charliecloud");
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if (e.code !== "EEXIST") throw e;
  }
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) return `${dir}: not a directory`;
  if (st.uid !== euid) return `${dir}: owned by UID ${st.uid}, not ${euid}`;
  if (st.mode & 0o022) return `${dir}: writable by others (mode ${(st.mode & 0o777).toString(8)})`;
  return { dir };
}

function cacheDir() {
  const bases = [];
  const env = process.env;
  if (env.XDG_RUNTIME_DIR && path.isAbsolute(env.XDG_RUNTIME_DIR)) bases.push(env.XDG_RUNTIME_DIR);
  if (env.XDG_CACHE_HOME && path.isAbsolute(env.XDG_CACHE_HOME)) bases.push(env.XDG_CACHE_HOME);
  else if (env.HOME && path.isAbsolute(env.HOME)) bases.push(path.join(env.HOME, ".cache"));
  const why = [];
  for (const base of bases) {
    try {
      const r = privateDir(base);
      if (typeof r === "object") return r.dir;
      why.push(r);
    } catch (e) {
      why.push(`${base}: ${e.message}`);
    }
  }
  fail(
    `no private directory for the native module (${why.join("; ") || "HOME and XDG_CACHE_HOME unset"}); ` +
      "set XDG_CACHE_HOME to a directory only you can write",
  );
}

function sha256(buf) {
  // node:crypto only when a check is due: loading it costs milliseconds at every start.
  return require("node:crypto").createHash("sha256").update(buf).digest("hex");
}

/** What identifies the file's content without reading it: the kernel sets the change time
 * on every write, chmod or rename, and no one can set it back. */
function identity(file) {
  const st = fs.statSync(file, { bigint: true });
  if (Number(st.uid) !== process.geteuid()) fail(`${file}: owned by UID ${st.uid}, not ${process.geteuid()}`);
  return `${expected} ${st.dev}:${st.ino} ${st.size} ${st.mtimeNs} ${st.ctimeNs}\n`;
}

function writeAtomically(file, data, mode) {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, data, { mode, flag: "w" });
  fs.renameSync(tmp, file);
}

function load() {
  const dir = cacheDir();
  const file = path.join(dir, `koffi-${version}-${process.arch}-${expected.slice(0, 16)}.node`);
  // The module's SHA-256 is checked when it is written, and again whenever its identity differs
  // from the one recorded after the last check (a stamp beside it): hashing 1 MB at every start
  // costs more than the rest of ch-run's set-up, and proves nothing the change time doesn't.
  const stamp = `${file}.verified`;
  let ok = false;
  try {
    ok = fs.readFileSync(stamp, "utf8") === identity(file);
  } catch (e) {
    if (e.chKoffi) throw e;
  }
  if (!ok) {
    try {
      ok = sha256(fs.readFileSync(file)) === expected;
    } catch (e) {
      if (e.code !== "ENOENT") throw e;
    }
    if (!ok) {
      const bytes = Buffer.from(sea.getRawAsset("koffi.node"));
      if (sha256(bytes) !== expected) fail("embedded native module is corrupt (hash mismatch)");
      writeAtomically(file, bytes, 0o600);
      if (sha256(fs.readFileSync(file)) !== expected) fail(`${file}: changed while being written`);
    }
    writeAtomically(stamp, identity(file), 0o600);
  }
  const m = { exports: {} };
  process.dlopen(m, file);
  return m.exports;
}

// koffi swallows errors of this require and says only that it found no module; keep ours
// where loadLibc() (libc.ts) finds it.
try {
  module.exports = load();
} catch (e) {
  globalThis[Symbol.for("charliecloud.koffi-error")] = e;
  throw e;
}
