// The SquashFS reader (src/image/squashfs-read.ts) against images made by mksquashfs: every
// compression it offers, with and without fragments, block sizes from 4 KiB to 1 MiB, nested and
// large directories, sparse and large files; then ch/metadata.json read by squashDefaults with
// the directory-image rules (symlinks not followed, size cap); then corrupt and truncated
// images, which must give an error or a warning, never a crash or a hang.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { METADATA_MAX, squashDefaults } from "../../src/container/defaults.ts";
import { lzmaAloneDecompress, xzDecompress } from "../../src/image/lzma.ts";
import { InodeType, lz4Decompress, lzoDecompress, SquashError, SquashImage } from "../../src/image/squashfs-read.ts";
import { cleanup, run, tmp } from "../helpers.ts";

let dir: string;
let src: string;

/** Deterministic bytes that compress somewhat (text-like, with repeats) or not at all. */
function bytes(n: number, seed: number, text: boolean): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = text ? 97 + (x % 7) : x & 0xff;
  }
  return b;
}

/** Files of the source tree, relative path -> content. */
const FILES: Record<string, Buffer> = {};

function put(rel: string, data: Buffer): void {
  mkdirSync(join(src, rel, ".."), { recursive: true });
  writeFileSync(join(src, rel), data);
  FILES[rel] = data;
}

function squash(name: string, args: string[], from = src): string {
  const out = join(dir, `${name}.sqfs`);
  const r = run("mksquashfs", [from, out, "-noappend", "-quiet", "-no-progress", ...args]);
  assert.equal(r.status, 0, r.stderr);
  return out;
}

function readAll(file: string, rel: string, max = 1 << 24): Buffer | null {
  const img = new SquashImage(file);
  try {
    const n = img.lookup(rel.split("/"));
    return n ? img.readFile(n, max) : null;
  } finally {
    img.close();
  }
}

before(() => {
  dir = tmp("ch-sqfs-");
  src = join(dir, "src");
  put("ch/metadata.json", Buffer.from('{"entrypoint":["/bin/sh","-c"],"cmd":["echo hi"],"cwd":"/w"}'));
  put("a/b/c/d/e/deep", Buffer.from("deep\n"));
  put("big-text", bytes(2 * 131072 + 5000, 1, true)); // blocks + a tail
  put("big-random", bytes(140000, 2, false)); // incompressible: stored uncompressed
  put("exact", bytes(2 * 131072, 3, true)); // a multiple of the block size: no tail
  put("empty", Buffer.alloc(0));
  const sparse = Buffer.alloc(3 << 20);
  sparse.write("end", sparse.length - 3);
  put("sparse", sparse);
  // More than 256 entries (several directory headers) and more than 8 KiB of listing (several
  // metadata blocks; an extended directory inode with an index).
  for (let i = 0; i < 700; i++) put(`many/file-with-a-longish-name-${String(i).padStart(4, "0")}`, Buffer.from(`${i}\n`));
  symlinkSync("big-text", join(src, "link"));
});
after(() => cleanup(dir));

