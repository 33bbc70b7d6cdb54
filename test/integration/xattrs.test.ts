// Extended attributes kept where asked (--xattrs): ch-convert, ch-tar2dir, ch-image import.
// Attributes are set and read with the project's own lsetxattr/lgetxattr (no attr package).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { Header } from "tar";
import { paxRecord } from "../../src/image/xattrs.ts";
import { libc, loadLibc } from "../../src/sys/libc.ts";
import { cleanup, DIST, type Result, run, tmp } from "../helpers.ts";
import { imageMembers, tarBytes, writeTar } from "../tarballs.ts";

const CONVERT = join(DIST, "ch-convert");
const TAR2DIR = join(DIST, "ch-tar2dir");
const IMAGE = join(DIST, "ch-image");
const LONG = `usr/${"long-name-".repeat(12)}file`;

let dir: string;
let n = 0;
let supported = false;
const fresh = (suffix = "") => join(dir, `t${++n}${suffix}`);
const convert = (...args: string[]): Result =>
  run(CONVERT, args, { env: { ...process.env, CH_IMAGE_STORAGE: join(dir, "storage") } });

/** The extended attributes of path (not following a symlink), values as latin1 strings. */
function xattrs(path: string): Record<string, string> {
  const lc = libc();
  const out: Record<string, string> = {};
  for (const name of lc.llistxattr(path).sort()) out[name] = lc.lgetxattr(path, name).toString("latin1");
  return out;
}

function setx(path: string, name: string, value: string | Buffer): void {
  libc().lsetxattr(path, name, typeof value === "string" ? Buffer.from(value) : value);
}

const BIN = Buffer.from([0, 1, 0xff, 0x0a, 0x3d]).toString("latin1");

/** An image directory whose files, a directory and a long-named file carry user xattrs. */
function imageWithXattrs(): string {
  const img = fresh();
  const r = convert("-q", writeTar(fresh(".tar"), imageMembers()), img);
  assert.equal(r.status, 0, r.stderr);
  writeFileSync(join(img, LONG), "long\n"); // a name no ustar header holds: a pax path record
  setx(join(img, "etc/motd"), "user.test", "motd");
  setx(join(img, "bin"), "user.dir", "a directory");
  setx(join(img, "bin/hello"), "user.bin", Buffer.from(BIN, "latin1"));
  setx(join(img, LONG), "user.long", "x".repeat(600));
  return img;
}

function assertKept(img: string): void {
  assert.deepEqual(xattrs(join(img, "etc/motd")), { "user.test": "motd" });
  assert.deepEqual(xattrs(join(img, "bin")), { "user.dir": "a directory" });
  assert.deepEqual(xattrs(join(img, "bin/hello")), { "user.bin": BIN });
  assert.deepEqual(xattrs(join(img, LONG)), { "user.long": "x".repeat(600) });
  assert.deepEqual(xattrs(join(img, "usr/share/doc")), {});
}

function assertNone(img: string): void {
  for (const p of ["etc/motd", "bin", "bin/hello", LONG]) assert.deepEqual(xattrs(join(img, p)), {}, p);
}

