// Pure parts of image handling: names, formats, member path safety, modes.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, ftruncateSync, mkdirSync, openSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Parser, type ReadEntry } from "tar";
import { setVerbosity } from "../../src/cli/log.ts";
import { humanBytes, progressLine, startProgress } from "../../src/cli/progress.ts";
import { type InferFacts, inferFormat } from "../../src/image/formats.ts";
import { MemberScanner } from "../../src/image/headers.ts";
import { isPartialName, parsePartial } from "../../src/image/install.ts";
import { isTarName, tarCompression } from "../../src/image/pack.ts";
import { dirToName, imagePath, nameToDir, storageDir, validImageName } from "../../src/image/storage.ts";
import { memberMode, memberParts, sniffCompression } from "../../src/image/unpack.ts";
import { tarballImageName } from "../../src/programs/ch-tar2dir.ts";
import { cleanup, tmp } from "../helpers.ts";
import { tarBytes } from "../tarballs.ts";

describe("image names in storage", () => {
  it("maps / to % and : to + and back", () => {
    assert.equal(nameToDir("registry:5000/foo/bar:1.2"), "registry+5000%foo%bar+1.2");
    assert.equal(dirToName("registry+5000%foo%bar+1.2"), "registry:5000/foo/bar:1.2");
    assert.equal(imagePath("/s", "alpine:3.17"), "/s/img/alpine+3.17");
  });

  it("picks -s, then $CH_IMAGE_STORAGE, then /var/tmp/$USER.ch", () => {
    assert.equal(storageDir("/a/../b", { CH_IMAGE_STORAGE: "/c" }, "u"), "/b");
    assert.equal(storageDir(null, { CH_IMAGE_STORAGE: "/c" }, "u"), "/c");
    assert.equal(storageDir(null, {}, "alice"), "/var/tmp/alice.ch");
  });

  it("accepts references and refuses names that can't round-trip or escape", () => {
    for (const ok of ["foo", "alpine:3.17", "reg.io:5000/a/b:latest", `a/b@sha256:${"c".repeat(64)}`])
      assert.ok(validImageName(ok), ok);
    for (const bad of ["", "/abs", "a/../b", "a//b", "a%b", "a+b", "-x", "a b", ".hidden", "a/./b", "a/b@sha256:abc"])
      assert.ok(!validImageName(bad), bad);
  });
});

describe("tar member paths", () => {
  it("splits relative paths, dropping . and empty components", () => {
    assert.deepEqual(memberParts("./bin/sh"), ["bin", "sh"]);
    assert.deepEqual(memberParts("usr//lib/"), ["usr", "lib"]);
    assert.deepEqual(memberParts("./"), []);
    assert.deepEqual(memberParts("a..b/..c"), ["a..b", "..c"]);
  });

  it("refuses absolute paths and ..", () => {
    assert.throws(() => memberParts("/etc/passwd"), /refusing unsafe member "\/etc\/passwd": absolute path/);
    assert.throws(() => memberParts("../x"), /unsafe member "..\/x": path contains "\.\."/);
    assert.throws(() => memberParts("a/../../x"), /contains "\.\."/);
    assert.throws(() => memberParts("a/.."), /contains "\.\."/);
  });

  it("strips setuid/setgid and gives the owner rw (files) or rwx (directories)", () => {
    assert.equal(memberMode(0o4755, false), 0o755);
    assert.equal(memberMode(0o2755, true), 0o755);
    assert.equal(memberMode(0o000, false), 0o600);
    assert.equal(memberMode(0o000, true), 0o700);
    assert.equal(memberMode(0o1777, true), 0o1777);
    assert.equal(memberMode(undefined, false), 0o644);
  });

  it("sniffs compression from magic bytes", () => {
    assert.equal(sniffCompression(Buffer.from([0x1f, 0x8b, 8, 0])), "gzip");
    assert.equal(sniffCompression(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0])), "xz");
    assert.equal(sniffCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd])), "zstd");
    assert.equal(sniffCompression(Buffer.from("BZh91AY")), "bzip2");
    assert.equal(sniffCompression(Buffer.from([0x1f, 0x9d, 0x90])), "compress");
    assert.equal(sniffCompression(Buffer.from("LZIP\x01")), "lzip");
    assert.equal(sniffCompression(Buffer.from("bin/\0\0\0")), "none");
  });
});

