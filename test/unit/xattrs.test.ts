import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Header } from "tar";
import { MemberScanner } from "../../src/image/headers.ts";
import { parsePaxXattrs, paxRecord, type Xattrs } from "../../src/image/xattrs.ts";
import { tarBytes } from "../tarballs.ts";

/** A pax extended header (typeflag x) with these records, padded. */
function pax(body: Buffer, type: "ExtendedHeader" | "GlobalExtendedHeader" = "ExtendedHeader"): Buffer {
  const head = Buffer.alloc(512);
  new Header({ path: "PaxHeader/x", type, mode: 0o644, size: body.length, mtime: new Date(0) }).encode(head, 0);
  return Buffer.concat([head, body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

const members = (...m: Parameters<typeof tarBytes>[0]) => tarBytes(m).subarray(0, -1024);

describe("pax xattr records", () => {
  it("writes records whose length counts itself, across a digit boundary", () => {
    for (let n = 0; n < 1200; n++) {
      const r = paxRecord("SCHILY.xattr.user.a", Buffer.alloc(n, "v"));
      const len = Number(r.toString("latin1").split(" ")[0]);
      assert.equal(len, r.length, `value of ${n} bytes`);
      assert.equal(r[r.length - 1], 0x0a);
    }
  });

  it("reads SCHILY.xattr raw and LIBARCHIVE.xattr base64, SCHILY first, other keys ignored", () => {
    const bin = Buffer.from([0, 0xff, 0x0a, 0x3d, 0x20]);
    const body = Buffer.concat([
      paxRecord("path", Buffer.from("a/b")),
      paxRecord("SCHILY.xattr.user.bin", bin),
      paxRecord("SCHILY.xattr.user.eq=x", Buffer.from("v=w")),
      paxRecord("LIBARCHIVE.xattr.user.bin", Buffer.from(Buffer.from("other").toString("base64"))),
      paxRecord("LIBARCHIVE.xattr.user.sp%20ace", Buffer.from(Buffer.from("b64").toString("base64"))),
      paxRecord("mtime", Buffer.from("1.5")),
    ]);
    const x: Xattrs = new Map();
    parsePaxXattrs(body, x);
    assert.deepEqual(
      [...x].map(([k, v]) => [k, v.toString("latin1")]),
      [
        ["user.bin", bin.toString("latin1")],
        ["user.eq", "x=v=w"],
        ["user.sp ace", "b64"],
      ],
    );
  });

  it("stops at a malformed record", () => {
    const x: Xattrs = new Map();
    parsePaxXattrs(Buffer.concat([paxRecord("SCHILY.xattr.user.a", Buffer.from("1")), Buffer.from("99 junk")]), x);
    assert.deepEqual([...x.keys()], ["user.a"]);
  });
});

describe("MemberScanner", () => {
  const rec = (name: string, v: string) => paxRecord(`SCHILY.xattr.${name}`, Buffer.from(v));
  const big = "z".repeat(3000);
  const tar = Buffer.concat([
    members({ path: "bin/", type: "Directory" }),
    pax(Buffer.concat([rec("user.a", "1"), paxRecord("path", Buffer.from(`long/${"n".repeat(150)}`))])),
    members({ path: "ignored-by-pax-path", body: big }),
    pax(paxRecord("comment", Buffer.from("global"))),
    members({ path: "plain", body: "p" }),
    pax(rec("user.b", "2")),
    pax(rec("user.c", "3")),
    members({ path: "d/", type: "Directory" }),
    pax(paxRecord("size", Buffer.from("600"))),
    members({ path: "sized", body: "" }),
    Buffer.alloc(600),
    Buffer.alloc(424),
    pax(rec("user.last", "4")),
    members({ path: "last", body: "l" }),
    Buffer.alloc(1024),
    pax(rec("user.after-eof", "5")),
    members({ path: "junk", body: "j" }),
  ]);
  const expect = (s: MemberScanner) => {
    const got: [number, string[]][] = [];
    for (let i = 1; i <= 8; i++) {
      const x = s.take(i, undefined)?.xattrs;
      if (x) got.push([i, [...x].map(([k, v]) => `${k}=${v}`)]);
    }
    return got;
  };

  it("queues each member's attributes by ordinal, whatever the chunk sizes", () => {
    for (const size of [1, 7, 511, 512, 513, 1000, tar.length]) {
      const s = new MemberScanner(true);
      // Checksums aren't compared here: feed, then take with the checksums the scanner saw.
      const passed: Buffer[] = [];
      for (let off = 0; off < tar.length; off += size) passed.push(...s.write(Buffer.from(tar.subarray(off, off + size))));
      passed.push(...s.end());
      assert.ok(Buffer.concat(passed).equals(tar), `stream passed on unchanged, chunks of ${size}`);
      const seen = (s as unknown as { queue: { cksum: number }[] }).queue.map((q) => q.cksum);
      const s2 = new MemberScanner(true);
      for (let off = 0; off < tar.length; off += size) s2.write(Buffer.from(tar.subarray(off, off + size)));
      const got: [number, string[]][] = [];
      let k = 0;
      for (let i = 1; i <= 8; i++) {
        const x = s2.take(i, seen[k])?.xattrs;
        if (x) {
          k++;
          got.push([i, [...x].map(([n, v]) => `${n}=${v}`)]);
        }
      }
      assert.deepEqual(
        got,
        [
          [2, ["user.a=1"]],
          [4, ["user.b=2", "user.c=3"]],
          [6, ["user.last=4"]],
        ],
        `chunks of ${size}`,
      );
    }
  });

  it("refuses to hand attributes to a member whose header doesn't match", () => {
    const s = new MemberScanner(true);
    s.write(tar);
    assert.throws(() => expect(s), /lost track of member headers/);
  });
});