/** A pax extended header (typeflag x) carrying these records. */
function pax(records: Buffer[]): Buffer {
  const body = Buffer.concat(records);
  const head = Buffer.alloc(512);
  new Header({ path: "PaxHeader/f", type: "ExtendedHeader", mode: 0o644, size: body.length, mtime: new Date(0) }).encode(head, 0);
  return Buffer.concat([head, body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

before(async () => {
  dir = tmp("ch-xattrs-");
  await loadLibc();
  writeFileSync(join(dir, "probe"), "");
  try {
    setx(join(dir, "probe"), "user.probe", "1");
    supported = true;
  } catch {
    supported = false;
  }
});
after(() => cleanup(dir));

const hasTar = spawnSync("tar", ["--xattrs", "--version"]).status === 0;

describe("--xattrs", () => {
  it("unpacks GNU tar --xattrs tarballs with the attributes only when asked", (t) => {
    if (!supported) return t.skip(`no user xattrs in ${dir}`);
    if (!hasTar) return t.skip("no GNU tar with --xattrs");
    const src = imageWithXattrs();
    for (const ext of [".tar", ".tar.gz", ".tar.xz"]) {
      const tarball = fresh(ext);
      const c = spawnSync("tar", ["--xattrs", "-caf", tarball, "-C", src, "."], { encoding: "utf8" });
      if (c.status !== 0 && ext === ".tar.xz") continue; // no xz
      assert.equal(c.status, 0, c.stderr);
      const yes = fresh();
      const r = convert("--xattrs", tarball, yes);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(!r.stderr.includes("extended attributes"), r.stderr);
      assertKept(yes);
      const no = fresh();
      const r2 = convert(tarball, no);
      assert.equal(r2.status, 0, r2.stderr);
      assertNone(no);
    }
  });

  it("never sets security.capability; what can't be set is one warning line, not an error", (t) => {
    if (!supported) return t.skip(`no user xattrs in ${dir}`);
    const cap = Buffer.from("0100000200200000000000000000000000000000", "hex");
    const file = (path: string, body: string) => tarBytes([{ path, body }]).subarray(0, -1024);
    const bytes = Buffer.concat([
      tarBytes(imageMembers()).subarray(0, -1024),
      pax([
        paxRecord("SCHILY.xattr.security.capability", cap),
        paxRecord("SCHILY.xattr.trusted.t", Buffer.from("t")),
        paxRecord("SCHILY.xattr.user.ok", Buffer.from("fine")),
      ]),
      file("bin/ping", "elf"),
      pax([paxRecord("SCHILY.xattr.security.capability", cap)]),
      file("bin/ping2", "elf"),
      // bsdtar's form: the name %-escaped, the value in base64.
      pax([paxRecord("LIBARCHIVE.xattr.user.b%20sd", Buffer.from(Buffer.from("tar").toString("base64")))]),
      file("bin/bsd", "b"),
      Buffer.alloc(1024),
    ]);
    for (const tarball of [fresh(".tar"), fresh(".tar.gz")]) {
      writeFileSync(tarball, tarball.endsWith(".gz") ? gzipSync(bytes) : bytes);
      const out = fresh();
      const r = convert("--xattrs", tarball, out);
      assert.equal(r.status, 0, r.stderr);
      const ping = xattrs(join(out, "bin/ping"));
      assert.equal(ping["user.ok"], "fine");
      assert.ok(!("security.capability" in ping));
      assert.deepEqual(xattrs(join(out, "bin/ping2")), {});
      assert.deepEqual(xattrs(join(out, "bin/bsd")), { "user.b sd": "tar" });
      const lines = r.stderr.split("\n").filter((l) => l.includes("extended attributes"));
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], /warning: ignored [23] extended attributes: security\.capability \(never set\)/);
      if (process.getuid?.() !== 0) assert.match(lines[0], /ignored 3 .*trusted\.t \(EPERM\)/);
    }
  });

  it("round-trips dir → tar → dir with the user xattrs, and GNU tar reads them", (t) => {
    if (!supported) return t.skip(`no user xattrs in ${dir}`);
    const src = imageWithXattrs();
    for (const ext of [".tar", ".tar.gz", ".tar.zst"]) {
      const tarball = fresh(ext);
      const p = convert("--xattrs", src, tarball);
      assert.equal(p.status, 0, p.stderr);
      const back = fresh();
      const u = convert("--xattrs", tarball, back);
      assert.equal(u.status, 0, u.stderr);
      assertKept(back);
      assert.equal(readFileSync(join(back, LONG), "utf8"), "long\n");
    }
    const plain = fresh(".tar");
    assert.equal(convert("--xattrs", src, plain).status, 0);
    assert.ok(readFileSync(plain).includes("SCHILY.xattr.user.test=motd\n"));
    const without = fresh(".tar");
    assert.equal(convert(src, without).status, 0);
    assert.ok(!readFileSync(without).includes("SCHILY.xattr"));
    if (!hasTar) {
      t.skip("GNU tar with --xattrs not found: its half of this test did not run");
      return;
    }
    const gnu = fresh();
    mkdirSync(gnu);
    const x = spawnSync("tar", ["--xattrs", "--xattrs-include=*", "-xf", plain, "-C", gnu], { encoding: "utf8" });
    assert.equal(x.status, 0, x.stderr);
    assertKept(gnu);
    const list = spawnSync("tar", ["-tf", plain], { encoding: "utf8" });
    assert.ok(list.stdout.split("\n").includes(`./${LONG}`), "long name intact for GNU tar");
  });

  it("ch-tar2dir and ch-image import (tarball and directory) take --xattrs", (t) => {
    if (!supported) return t.skip(`no user xattrs in ${dir}`);
    const src = imageWithXattrs();
    const tarball = join(dir, "xattrimg.tar.gz");
    assert.equal(convert("--xattrs", src, tarball).status, 0);
    const parent = fresh();
    mkdirSync(parent);
    const r = run(TAR2DIR, ["--xattrs", tarball, parent]);
    assert.equal(r.status, 0, r.stderr);
    assertKept(join(parent, "xattrimg"));
    const storage = fresh("-storage");
    const i1 = run(IMAGE, ["-s", storage, "import", "--xattrs", tarball, "a"]);
    assert.equal(i1.status, 0, i1.stderr);
    assertKept(join(storage, "img/a+latest"));
    const i2 = run(IMAGE, ["-s", storage, "--xattrs", "import", src, "b"]);
    assert.equal(i2.status, 0, i2.stderr);
    assertKept(join(storage, "img/b+latest"));
    const i3 = run(IMAGE, ["-s", storage, "import", src, "c"]);
    assert.equal(i3.status, 0, i3.stderr);
    assertNone(join(storage, "img/c+latest"));
    const c = convert("--xattrs", src, "from-dir");
    assert.equal(c.status, 0, c.stderr);
    assertKept(join(dir, "storage/img/from-dir+latest"));
  });

  it("dir → squash → dir keeps user xattrs with --xattrs", (t) => {
    if (!supported) return t.skip(`no user xattrs in ${dir}`);
    if (spawnSync("sh", ["-c", "command -v mksquashfs && command -v unsquashfs"]).status !== 0)
      return t.skip("no squashfs-tools");
    const src = imageWithXattrs();
    const sq = fresh(".sqfs");
    const s = convert("--xattrs", src, sq);
    assert.equal(s.status, 0, s.stderr);
    const back = fresh();
    const u = convert("--xattrs", sq, back);
    assert.equal(u.status, 0, u.stderr);
    assertKept(back);
    const none = fresh();
    assert.equal(convert(sq, none).status, 0);
    assertNone(none);
  });
});
