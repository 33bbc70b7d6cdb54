// Files that ch-run must load or execute from disk (koffi's native module, the launcher
// executable): each is written once per version into a directory that only the invoking user can
// write, checked for owner and mode, and verified by its SHA-256 before use (see ensure()): a
// file another user could have planted or changed is never used.
//
// Where: the first of these that works, node-local ones first, so that a job starting on 1,000
// nodes doesn't write 1,000 copies into one shared home directory: $XDG_RUNTIME_DIR/charliecloud;
// ${TMPDIR:-/tmp}/.charliecloud-UID (hidden: $TMPDIR is the container's /tmp; a directory anyone could have made first: made with mode 0700,
// then checked with lstat, so a symlink, another owner or a mode others can write is refused; its
// parent must be sticky if others can write it); ${XDG_CACHE_HOME:-~/.cache}/charliecloud. A
// directory where the file can't be used (a file system mounted noexec) passes to the next (the
// caller's choice). Where one is shared (a home directory over NFS), the first start writes the
// file and the others wait for it (a lock file made with O_EXCL); names written are unique across
// hosts (host name, PID, random), and every file appears whole (write aside, then rename).
"use strict";
const fs = require("node:fs");
const path = require("node:path");

/** How long to wait for another process writing the module before writing it ourselves. */
const WAIT_MS = 15_000;

function fail(msg) {
  const e = new Error(msg);
  e.chPrivate = true;
  throw e;
}

/** Makes dir (mode 0700) if it doesn't exist; returns why it can't be ours, or null (see
 * usableDir()); the parent is checked first. */
function privateDir(dir, makeParents) {
  if (makeParents) fs.mkdirSync(path.dirname(dir), { recursive: true, mode: 0o700 });
  const bad = parentProblem(path.dirname(dir));
  if (bad) return bad;
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if (e.code !== "EEXIST") throw e;
  }
  return dirProblem(dir);
}

/** Why the existing directory dir can't be ours, or null: it must be a directory (not a
 * symlink) owned by us that others can't write, in a parent that others can't rename it out of
 * (and put their own in its place). Throws if it can't be looked at (ENOENT, say). */
function usableDir(dir) {
  return parentProblem(path.dirname(dir)) ?? dirProblem(dir);
}

function parentProblem(parent) {
  const euid = process.geteuid();
  const pst = fs.statSync(parent);
  // Whoever may rename entries of the parent could swap our directory for theirs between this
  // check and the use of a file in it: only we, root, or (sticky) no one but an entry's owner.
  if (pst.uid !== euid && pst.uid !== 0) return `${parent}: owned by UID ${pst.uid}, neither you nor root`;
  if (pst.mode & 0o022 && !(pst.mode & 0o1000))
    return `${parent}: writable by ${pst.mode & 0o002 ? "others" : "its group"} and not sticky (mode ${(pst.mode & 0o777).toString(8)})`;
  return null;
}

function dirProblem(dir) {
  const euid = process.geteuid();
  const st = fs.lstatSync(dir);
  if (st.isSymbolicLink()) return `${dir}: a symbolic link`;
  if (!st.isDirectory()) return `${dir}: not a directory`;
  if (st.uid !== euid) return `${dir}: owned by UID ${st.uid}, not ${euid}`;
  if (st.mode & 0o022) return `${dir}: writable by others (mode ${(st.mode & 0o777).toString(8)})`;
  return null;
}

/** The directories to try, in order: [path, whether to make its parents]. */
function candidates() {
  const env = process.env;
  const abs = (p) => p && path.isAbsolute(p);
  const out = [];
  if (abs(env.XDG_RUNTIME_DIR)) out.push([path.join(env.XDG_RUNTIME_DIR, "charliecloud"), false]);
  out.push([path.join(abs(env.TMPDIR) ? env.TMPDIR : "/tmp", `.charliecloud-${process.geteuid()}`), false]);
  if (abs(env.XDG_CACHE_HOME)) out.push([path.join(env.XDG_CACHE_HOME, "charliecloud"), true]);
  else if (abs(env.HOME)) out.push([path.join(env.HOME, ".cache", "charliecloud"), true]);
  return out;
}

function sha256(buf) {
  // node:crypto only when a check is due: loading it costs milliseconds at every start.
  return require("node:crypto").createHash("sha256").update(buf).digest("hex");
}

/** What identifies the file's content without reading it: the kernel sets the change time on
 * every write, chmod or rename, and no one can set it back. No device number: an NFS mount's
 * differs from node to node. */
function identity(file, expected) {
  const st = fs.statSync(file, { bigint: true });
  if (Number(st.uid) !== process.geteuid()) fail(`${file}: owned by UID ${st.uid}, not ${process.geteuid()}`);
  return `${expected} ${st.ino} ${st.size} ${st.mtimeNs} ${st.ctimeNs}\n`;
}

/** Whether the stamp says file was verified as it is now. */
function stamped(file, stamp, expected) {
  try {
    return fs.readFileSync(stamp, "utf8") === identity(file, expected);
  } catch (e) {
    if (e.chPrivate) throw e;
    return false;
  }
}

/** Whether file holds the content whose SHA-256 is expected. */
function good(file, expected) {
  try {
    return sha256(fs.readFileSync(file)) === expected;
  } catch (e) {
    if (e.code === "ENOENT") return false;
    throw e;
  }
}