describe("SquashImage reads files from mksquashfs images", () => {
  const variants: [string, string[]][] = [];
  for (const comp of ["gzip", "zstd", "lz4", "lzo", "xz", "lzma"]) {
    variants.push([comp, ["-comp", comp]]);
    variants.push([`${comp}, no fragments, 4 KiB blocks`, ["-comp", comp, "-no-fragments", "-b", "4096"]]);
  }
  variants.push(["gzip, 1 MiB blocks, fragments always", ["-b", "1M", "-always-use-fragments"]]);
  variants.push(["nothing compressed", ["-noI", "-noD", "-noF", "-noX"]]);
  variants.push(["lz4 high compression", ["-comp", "lz4", "-Xhc"]]);
  for (const [i, [name, args]] of variants.entries())
    it(name, () => {
      const file = squash(`v${i}`, args);
      const img = new SquashImage(file);
      try {
        for (const [rel, data] of Object.entries(FILES)) {
          const n = img.lookup(rel.split("/"));
          assert.ok(n, rel);
          assert.equal(n.type, InodeType.File, rel);
          assert.equal(img.fileSize(n), data.length, rel);
          assert.ok(img.readFile(n, 1 << 24).equals(data), `${name}: ${rel}`);
        }
        assert.equal(img.lookup(["nope"]), null);
        assert.equal(img.lookup(["many", "file-with-a-longish-name-0700"]), null);
        assert.equal(img.lookup(["link"])?.type, InodeType.Symlink);
        assert.equal(img.lookup(["a", "b"])?.type, InodeType.Dir);
      } finally {
        img.close();
      }
    });

  it("refuses a file larger than the maximum, and reading a non-file", () => {
    const file = squash("max", []);
    assert.throws(() => readAll(file, "big-text", 1000), /larger than 1000 bytes/);
    assert.throws(() => readAll(file, "link"), /not a regular file/);
    assert.throws(() => readAll(file, "a/b"), /not a regular file/);
    // A path through a file or a symlink is not followed.
    assert.throws(() => readAll(file, "link/x"), /link: not a directory/);
    assert.throws(() => readAll(file, "empty/x"), /empty: not a directory/);
  });

  /** `fn` with $PATH where no xz program is. */
  function withoutXz<T>(fn: () => T): T {
    const path = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      return fn();
    } finally {
      process.env.PATH = path;
    }
  }

  it("xz (with or without the x86 BCJ filter) and lzma are decoded here: no xz program needed", () => {
    const x86 = join(dir, "x86src");
    mkdirSync(x86);
    const code = readFileSync("/bin/busybox").subarray(0, 4 * 131072);
    writeFileSync(join(x86, "code"), code);
    writeFileSync(join(x86, "text"), FILES["big-text"]);
    for (const [name, args] of [
      ["xz", ["-comp", "xz"]],
      ["lzma", ["-comp", "lzma"]],
      ["xz-x86", ["-comp", "xz", "-Xbcj", "x86"]],
    ] as const) {
      const file = squash(`native-${name}`, [...args], x86);
      withoutXz(() => {
        assert.ok(readAll(file, "code")?.equals(code), name);
        assert.ok(readAll(file, "text")?.equals(FILES["big-text"]), name);
      });
    }
  });

  /** A tree of one file, "code": ARM BL instructions that all call one address (the ARM filter
   * makes them alike, so mksquashfs -Xbcj arm picks it); the directory and the code. */
  function armSource(): [string, Buffer] {
    const arm = join(dir, "armsrc");
    const code = Buffer.alloc(131072);
    for (let i = 0; i < code.length; i += 4) code.writeUInt32LE((0xeb000000 | (((0x200000 - i - 8) >>> 2) & 0xffffff)) >>> 0, i);
    mkdirSync(arm, { recursive: true });
    writeFileSync(join(arm, "code"), code);
    return [arm, code];
  }

  it("xz with another BCJ filter: by the xz program, else an error saying it is needed", () => {
    const [arm, code] = armSource();
    const file = squash("xz-arm", ["-comp", "xz", "-Xbcj", "arm"], arm);
    assert.ok(readAll(file, "code")?.equals(code));
    withoutXz(() =>
      assert.throws(
        () => readAll(file, "code"),
        /xz filter 0x7 not supported here: it needs the xz program, not found in \$PATH/,
      ),
    );
  });

  it("xz by the xz program: corrupt data, or more than a block, is an error saying so", () => {
    const [arm] = armSource();
    const file = squash("xz-arm-4k", ["-comp", "xz", "-Xbcj", "arm", "-b", "4096"], arm);
    const orig = readFileSync(file);
    // The first data block's xz stream, and the next block's.
    const magic = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0]);
    const first = orig.indexOf(magic, 96);
    const next = orig.indexOf(magic, first + 1);
    const corrupt = Buffer.from(orig);
    corrupt[first + 40] ^= 0xff;
    writeFileSync(join(dir, "xz-arm-corrupt.sqfs"), corrupt);
    assert.throws(
      () => readAll(join(dir, "xz-arm-corrupt.sqfs"), "code"),
      (e: Error) => e instanceof SquashError && /^bad xz data: .*xz: \(stdin\): Compressed data is corrupt$/.test(e.message),
    );
    // In its place, a stream (with the ARM filter: for the xz program) of 8 KiB, in a 4 KiB block.
    const bomb = execFileSync("xz", ["--check=none", "--arm", "--lzma2=dict=64KiB"], { input: Buffer.alloc(8192) });
    assert.ok(bomb.length <= next - first, `${bomb.length} bytes in a block of ${next - first}`);
    const big = Buffer.from(orig);
    bomb.copy(big, first);
    writeFileSync(join(dir, "xz-arm-big.sqfs"), big);
    assert.throws(
      () => readAll(join(dir, "xz-arm-big.sqfs"), "code"),
      (e: Error) => e instanceof SquashError && e.message === "bad xz data: larger than 4096 bytes",
    );
  });
});

