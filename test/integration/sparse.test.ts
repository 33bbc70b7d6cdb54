// GNU sparse members (GNU tar --sparse: old GNU, pax 0.0, 0.1 and 1.0) unpack as sparse files:
// the same bytes, the same names, holes left as holes; hostile maps are refused, one line naming
// the member. Tarballs from GNU tar itself, and crafted ones for the hostile maps.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Header } from "tar";
import { paxRecord } from "../../src/image/xattrs.ts";
import { cleanup, DIST, run, tmp } from "../helpers.ts";
import { imageMembers, tarBytes } from "../tarballs.ts";

const CONVERT = join(DIST, "ch-convert");
const TAR2DIR = join(DIST, "ch-tar2dir");
const ERROR = /^ch-convert\[\d+\]: .+ \([a-z0-9-]+\.ts:\d+ \d+\)\n$/;
const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
let n = 0;
const fresh = (suffix = "") => join(dir, `t${++n}${suffix}`);

/** Data of island i: not zeros, different everywhere. */
const island = (i: number, len: number) => Buffer.from(Array.from({ length: len }, (_, k) => (i * 7 + k * 13 + 1) % 251 || 1));

/** Writes a file with data at the given (offset, length) places and holes elsewhere, size bytes. */
function sparseFile(path: string, size: number, places: [number, number][]): void {
  const fd = openSync(path, "w");
  for (const [i, [off, len]] of places.entries()) writeSync(fd, island(i, len), 0, len, off);
  ftruncateSync(fd, size);
  closeSync(fd);
}

const LONG = `sparse/${"n".repeat(120)}/long`;
/** The sparse files of the source tree: relative path, size, data places. */
const FILES: [string, number, [number, number][]][] = [
  // 30 data segments: more than an old GNU header holds (4), so extension blocks follow it.
  ["sparse/many", 8 * MiB, Array.from({ length: 30 }, (_, i) => [i * 256 * KiB, 4 * KiB] as [number, number])],
  ["sparse/hole-first", 3 * MiB, [[2 * MiB, 8 * KiB]]],
  ["sparse/all-hole", 2 * MiB, []],
  [LONG, 2 * MiB, [[0, 4 * KiB]]],
];

let src: string;
before(() => {
  dir = tmp("ch-sparse-");
  src = join(dir, "src");
  for (const d of ["bin", "etc", "usr", "sparse", LONG.replace(/\/long$/, "")]) mkdirSync(join(src, d), { recursive: true });
  writeFileSync(join(src, "etc/motd"), "hi\n");
  for (const [rel, size, places] of FILES) sparseFile(join(src, rel), size, places);
});
after(() => cleanup(dir));

/** GNU tar's sparse tarball of src, in the given format. */
function gnuTar(format: string): string {
  const out = fresh(".tar");
  const args = format === "gnu" ? ["--format=gnu"] : ["--format=pax", `--sparse-version=${format}`];
  const r = spawnSync("tar", ["--sparse", ...args, "-C", src, "-cf", out, "."], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return out;
}

function checkSame(out: string): void {
  for (const [rel, size] of FILES) {
    const got = readFileSync(join(out, rel));
    assert.equal(got.length, size, rel);
    assert.ok(got.equals(readFileSync(join(src, rel))), `${rel}: same bytes`);
    // Holes are holes: far fewer blocks than the size needs.
    assert.ok(statSync(join(out, rel)).blocks * 512 < size / 4, `${rel}: sparse (${statSync(join(out, rel)).blocks} blocks)`);
  }
  assert.deepEqual(readdirSync(join(out, "sparse")).sort(), ["all-hole", "hole-first", "many", "n".repeat(120)]);
  assert.equal(readFileSync(join(out, "etc/motd"), "utf8"), "hi\n");
}

describe("GNU tar --sparse tarballs unpack as sparse files", () => {
  const marks: Record<string, string> = {
    gnu: "", // the type 'S' headers, checked below
    "0.0": "GNU.sparse.offset=",
    "0.1": "GNU.sparse.map=",
    "1.0": "GNU.sparse.major=1",
  };
  for (const format of ["gnu", "0.0", "0.1", "1.0"]) {
    it(`${format === "gnu" ? "old GNU (--format=gnu)" : `pax ${format}`}: same bytes, same names, holes`, () => {
      const tarball = gnuTar(format);
      const bytes = readFileSync(tarball);
      // Really sparse: GNU tar left the holes out.
      assert.ok(bytes.length < 2 * MiB, `tarball of ${bytes.length} bytes`);
      if (format === "gnu") assert.ok(bytes.includes(Buffer.from("ustar  \0")) && sparseTypeCount(bytes) === FILES.length);
      else assert.ok(bytes.includes(marks[format]));
      const out = fresh();
      const r = run(CONVERT, [tarball, out]);
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /ignored/);
      checkSame(out);
      assert.ok(!readdirSync(out).some((e) => e.startsWith("GNUSparseFile")));
    });
  }

  it("ch-tar2dir, gzipped old GNU", () => {
    const tarball = join(fresh("-tarballs"), "sp.tar.gz");
    mkdirSync(join(tarball, ".."));
    const r0 = spawnSync("tar", ["--sparse", "--format=gnu", "-C", src, "-czf", tarball, "."]);
    assert.equal(r0.status, 0);
    const parent = fresh();
    mkdirSync(parent);
    const r = run(TAR2DIR, [tarball, parent]);
    assert.equal(r.status, 0, r.stderr);
    checkSame(join(parent, "sp"));
  });
});

