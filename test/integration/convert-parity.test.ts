// ch-convert and ch-tar2dir do to images what Charliecloud's do, and nothing more: /dev emptied
// when a tarball becomes a directory or SquashFS; the image's own etc/resolv.conf and etc/hosts
// kept, symlinks included; *.tar.Z and the other *.tar.? names Charliecloud infers are tarballs;
// ch-tar2dir with no arguments prints its usage.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cleanup, DIST, type Result, run, tmp } from "../helpers.ts";
import { imageMembers, type Member, tarBytes, writeTar } from "../tarballs.ts";

const CONVERT = join(DIST, "ch-convert");
const TAR2DIR = join(DIST, "ch-tar2dir");

let dir: string;
let n = 0;
const fresh = (suffix = "") => join(dir, `t${++n}${suffix}`);
const convert = (...args: string[]): Result =>
  run(CONVERT, args, { env: { ...process.env, CH_IMAGE_STORAGE: join(dir, "storage") } });
const has = (tool: string) => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0;

before(() => {
  dir = tmp("ch-parity-");
});
after(() => cleanup(dir));

/** What `docker export` leaves in /dev, and more. */
const devMembers = (prefix = ""): Member[] => [
  { path: `${prefix}dev/`, type: "Directory" },
  { path: `${prefix}dev/console`, type: "CharacterDevice" },
  { path: `${prefix}dev/pts/`, type: "Directory" },
  { path: `${prefix}dev/shm/`, type: "Directory", mode: 0o1777 },
  { path: `${prefix}dev/shm/leftover`, body: "x" },
  { path: `${prefix}dev/.dockerenv`, body: "" },
  { path: `${prefix}dev/fd`, type: "SymbolicLink", linkpath: "/proc/self/fd" },
];

describe("/dev is emptied when a tarball becomes an image", () => {
  it("tar -> dir (ch-convert), with and without a top-level directory to strip", () => {
    for (const prefix of ["", "./", "wrapper/"]) {
      const out = fresh();
      const r = convert("-q", writeTar(fresh(".tar.gz"), [...imageMembers(prefix), ...devMembers(prefix)]), out);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(lstatSync(join(out, "dev")).isDirectory(), prefix);
      assert.deepEqual(readdirSync(join(out, "dev")), [], `prefix ${JSON.stringify(prefix)}`);
      assert.equal(readFileSync(join(out, "etc/motd"), "utf8"), "hi\n");
    }
  });

  it("tar -> dir (ch-tar2dir)", () => {
    const parent = fresh();
    mkdirSync(parent);
    const tarballs = fresh("-tarballs");
    mkdirSync(tarballs);
    const tarball = writeTar(join(tarballs, "img.tar"), [...imageMembers(), ...devMembers()]);
    const r = run(TAR2DIR, [tarball, parent]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readdirSync(join(parent, "img/dev")), []);
  });

  it("tar -> squash (ch-convert)", { skip: !has("mksquashfs") && "no mksquashfs" }, () => {
    const sq = fresh(".sqfs");
    const r = convert("-q", writeTar(fresh(".tar"), [...imageMembers(), ...devMembers()]), sq);
    assert.equal(r.status, 0, r.stderr);
    const list = spawnSync("unsquashfs", ["-l", sq], { encoding: "utf8" });
    assert.equal(list.status, 0, list.stderr);
    const paths = list.stdout.split("\n").filter((l) => l.startsWith("squashfs-root/"));
    assert.ok(paths.includes("squashfs-root/dev"), list.stdout);
    assert.deepEqual(
      paths.filter((p) => p.startsWith("squashfs-root/dev/")),
      [],
    );
    assert.ok(paths.includes("squashfs-root/etc/motd"));
  });

  it("a directory image keeps its /dev (dir -> tar, as Charliecloud)", () => {
    const img = fresh();
    mkdirSync(join(img, "dev/keep"), { recursive: true });
    mkdirSync(join(img, "etc"));
    const tarball = fresh(".tar");
    const r = convert("-q", img, tarball);
    assert.equal(r.status, 0, r.stderr);
    const list = spawnSync("tar", ["-tf", tarball], { encoding: "utf8" });
    assert.ok(list.stdout.split("\n").includes("./dev/keep/"), list.stdout);
  });
});