describe("format inference", () => {
  const facts = (dirs: string[] = [], images: string[] = []): InferFacts => ({
    isDir: (p) => dirs.includes(p),
    inStorage: (n) => images.includes(n),
  });
  const infer = (d: string, input = true, f = facts()) => inferFormat(d, input, f);

  it("infers tar and squash by extension", () => {
    for (const t of ["a.tar", "a.tar.gz", "x/a.tgz", "a.tar.xz", "a.tar.zst", "a.tar.bz2", "/p/a.tbz2"])
      assert.equal(infer(t), "tar", t);
    for (const s of ["a.sqfs", "/x/a.squash", "a.squashfs"]) assert.equal(infer(s), "squash", s);
  });

  it("infers dir for paths and existing directories", () => {
    for (const d of ["/var/tmp/img", "./img", "../img", "img/", "."]) assert.equal(infer(d), "dir", d);
    assert.equal(infer("img", true, facts(["img"])), "dir");
  });

  it("infers ch-image for references: inputs only when in storage", () => {
    assert.equal(infer("alpine:3.17", true, facts([], ["alpine:3.17"])), "ch-image");
    assert.equal(infer("foo/bar", false), "ch-image");
    const r = infer("nope:1", true);
    assert.ok(typeof r === "object" && /can't infer format of nope:1/.test(r.error));
  });

  it("knows tarball compressions by name", () => {
    assert.equal(tarCompression("x.tar"), "none");
    assert.equal(tarCompression("x.tgz"), "gzip");
    assert.equal(tarCompression("x.tar.zst"), "zstd");
    assert.equal(tarCompression("x.txz"), "xz");
    assert.equal(tarCompression("x.zip"), null);
    assert.equal(tarCompression("x.tar.Z"), null, "read, not written");
  });

  it("knows tarballs by Charliecloud's globs: *.tar, *.t?z, *.tar.?, *.tar.??", () => {
    for (const t of ["x.tar", "x.tgz", "x.tlz", "x.tar.Z", "x.tar.lz", "x.tar.gz", "x.tar.zst", "x.tar.bz2"])
      assert.ok(isTarName(t), t);
    for (const t of ["x.tar.lzma1", "x.tarx", "x.zip", "tar", "x.tar/", "x.t/z"]) assert.ok(!isTarName(t), t);
  });

  it("names ch-tar2dir images after the tarball without extensions", () => {
    assert.equal(tarballImageName("/x/chtest.tar.gz"), "chtest");
    assert.equal(tarballImageName("debian-12.tgz"), "debian-12");
    assert.equal(tarballImageName("a.b.tar.xz"), "a.b");
    assert.equal(tarballImageName("plain.tar"), "plain");
  });
});

describe("partial directories", () => {
  it("recognizes partials of a target by name, host and PID", () => {
    assert.deepEqual(parsePartial("img", "img.partial-node1.example.com.4242"), { host: "node1.example.com", pid: 4242 });
    assert.deepEqual(parsePartial("img", "img.partial-h.7.old"), { host: "h", pid: 7 });
    assert.equal(parsePartial("img", "img2.partial-h.7"), null);
    assert.equal(parsePartial("img", "img.partial-h"), null);
    assert.ok(isPartialName("a%b+c.partial-h.12"));
    assert.ok(!isPartialName("alpine+3.17"));
  });
});

describe("progress line", () => {
  it("says bytes (of total, percent), entries and rate", () => {
    assert.equal(humanBytes(512), "512 B");
    assert.equal(humanBytes(51_825_976), "51.8 MB");
    assert.equal(
      progressLine("unpacking x.tar.gz", 12_500_000, 50_000_000, 1234, 2),
      "unpacking x.tar.gz: 12.5 MB of 50.0 MB (25%), 1,234 entries, 6.25 MB/s",
    );
    assert.equal(progressLine("packing x.tar", 2000, null, 1, 0), "packing x.tar: 2.00 kB, 1 entry");
  });

  it("draws only on a terminal, not with -q, at most every 100 ms, and clears its line", async () => {
    const out = {
      isTTY: true,
      columns: 40,
      text: "",
      write(s: string) {
        this.text += s;
      },
    };
    const p = startProgress("job", 100, out);
    p.update(1, 1);
    assert.equal(out.text, "", "nothing in the first moment");
    await new Promise((r) => setTimeout(r, 220));
    p.update(50, 5);
    p.update(60, 6);
    assert.equal(out.text.split("\r").length, 2, "one redraw: the second came too soon");
    assert.ok(out.text.startsWith("\rjob: 50 B of 100 B (50%), 5 entries"));
    assert.ok(out.text.length <= 1 + 39 + 3, "cut to the terminal's width");
    p.end();
    assert.ok(out.text.endsWith("\r\x1b[K"));
    p.update(70, 7);
    assert.ok(out.text.endsWith("\r\x1b[K"), "nothing after the end");
    for (const [tty, v] of [
      [false, 0],
      [true, -1],
    ] as const) {
      setVerbosity(v);
      const o = {
        isTTY: tty,
        text: "",
        write(s: string) {
          this.text += s;
        },
      };
      const q = startProgress("job", null, o);
      await new Promise((r) => setTimeout(r, 220));
      q.update(1, 1);
      q.end();
      assert.equal(o.text, "");
    }
    setVerbosity(0);
  });
});

describe("MemberScanner: old GNU sparse members, whatever the chunk sizes", () => {
  // GNU tar --format=gnu --sparse of a file with 30 data segments: 4 in the header, 26 in two
  // extension blocks, which the parser would take for data.
  const dir = tmp("ch-scanner-");
  const src = join(dir, "src");
  mkdirSync(src);
  const fd = openSync(join(src, "sp"), "w");
  for (let i = 0; i < 30; i++) writeSync(fd, Buffer.alloc(4096, 65 + (i % 26)), 0, 4096, i * 65536);
  ftruncateSync(fd, 30 * 65536);
  closeSync(fd);
  writeFileSync(join(src, "zz-after"), "after\n");
  const tar = Buffer.concat([
    execFileSync("tar", ["--sparse", "--format=gnu", "-b1", "--sort=name", "-C", src, "-cf", "-", "sp", "zz-after"]).subarray(
      0,
      -1024,
    ),
    tarBytes([{ path: "plain", body: "p" }]),
  ]);
  cleanup(dir);

  for (const size of [1, 100, 511, 512, 513, 4096, tar.length]) {
    it(`chunks of ${size}`, async () => {
      const s = new MemberScanner(false);
      const parser = new Parser({ strict: true });
      const seen: { path: string; type: string; size: number; body: string; cksum: number | undefined }[] = [];
      parser.on("entry", (e: ReadEntry) => {
        const m = { path: e.path, type: e.type, size: e.size ?? 0, body: "", cksum: e.header.cksum };
        seen.push(m);
        e.on("data", (c: Buffer) => {
          if (m.body.length < 20) m.body += c.toString("latin1");
        });
      });
      const out: Buffer[] = [];
      for (let off = 0; off < tar.length; off += size) {
        const pieces = s.write(Buffer.from(tar.subarray(off, off + size)));
        out.push(...pieces);
        for (const p of pieces) parser.write(p);
      }
      out.push(...s.end());
      await new Promise<void>((resolve, reject) => {
        parser.on("error", reject);
        parser.end(resolve);
      });
      assert.equal(Buffer.concat(out).length, tar.length - 2 * 512, "two extension blocks cut out");
      assert.deepEqual(
        seen.map((e) => [e.path, e.type, e.size]),
        [
          ["sp", "File", 30 * 4096],
          ["zz-after", "File", 6],
          ["plain", "File", 1],
        ],
      );
      assert.equal(seen[0].body.slice(0, 3), "AAA");
      assert.equal(seen[1].body, "after\n");
      const extra = s.take(1, seen[0].cksum);
      assert.equal(extra?.sparse?.kind, "old GNU");
      assert.equal(extra?.sparse?.error, null);
      assert.equal(extra?.sparse?.realSize, 30 * 65536);
      // GNU tar ends the map with an empty segment at the real size.
      const map = [...Array.from({ length: 30 }, (_, i) => [i * 65536, 4096]).flat(), 30 * 65536, 0];
      assert.deepEqual(extra?.sparse?.map, map);
    });
  }
});