/** How many headers of type 'S' (old GNU sparse) a GNU-format archive has, at block starts. */
function sparseTypeCount(bytes: Buffer): number {
  let count = 0;
  for (let off = 0; off + 512 <= bytes.length; off += 512)
    if (bytes[off + 156] === 0x53 && bytes.toString("latin1", off + 257, off + 265) === "ustar  \0") count++;
  return count;
}

// Crafted members.

/** A pax extended header with these records. */
function pax(records: [string, string][]): Buffer {
  const body = Buffer.concat(records.map(([k, v]) => paxRecord(k, Buffer.from(v))));
  const head = Buffer.alloc(512);
  new Header({ path: "PaxHeader/f", type: "ExtendedHeader", mode: 0o644, size: body.length, mtime: new Date(0) }).encode(head, 0);
  return Buffer.concat([head, body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

/** A plain file member, without the end-of-archive marker. */
const fileMember = (path: string, body: Buffer | string) =>
  tarBytes([{ path, body: body.toString("latin1") }]).subarray(0, -1024);

/** An old GNU sparse member: header fields written as given (strings, octal), no extension. */
function oldGnu(path: string, realSize: string, map: [string, string][], data: Buffer): Buffer {
  const head = Buffer.alloc(512);
  new Header({ path, type: "File", mode: 0o644, size: data.length, mtime: new Date(0) }).encode(head, 0);
  head[156] = 0x53;
  head.write("ustar  \0", 257, 8, "latin1");
  head.fill(0, 345, 500);
  map.forEach(([o, l], i) => {
    head.write(o, 386 + i * 24, 12, "latin1");
    head.write(l, 386 + i * 24 + 12, 12, "latin1");
  });
  head.write(realSize, 483, 12, "latin1");
  head.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of head) sum += b;
  head.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  return Buffer.concat([head, data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

const oct = (v: number) => v.toString(8).padStart(11, "0");

describe("hostile sparse maps are refused, naming the member", () => {
  const cases: [string, Buffer, RegExp][] = [
    [
      "pax 0.1: overlapping segments",
      Buffer.concat([
        pax([
          ["GNU.sparse.size", "30"],
          ["GNU.sparse.map", "0,10,5,10"],
        ]),
        fileMember("f", "x".repeat(20)),
      ]),
      /refusing member "f": bad sparse map \(pax 0\.1\): segment 2 \(offset 5\) overlaps/,
    ],
    [
      "pax 0.1: a segment past the real size",
      Buffer.concat([
        pax([
          ["GNU.sparse.size", "50"],
          ["GNU.sparse.map", "0,10,100,10"],
        ]),
        fileMember("f", "x".repeat(20)),
      ]),
      /refusing member "f": bad sparse map \(pax 0\.1\): segment 2 \(offset 100, 10 bytes\) goes past the real size 50/,
    ],
    [
      "pax 0.1: segments out of order, the real name given",
      Buffer.concat([
        pax([
          ["GNU.sparse.size", "100"],
          ["GNU.sparse.name", "bin/real"],
          ["GNU.sparse.map", "50,10,0,10"],
        ]),
        fileMember("GNUSparseFile.1/real", "x".repeat(20)),
      ]),
      /refusing member "bin\/real": bad sparse map \(pax 0\.1\): segment 2 \(offset 0\) overlaps or precedes/,
    ],
    [
      "pax 0.0: a number too big",
      Buffer.concat([
        pax([
          ["GNU.sparse.size", "100"],
          ["GNU.sparse.numblocks", "1"],
          ["GNU.sparse.offset", "99999999999999999999999"],
          ["GNU.sparse.numbytes", "10"],
        ]),
        fileMember("f", "x".repeat(10)),
      ]),
      /refusing member "f": bad sparse map \(pax 0\.0\): bad GNU\.sparse\.offset/,
    ],
    [
      "pax 0.0: more data than the map says",
      Buffer.concat([
        pax([
          ["GNU.sparse.size", "100"],
          ["GNU.sparse.offset", "0"],
          ["GNU.sparse.numbytes", "10"],
        ]),
        fileMember("f", "x".repeat(600)),
      ]),
      /refusing member "f": bad sparse map \(pax 0\.0\): segments hold 10 bytes but the member has 600/,
    ],
    [
      "pax 1.0: a huge segment count",
      Buffer.concat([
        pax([
          ["GNU.sparse.major", "1"],
          ["GNU.sparse.minor", "0"],
          ["GNU.sparse.name", "f"],
          ["GNU.sparse.realsize", "100"],
        ]),
        fileMember("GNUSparseFile.1/f", "99999999999\n0\n10\n"),
      ]),
      /refusing member "f": bad sparse map \(pax 1\.0\): 99999999999 segments, more than/,
    ],
    [
      "pax 1.0: a map longer than the member",
      Buffer.concat([
        pax([
          ["GNU.sparse.major", "1"],
          ["GNU.sparse.minor", "0"],
          ["GNU.sparse.name", "f"],
          ["GNU.sparse.realsize", "100"],
        ]),
        fileMember("GNUSparseFile.1/f", "3\n0\n10\n20\n"),
      ]),
      /refusing member "f": bad sparse map \(pax 1\.0\): the map is bigger than the member/,
    ],
    [
      "pax 1.0: garbage in the map",
      Buffer.concat([
        pax([
          ["GNU.sparse.major", "1"],
          ["GNU.sparse.minor", "0"],
          ["GNU.sparse.name", "f"],
          ["GNU.sparse.realsize", "100"],
        ]),
        fileMember("GNUSparseFile.1/f", `1\n0\n-5\n${"\0".repeat(600)}`),
      ]),
      /refusing member "f": bad sparse map \(pax 1\.0\): not a number in the map/,
    ],
    [
      "pax 1.0: an unknown version",
      Buffer.concat([
        pax([
          ["GNU.sparse.major", "2"],
          ["GNU.sparse.minor", "0"],
          ["GNU.sparse.name", "f"],
          ["GNU.sparse.realsize", "100"],
        ]),
        fileMember("GNUSparseFile.1/f", "0\n"),
      ]),
      /refusing member "f": bad sparse map \(pax 1\.0\): unsupported version 2\.0/,
    ],
    [
      "old GNU: overlapping segments",
      oldGnu(
        "f",
        oct(100),
        [
          [oct(0), oct(10)],
          [oct(5), oct(10)],
        ],
        Buffer.alloc(20, "x"),
      ),
      /refusing member "f": bad sparse map \(old GNU\): segment 2 \(offset 5\) overlaps/,
    ],
    [
      "old GNU: a segment past the real size",
      oldGnu("f", oct(10), [[oct(5), oct(10)]], Buffer.alloc(10, "x")),
      /refusing member "f": bad sparse map \(old GNU\): segment 1 \(offset 5, 10 bytes\) goes past the real size 10/,
    ],
    [
      "old GNU: a real size beyond what a number can hold (base-256)",
      oldGnu("f", "\x80\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", [[oct(0), oct(10)]], Buffer.alloc(10, "x")),
      /refusing member "f": bad sparse map \(old GNU\): number out of range/,
    ],
  ];
  for (const [name, member, why] of cases) {
    it(name, () => {
      const tarball = fresh(".tar");
      writeFileSync(tarball, Buffer.concat([tarBytes(imageMembers()).subarray(0, -1024), member, Buffer.alloc(1024)]));
      const out = fresh();
      const r = run(CONVERT, ["-q", tarball, out]);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, ERROR);
      assert.match(r.stderr, why);
      assert.ok(!existsSync(out));
    });
  }
});
