// Special files in a directory image, as ch-convert copies, packs and squashes it, and as a
// build's stage copy takes it: a FIFO stays a FIFO (its mode and time kept), a socket is left out
// with GNU tar's "socket ignored", a device file (a character device 0,0: the whiteout an
// unprivileged overlayfs makes) is left out of a directory with a warning, since making one
// needs privilege, and kept, with a warning, in a tarball or SquashFS image.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cleanup, DIST, type Result, run, tmp } from "../helpers.ts";

const CONVERT = join(DIST, "ch-convert");
const LONG = "d".repeat(120);

let dir: string;
let img: string;
/** Whether the image has its device file (an overlayfs whiteout, made in a user namespace). */
let device = false;
let n = 0;
const fresh = (suffix = "") => join(dir, `t${++n}${suffix}`);
const convert = (...args: string[]): Result =>
  run(CONVERT, args, { env: { ...process.env, CH_IMAGE_STORAGE: join(dir, "storage") } });

/** Binds a Unix socket at path and leaves it there (Node's own servers remove theirs). */
function socketAt(path: string): void {
  const r = run("python3", ["-c", "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", path]);
  assert.equal(r.status, 0, r.stderr);
}

before(() => {
  dir = tmp("ch-special-");
  img = join(dir, "img");
  mkdirSync(join(img, "sub"), { recursive: true });
  mkdirSync(join(img, "ro"));
  mkdirSync(join(img, LONG));
  writeFileSync(join(img, "sub/f"), "F\n");
  for (const [p, mode] of [
    ["sub/fifo", "640"],
    ["ro/fifo", "600"],
    [`${LONG}/fifo`, "644"],
  ])
    assert.equal(run("mkfifo", ["-m", mode, join(img, p)]).status, 0);
  utimesSync(join(img, "sub/fifo"), new Date("2001-01-01T00:00:00Z"), new Date("2001-01-01T00:00:00Z"));
  utimesSync(join(img, "sub"), new Date("2002-02-02T00:00:00Z"), new Date("2002-02-02T00:00:00Z"));
  chmodSync(join(img, "ro"), 0o555);
  socketAt(join(img, "sock"));
  const lower = join(dir, "lower");
  const work = join(dir, "work");
  const merged = join(dir, "merged");
  for (const d of [lower, work, merged]) mkdirSync(d);
  writeFileSync(join(lower, "wh"), "gone\n");
  const o = `lowerdir=${lower},upperdir=${img},workdir=${work},userxattr`;
  run("unshare", ["-Urm", "sh", "-c", `mount -t overlay overlay -o ${o} ${merged} && rm ${merged}/wh`]);
  device = lstatSync(join(img, "wh"), { throwIfNoEntry: false })?.isCharacterDevice() ?? false;
});
after(() => cleanup(dir));

/** ch-convert's warnings about special files, sorted. */
const warnings = (stderr: string) =>
  [...stderr.matchAll(/^ch-convert\[\d+\]: warning: (.*)$/gm)]
    .map((m) => m[1])
    .filter((w) => /socket|device/.test(w))
    .sort();

/** The image's FIFOs made again in `out`, with their modes and mtime (their directory's kept). */
function assertFifos(out: string): void {
  for (const [p, mode] of [
    ["sub/fifo", 0o640],
    ["ro/fifo", 0o600],
    [`${LONG}/fifo`, 0o644],
  ] as const) {
    const st = lstatSync(join(out, p));
    assert.ok(st.isFIFO(), p);
    assert.equal(st.mode & 0o7777, mode, p);
  }
  assert.equal(lstatSync(join(out, "sub/fifo")).mtime.toISOString(), "2001-01-01T00:00:00.000Z");
  assert.equal(lstatSync(join(out, "sub")).mtime.toISOString(), "2002-02-02T00:00:00.000Z");
}