/** A name beside file that no other process, here or on another host, uses. */
function aside(file) {
  const host = require("node:os")
    .hostname()
    .replace(/[^A-Za-z0-9.-]/g, "_");
  return `${file}.${host}.${process.pid}.${require("node:crypto").randomBytes(6).toString("hex")}.tmp`;
}

function writeAtomically(file, data, mode = 0o600) {
  const tmp = aside(file);
  try {
    fs.writeFileSync(tmp, data, { mode, flag: "wx" });
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

function sleep(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Writes the file and its stamp, verified. */
function install(file, stamp, c) {
  const bytes = c.bytes();
  if (sha256(bytes) !== c.sha256) fail(`embedded ${c.what} is corrupt (hash mismatch)`);
  writeAtomically(file, bytes, c.mode);
  if (!good(file, c.sha256)) fail(`${file}: changed while being written`);
  writeAtomically(stamp, identity(file, c.sha256));
}

/** Makes sure file holds content c ({ what, sha256, bytes(), mode }), verified: as it is, or
 * written by us, or by another process that holds the lock (waited for). */
function ensure(file, c) {
  const stamp = `${file}.verified`;
  const expected = c.sha256;
  if (stamped(file, stamp, expected)) return;
  if (good(file, expected)) {
    writeAtomically(stamp, identity(file, expected));
    return;
  }
  const lock = `${file}.lock`;
  let end = 0;
  let seen = null;
  for (let wait = 5; ; wait = Math.min(wait * 2, 100)) {
    let fd = -1;
    try {
      fd = fs.openSync(lock, "wx", 0o600);
    } catch (e) {
      if (e.code !== "EEXIST") throw e;
    }
    if (fd >= 0) {
      try {
        // It may have been written between our check and the lock.
        if (!stamped(file, stamp, expected)) install(file, stamp, c);
      } finally {
        fs.closeSync(fd);
        fs.rmSync(lock, { force: true });
      }
      return;
    }
    // Another process writes it (maybe on another node sharing this directory): wait for it.
    if (stamped(file, stamp, expected)) return;
    let cur = null;
    try {
      const st = fs.statSync(lock);
      cur = `${st.ino} ${st.mtimeMs}`;
    } catch (e) {
      if (e.code !== "ENOENT") throw e;
      continue; // released: take it
    }
    if (cur !== seen) {
      // A new writer: give it its time.
      seen = cur;
      end = Date.now() + WAIT_MS;
    } else if (Date.now() > end) {
      // Its writer died or is stuck: write our own (the rename keeps the file whole either way),
      // and drop that lock if it is still the one we waited on.
      install(file, stamp, c);
      try {
        const st = fs.statSync(lock);
        if (`${st.ino} ${st.mtimeMs}` === seen) fs.rmSync(lock, { force: true });
      } catch {
        // gone already
      }
      return;
    }
    sleep(wait);
  }
}

/** Calls use(file) with content c in each usable private directory in turn, until it returns
 * something other than undefined; returns that. Throws (e.chPrivate set) when no directory is usable,
 * or when embedded content is corrupt. c.name names the file. */
function withPrivateFile(c, use) {
  const why = [];
  for (const [dir, makeParents] of candidates()) {
    let r;
    try {
      r = privateDir(dir, makeParents);
    } catch (e) {
      why.push(`${dir}: ${e.message}`);
      continue;
    }
    if (r) {
      why.push(r);
      continue;
    }
    const file = path.join(dir, c.name);
    try {
      ensure(file, c);
    } catch (e) {
      if (e.chPrivate) throw e;
      why.push(`${dir}: ${e.message}`);
      continue;
    }
    const out = use(file, why);
    if (out !== undefined) return out;
  }
  fail(
    `no private directory for the ${c.what} (${why.join("; ")}); ` +
      "set XDG_CACHE_HOME (or TMPDIR) to a directory only you can write",
  );
}

/** The exports of the Node-API module c, loaded with process.dlopen() from the first private
 * directory where it loads (one mounted noexec fails to map it: the next). Throws as
 * withPrivateFile(). `at`: where a remembered launch (container/memo.ts) found it, as {file,
 * stamp} (stamp: its identity() when verified then), tried first: there, as it was, it needs no
 * other check; else as without. `seen(file, stamp)` is told where it was loaded from. */
function loadPrivateModule(c, at, seen) {
  if (at) {
    try {
      // Its directory still one of ours, checked as withPrivateFile() would, and the file as it was.
      if (usableDir(path.dirname(at.file)) === null && identity(at.file, c.sha256) === at.stamp) {
        const m = { exports: {} };
        process.dlopen(m, at.file);
        seen?.(at.file, at.stamp);
        return m.exports;
      }
    } catch {
      // gone or changed: as without
    }
  }
  return withPrivateFile(c, (file, why) => {
    const m = { exports: {} };
    try {
      process.dlopen(m, file);
    } catch (e) {
      why.push(`${file}: ${e.message}`);
      return undefined;
    }
    seen?.(file, identity(file, c.sha256));
    return m.exports;
  });
}

module.exports = { withPrivateFile, loadPrivateModule, sha256, writeAtomically, candidates, usableDir, identity };