describe("the image's etc/resolv.conf and etc/hosts are the image's", () => {
  it("symlinks stay symlinks (dangling or not), files stay as they are", () => {
    const out = fresh();
    const tarball = writeTar(fresh(".tar"), [
      ...imageMembers(),
      { path: "etc/resolv.conf", type: "SymbolicLink", linkpath: "../run/systemd/resolve/stub-resolv.conf" },
      { path: "etc/hosts.real", body: "127.0.0.1 image-host\n" },
      { path: "etc/hosts", type: "SymbolicLink", linkpath: "hosts.real" },
      { path: "etc/passwd", body: "me:x:1:1::/:/bin/sh\n" },
    ]);
    const r = convert("-q", tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(readlinkSync(join(out, "etc/resolv.conf")), "../run/systemd/resolve/stub-resolv.conf");
    assert.equal(readlinkSync(join(out, "etc/hosts")), "hosts.real");
    assert.equal(readFileSync(join(out, "etc/hosts.real"), "utf8"), "127.0.0.1 image-host\n");
    assert.equal(readFileSync(join(out, "etc/passwd"), "utf8"), "me:x:1:1::/:/bin/sh\n");
    assert.ok(!existsSync(join(out, "run")), "nothing created through the dangling symlink");
  });

  it("missing ones are created empty", () => {
    const out = fresh();
    const r = convert("-q", writeTar(fresh(".tar"), imageMembers()), out);
    assert.equal(r.status, 0, r.stderr);
    for (const f of ["etc/resolv.conf", "etc/hosts"]) {
      assert.ok(lstatSync(join(out, f)).isFile(), f);
      assert.equal(statSync(join(out, f)).size, 0);
    }
  });
});

describe("format inference: every *.tar.* Charliecloud infers is a tarball", () => {
  it("*.tar.Z, *.tar.lz, *.tlz, *.tar.xz, *.tgz: tar, in and out (dry run)", () => {
    for (const name of ["foo.tar.Z", "foo.tar.lz", "foo.tlz", "foo.tar.xz", "foo.tgz", "foo.tar.zst"]) {
      const i = convert("-n", name, "./out");
      assert.equal(i.status, 0, i.stderr);
      assert.match(i.stderr, new RegExp(`input: +tar +${name.replaceAll(".", "\\.")}\\n`));
      const o = convert("-n", "./img", name);
      assert.equal(o.status, 0, o.stderr);
      assert.match(o.stderr, new RegExp(`output: +tar +${name.replaceAll(".", "\\.")}\\n`));
    }
  });

  it("a .tar.Z (compress) unpacks", { skip: !has("compress") && "no compress(1) (Debian: ncompress)" }, () => {
    const plain = fresh(".tar");
    writeFileSync(plain, tarBytes(imageMembers()));
    const z = spawnSync("compress", ["-c", plain]);
    assert.equal(z.status, 0);
    const tarball = `${plain}.Z`;
    writeFileSync(tarball, z.stdout);
    const out = fresh();
    const r = convert("-q", tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(readFileSync(join(out, "etc/motd"), "utf8"), "hi\n");
  });

  it("writing a .tar.Z is refused up front, with what can be written", () => {
    const img = fresh();
    assert.equal(convert("-q", writeTar(fresh(".tar"), imageMembers()), img).status, 0);
    const out = fresh(".tar.Z");
    const r = convert("-q", img, out);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /can't write tarball .*\.tar\.Z: unsupported compression for output; use \.tar, \.tar\.gz/);
    assert.ok(!existsSync(out));
  });
});

describe("ch-tar2dir with no arguments", () => {
  it("prints its usage on stderr and exits 1", () => {
    const r = run(TAR2DIR, []);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^Usage: ch-tar2dir \[OPTION\.\.\.\] TARBALL DIR\n/);
    assert.match(r.stderr, /--xattrs/);
  });
});

describe("an extended header too big to read", () => {
  it("is refused, naming the member, rather than unpacking it with the wrong name", (t) => {
    if (!has("python3")) return t.skip("python3 not found: it writes this test's tarball");
    const tarball = fresh(".tar");
    // A pax header of 1.1 MB (a comment) before a member whose real name is in that header.
    const py = `import io, tarfile, sys
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    for name in ("bin/", "dev/", "usr/"):
        i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; t.addfile(i)
    i = tarfile.TarInfo("etc/real-name"); i.size = 3
    i.pax_headers = {"comment": "x" * 1100000, "path": "etc/real-name"}
    t.addfile(i, io.BytesIO(b"hi\\n"))`;
    assert.equal(spawnSync("python3", ["-c", py, tarball]).status, 0);
    const out = fresh();
    const r = convert(tarball, out);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /refusing unsafe member ".+": its extended header \(\d+ bytes\) is over the 1048576 bytes read/);
    assert.ok(!existsSync(out), "nothing written");
  });
});