describe("ch-convert: special files of a directory image", () => {
  it("dir -> ch-image -> dir: FIFOs made again (mode, times kept, in a read-only directory too); sockets and device files left out with a warning", () => {
    const r = convert("-o", "ch-image", img, "special");
    assert.equal(r.status, 0, r.stderr);
    const expected = ["socket ignored: sock"];
    if (device) expected.push("device file ignored (making one needs privilege): wh (character device 0,0)");
    assert.deepEqual(warnings(r.stderr), expected.sort());
    const out = fresh();
    const back = convert("-i", "ch-image", "special", out);
    assert.equal(back.status, 0, back.stderr);
    assertFifos(out);
    assert.equal(lstatSync(join(out, "ro")).mode & 0o7777, 0o555);
    assert.ok(!existsSync(join(out, "sock")));
    assert.ok(!existsSync(join(out, "wh")));
  });

  it("dir -> tar: FIFO members (a long name too), device files kept with a warning, sockets left out", () => {
    const out = fresh(".tar");
    const r = convert(img, out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /tar .*: done/);
    const expected = ["socket ignored: sock"];
    if (device) expected.push("device file kept: wh (character device 0,0; unpacking it needs privilege)");
    assert.deepEqual(warnings(r.stderr), expected.sort());
    const list = run("tar", ["-tvf", out, "--warning=no-unknown-keyword"]);
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /^prw-r----- 0\/0 +0 2001-01-01 \d\d:\d\d \.\/sub\/fifo$/m);
    assert.match(list.stdout, /^prw------- 0\/0 .* \.\/ro\/fifo$/m);
    assert.match(list.stdout, new RegExp(`^prw-r--r-- 0/0 .* \\./${LONG}/fifo$`, "m"));
    assert.match(list.stdout, /^-rw-r--r-- 0\/0 +2 .* \.\/sub\/f$/m);
    assert.doesNotMatch(list.stdout, /sock/);
    if (device) assert.match(list.stdout, /^c--------- 0\/0 +0,0 .* \.\/wh$/m);
    // GNU tar makes them again.
    const x = fresh();
    mkdirSync(x);
    const ex = run("tar", ["-xf", out, "-C", x, "--exclude=./wh", "--warning=no-unknown-keyword"]);
    assert.equal(ex.status, 0, ex.stderr);
    assert.ok(lstatSync(join(x, "sub/fifo")).isFIFO());
    assert.ok(lstatSync(join(x, LONG, "fifo")).isFIFO());
  });

  it("dir -> tar -> dir: FIFOs made again (mode, mtime kept), device files left out with a warning naming them", () => {
    const tarball = fresh(".tar.gz");
    assert.equal(convert(img, tarball).status, 0);
    const out = fresh();
    const r = convert(tarball, out);
    assert.equal(r.status, 0, r.stderr);
    const expected = device ? [`${tarball}: device file ignored (making one needs privilege): wh (character device 0,0)`] : [];
    assert.deepEqual(warnings(r.stderr), expected);
    assertFifos(out);
    assert.equal(readFileSync(join(out, "sub/f"), "utf8"), "F\n");
    assert.ok(!existsSync(join(out, "sock")));
    assert.ok(!existsSync(join(out, "wh")));
  });

  it("dir -> squash: FIFOs and device files kept, sockets left out with a warning", (t) => {
    if (spawnSync("sh", ["-c", "command -v mksquashfs"]).status !== 0) return t.skip("no mksquashfs");
    const out = fresh(".sqfs");
    const r = convert(img, out);
    assert.equal(r.status, 0, r.stderr);
    const expected = ["socket ignored: sock"];
    if (device) expected.push("device file kept: wh (character device 0,0; unpacking it needs privilege)");
    assert.deepEqual(warnings(r.stderr), expected.sort());
    const list = run("unsquashfs", ["-lls", out]);
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /^prw-r----- root\/root +0 2001-01-01 \d\d:\d\d squashfs-root\/sub\/fifo$/m);
    assert.doesNotMatch(list.stdout, /sock/);
    if (device) assert.match(list.stdout, /^c--------- root\/root +0, +0 .* squashfs-root\/wh$/m);
    assert.deepEqual(
      run("sh", ["-c", `ls ${dir}/*.exclude 2>/dev/null`]).stdout,
      "",
      "the list of sockets to leave out is removed",
    );
  });

  it("dir -> squash: sockets whose names an exclude file would misread (newline, leading space, #, backslash) left out, the files they resemble kept", (t) => {
    if (spawnSync("sh", ["-c", "command -v mksquashfs"]).status !== 0) return t.skip("no mksquashfs");
    const odd = join(dir, "odd");
    mkdirSync(join(odd, "bin"), { recursive: true });
    for (const n of ["a\nb", " s", "#c", "d\\"]) socketAt(join(odd, n));
    for (const n of ["a", "b", "s", "d"]) writeFileSync(join(odd, n), `${n}\n`);
    const out = fresh(".sqfs");
    const r = convert(odd, out);
    assert.equal(r.status, 0, r.stderr);
    const list = run("unsquashfs", ["-lls", out]);
    assert.equal(list.status, 0, list.stderr);
    assert.doesNotMatch(list.stdout, /^s/m, "no socket in the image");
    for (const n of ["a", "b", "s", "d"]) assert.match(list.stdout, new RegExp(`^-rw.* squashfs-root/${n}$`, "m"), n);
    rmSync(odd, { recursive: true });
  });
});