describe("squashDefaults: ch/metadata.json of a SquashFS image, by the directory-image rules", () => {
  /** An image with only ch/ made by `make`. */
  function image(name: string, make: (root: string) => void, args: string[] = []): string {
    const root = join(dir, `root-${name}`);
    mkdirSync(join(root, "bin"), { recursive: true });
    make(root);
    return squash(`d-${name}`, args, root);
  }
  const GOOD = '{"entrypoint":["/bin/sh","-c"],"cmd":["echo $X"],"cwd":"/w/sub"}';

  it("reads ENTRYPOINT, CMD and WORKDIR in every compression", () => {
    for (const comp of ["gzip", "zstd", "lz4", "lzo", "xz", "lzma"]) {
      const file = image(
        `good-${comp}`,
        (r) => {
          mkdirSync(join(r, "ch"));
          writeFileSync(join(r, "ch/metadata.json"), GOOD);
        },
        ["-comp", comp],
      );
      assert.deepEqual(squashDefaults(file), { argv: ["/bin/sh", "-c", "echo $X"], cwd: "/w/sub", warnings: [] }, comp);
    }
  });

  it("no ch, or no metadata.json: no defaults, no warning", () => {
    assert.deepEqual(squashDefaults(image("noch", () => {})), { argv: [], cwd: null, warnings: [] });
    const f = image("nometa", (r) => mkdirSync(join(r, "ch")));
    assert.deepEqual(squashDefaults(f), { argv: [], cwd: null, warnings: [] });
  });

  it("does not follow a symlinked ch or metadata.json, nor read a huge or malformed one", () => {
    const cases: [string, (r: string) => void, RegExp][] = [
      [
        "chlink",
        (r) => {
          mkdirSync(join(r, "real"));
          writeFileSync(join(r, "real/metadata.json"), GOOD);
          symlinkSync("real", join(r, "ch"));
        },
        /:\/ch: not a directory/,
      ],
      ["chfile", (r) => writeFileSync(join(r, "ch"), GOOD), /:\/ch: not a directory/],
      [
        "metalink",
        (r) => {
          mkdirSync(join(r, "ch"));
          writeFileSync(join(r, "ch/real.json"), GOOD);
          symlinkSync("real.json", join(r, "ch/metadata.json"));
        },
        /:\/ch\/metadata\.json: not a regular file/,
      ],
      ["metadir", (r) => mkdirSync(join(r, "ch/metadata.json"), { recursive: true }), /not a regular file/],
      [
        "huge",
        (r) => {
          mkdirSync(join(r, "ch"));
          writeFileSync(join(r, "ch/metadata.json"), `{"cmd":["echo"]}${" ".repeat(METADATA_MAX)}`);
        },
        new RegExp(`larger than ${METADATA_MAX} bytes`),
      ],
      [
        "types",
        (r) => {
          mkdirSync(join(r, "ch"));
          writeFileSync(join(r, "ch/metadata.json"), '{"cmd":"echo"}');
        },
        /ignoring cmd in .*:\/ch\/metadata\.json: not a list of strings/,
      ],
    ];
    for (const [name, make, warning] of cases) {
      const d = squashDefaults(image(name, make));
      assert.deepEqual(d.argv, [], name);
      assert.equal(d.warnings.length, 1, `${name}: ${d.warnings}`);
      assert.match(d.warnings[0], warning, name);
    }
  });

  it("a file that is not a SquashFS image, or not there: a warning", () => {
    const fake = join(dir, "fake.sqfs");
    writeFileSync(fake, "hsqs not really");
    let d = squashDefaults(fake);
    assert.deepEqual(d.argv, []);
    assert.match(d.warnings[0], /^ignoring .*fake\.sqfs:\/ch\/metadata\.json: can't read .*fake\.sqfs: superblock past the end/);
    d = squashDefaults(join(dir, "absent.sqfs"));
    assert.match(d.warnings[0], /can't read .*absent\.sqfs: ENOENT/);
    d = squashDefaults(dir);
    assert.match(d.warnings[0], /not a regular file/);
  });
});

describe("corrupt and truncated images: an error, never a crash or a hang", () => {
  let good: string;
  let orig: Buffer;
  before(() => {
    good = squash("corrupt-base", []);
    orig = readFileSync(good);
  });

  /** The image with the superblock changed by `edit`. */
  function edited(name: string, edit: (b: Buffer) => void): string {
    const b = Buffer.from(orig);
    edit(b);
    const f = join(dir, `${name}.sqfs`);
    writeFileSync(f, b);
    return f;
  }

  it("each superblock check names what is wrong", () => {
    const cases: [string, (b: Buffer) => void, RegExp][] = [
      ["magic", (b) => b.write("xxxx", 0), /not a SquashFS image \(bad magic\)/],
      ["version", (b) => b.writeUInt16LE(3, 28), /SquashFS version 3\.0 not supported \(only 4\.0\)/],
      ["blocksize", (b) => b.writeUInt32LE(12345, 12), /bad block size 12345/],
      ["blocklog", (b) => b.writeUInt16LE(30, 22), /bad block size/],
      ["used", (b) => b.writeBigUInt64LE(BigInt(b.length + 4096), 40), /truncated: \d+ bytes of \d+/],
      ["tables", (b) => b.writeBigUInt64LE(b.readBigUInt64LE(72), 64), /bad inode or directory table position/],
      ["inodetable", (b) => b.writeBigUInt64LE(1n << 60n, 64), /inode table past the end of the image/],
      ["compression", (b) => b.writeUInt16LE(9, 20), /unknown compression 9/],
      ["root", (b) => b.writeBigUInt64LE(1n << 40n, 32), /inode reference past the end/],
    ];
    for (const [name, edit, want] of cases) {
      const f = edited(name, edit);
      assert.throws(
        () => readAll(f, "ch/metadata.json"),
        (e: Error) => e instanceof SquashError && want.test(e.message),
        name,
      );
      const d = squashDefaults(f);
      assert.deepEqual(d.argv, [], name);
      assert.match(d.warnings[0], want, name);
    }
  });

  it("stops after a bounded number of metadata blocks", () => {
    // The 700-entry directory's listing spans several metadata blocks.
    const img = new SquashImage(good, 3);
    try {
      assert.throws(() => img.lookup(["many", "file-with-a-longish-name-0699"]), /too many metadata blocks read/);
    } finally {
      img.close();
    }
    const ok = new SquashImage(good, 20);
    try {
      assert.ok(ok.lookup(["many", "file-with-a-longish-name-0699"]));
    } finally {
      ok.close();
    }
  });

  it("truncated anywhere: an error or, before what is read, the file", () => {
    for (let i = 0; i < 64; i++) {
      const f = join(dir, "trunc.sqfs");
      writeFileSync(f, orig);
      const len = Math.floor((orig.length * i) / 64);
      truncateSync(f, len);
      const d = squashDefaults(f);
      assert.deepEqual(d.argv, [], `truncated at ${len}`);
      assert.equal(d.warnings.length, 1, `truncated at ${len}`);
    }
  });

  it("random damage in every compression: a SquashError or some bytes, and it ends", () => {
    let x = 42;
    const rnd = () => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return x / 2 ** 32;
    };
    for (const comp of ["gzip", "zstd", "lz4", "lzo", "xz", "lzma"]) {
      const base = readFileSync(squash(`fuzz-${comp}`, ["-comp", comp]));
      const f = join(dir, `fuzzed-${comp}.sqfs`);
      let errors = 0;
      for (let k = 0; k < 60; k++) {
        const b = Buffer.from(base);
        for (let i = 0, n = 1 + Math.floor(rnd() * 6); i < n; i++) {
          // Mostly the superblock and the tables (at the end), where the structure is.
          const r = rnd();
          const at =
            r < 0.3 ? Math.floor(rnd() * 96) : r < 0.8 ? b.length - 1 - Math.floor(rnd() * 8192) : Math.floor(rnd() * b.length);
          b[Math.max(0, at)] = Math.floor(rnd() * 256);
        }
        writeFileSync(f, b);
        for (const rel of ["ch/metadata.json", "big-text", "many/file-with-a-longish-name-0600"]) {
          try {
            const got = readAll(f, rel);
            // Damage elsewhere: what is read may still differ (data is not checksummed), but
            // never beyond the size the inode gives.
            if (got !== null) assert.ok(got.length <= 1 << 24);
          } catch (e) {
            assert.ok(e instanceof SquashError, `${comp} #${k} ${rel}: ${(e as Error).stack}`);
            errors++;
          }
        }
      }
      assert.ok(errors > 0, `${comp}: the damage was noticed`);
    }
  });
});

describe("lz4, lzo, lzma and xz decoders refuse bad input", () => {
  it("lz4", () => {
    assert.deepEqual(lz4Decompress(Buffer.from([0x30, 97, 98, 99]), 10), Buffer.from("abc"));
    assert.deepEqual(lz4Decompress(Buffer.from([0x11, 97, 1, 0]), 10), Buffer.from("aaaaaa"));
    assert.throws(() => lz4Decompress(Buffer.from([0x30, 97]), 10), /literals past the end/);
    assert.throws(() => lz4Decompress(Buffer.from([0x00, 5, 0]), 10), /offset out of range/);
    assert.throws(() => lz4Decompress(Buffer.from([0x10, 97, 0, 0]), 10), /offset out of range/);
    assert.throws(() => lz4Decompress(Buffer.from([0x10, 97, 1]), 10), /truncated offset/);
    assert.throws(() => lz4Decompress(Buffer.from([0x30, 97, 98, 99]), 2), /output too large/);
    assert.throws(() => lz4Decompress(Buffer.from([0x1f, 97, 1, 0, 255]), 1000), /truncated length/);
    assert.throws(() => lz4Decompress(Buffer.from([0x1f, 97, 1, 0, 200]), 218), /output too large/);
    assert.throws(() => lz4Decompress(Buffer.from([0xf0, 255, 255, 255]), 100), /length too large/);
  });

  it("lzo", () => {
    // 3 literals (first byte 17 + 3), then the end marker.
    assert.deepEqual(lzoDecompress(Buffer.from([20, 97, 98, 99, 0x11, 0, 0]), 10), Buffer.from("abc"));
    assert.deepEqual(lzoDecompress(Buffer.from([0x11, 0, 0]), 10), Buffer.alloc(0));
    assert.throws(() => lzoDecompress(Buffer.alloc(0), 10), /bad lzo data: truncated/);
    assert.throws(() => lzoDecompress(Buffer.from([0x11, 0, 0, 1]), 10), /data after the end marker/);
    assert.deepEqual(lzoDecompress(Buffer.from([18, 97, 0x40, 0, 0x11, 0, 0]), 10), Buffer.from("aaaa"));
    assert.throws(() => lzoDecompress(Buffer.from([18, 97, 0x40, 1]), 10), /offset out of range/);
    assert.throws(() => lzoDecompress(Buffer.from([25, 97]), 10), /literals past the end/);
    assert.throws(() => lzoDecompress(Buffer.from([20, 97, 98, 99]), 2), /output too large/);
    // A run of zero bytes in a length, longer than the output may be.
    assert.throws(() => lzoDecompress(Buffer.from([0, ...Array(10).fill(0), 1]), 1000), /length too large/);
  });

  it("lzma and xz", () => {
    assert.throws(() => lzmaAloneDecompress(Buffer.alloc(5), 10), /truncated lzma header/);
    const header = (props: number, size: bigint) => {
      const b = Buffer.alloc(13);
      b[0] = props;
      b.writeUInt32LE(1 << 16, 1);
      b.writeBigUInt64LE(size, 5);
      return b;
    };
    assert.throws(() => lzmaAloneDecompress(header(225, 1n), 10), /bad LZMA properties/);
    // lc 8, lp 4: valid in the LZMA specification, refused by liblzma (xz) as in LZMA2, and
    // here, before 6 MiB of probabilities are set up for it.
    const big = Buffer.concat([header(8 + 9 * 4, 1n), Buffer.from([0, 0, 0, 0, 0])]);
    assert.throws(() => lzmaAloneDecompress(big, 10), /bad LZMA properties: lc \+ lp is more than 4/);
    assert.throws(() => lzmaAloneDecompress(header(93, 11n), 10), /lzma data larger than 10 bytes/);
    assert.throws(
      () => lzmaAloneDecompress(Buffer.concat([header(93, 5n), Buffer.from([1, 0, 0, 0, 0])]), 10),
      /bad range coder start/,
    );
    assert.throws(() => lzmaAloneDecompress(Buffer.concat([header(93, 5n), Buffer.from([0, 1])]), 10), /truncated range coder/);
    assert.throws(
      () => lzmaAloneDecompress(Buffer.concat([header(93, 5n), Buffer.from([0, 1, 2, 3, 4])]), 10),
      /truncated LZMA data/,
    );
    assert.throws(() => xzDecompress(Buffer.from("not xz data at all"), 10), /not xz data/);
    assert.throws(() => xzDecompress(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0]), 10), /truncated xz data/);
    // Real xz data (xz itself, one block) decodes, and is refused beyond the maximum.
    const data = execFileSync("xz", ["--check=crc32", "--lzma2=dict=4KiB"], { input: "hello hello hello hello\n" });
    assert.equal(xzDecompress(data, 100).toString(), "hello hello hello hello\n");
    assert.throws(() => xzDecompress(data, 10), /xz data larger than 10 bytes/);
    // Its first LZMA2 chunk (after the stream and block headers, the control byte and two sizes)
    // with lc + lp more than 4.
    const props = 12 + (data[12] + 1) * 4 + 5;
    assert.equal(data[props], 0x5d); // lc 3, lp 0, pb 2
    const badProps = Buffer.from(data);
    badProps[props] = 8 + 9 * 4;
    assert.throws(() => xzDecompress(badProps, 100), /bad LZMA properties: lc \+ lp is more than 4/);
  });
});
