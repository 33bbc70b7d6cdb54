// Images in and out: ch-convert, ch-tar2dir and ch-image (built binaries) on real tarballs.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cleanup, DIST, type Result, run, tmp } from "../helpers.ts";
import { imageMembers, type Member, tarBytes, writeTar } from "../tarballs.ts";

const CONVERT = join(DIST, "ch-convert");
const TAR2DIR = join(DIST, "ch-tar2dir");
const IMAGE = join(DIST, "ch-image");
const ERROR = (prog: string) => new RegExp(`^${prog}\\[\\d+\\]: error: .+ \\([a-z0-9-]+\\.ts:\\d+ \\d+\\)\\n$`);

let dir: string;
let n = 0;
/** A fresh path in the test directory. */
const fresh = (suffix = "") => join(dir, `t${++n}${suffix}`);

function convert(...args: string[]): Result {
  return run(CONVERT, args, { env: { ...process.env, CH_IMAGE_STORAGE: join(dir, "storage") } });
}

/** Everything (relative paths) under d. */
function tree(d: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of readdirSync(join(d, rel))) {
      const r = rel ? `${rel}/${e}` : e;
      out.push(r);
      if (lstatSync(join(d, r)).isDirectory()) walk(r);
    }
  };
  walk("");
  return out.sort();
}

before(() => {
  dir = tmp("ch-images-");
});
after(() => cleanup(dir));

describe("tarball to directory", () => {
  it("unpacks the FAQ's chtest2.tar.gz, stripping its top-level directory, and the image runs", () => {
    const src = join(dir, "chtest");
    for (const d of ["bin", "etc", "usr/bin", "lib"]) mkdirSync(join(src, d), { recursive: true });
    copyFileSync("/bin/busybox", join(src, "bin/busybox"));
    chmodSync(join(src, "bin/busybox"), 0o755);
    for (const a of ["sh", "echo", "cat", "ls"]) symlinkSync("busybox", join(src, "bin", a));
    const tarball = join(dir, "chtest2.tar.gz");
    assert.equal(spawnSync("tar", ["czf", tarball, "-C", dir, "chtest"]).status, 0);
    const out = join(dir, "chtest2");
    const r = convert(tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /stripping single top-level directory: chtest\n/);
    assert.equal(r.stderr.match(/stripping/g)?.length, 1);
    assert.ok(existsSync(join(out, "bin/busybox")));
    assert.equal(readlinkSync(join(out, "bin/sh")), "busybox");
    assert.ok(!existsSync(join(out, "chtest")));
    if (process.getuid?.() !== 0) {
      const ran = run(join(DIST, "ch-run"), [out, "--", "/bin/echo", "hello"]);
      assert.equal(ran.stdout, "hello\n", ran.stderr);
    }
  });

  it("keeps modes sane, hard links as hard links, FIFOs as FIFOs, and drops devices with a warning naming them", () => {
    const tarball = writeTar(fresh(".tar"), [
      ...imageMembers(),
      { path: "bin/su", body: "x", mode: 0o4755 },
      { path: "bin/sg", body: "x", mode: 0o2755 },
      { path: "ro/", type: "Directory", mode: 0o555 },
      { path: "ro/f", body: "x", mode: 0o000 },
      { path: "bin/hello2", type: "Link", linkpath: "bin/hello" },
      { path: "bin/hl", type: "SymbolicLink", linkpath: "hello" },
      { path: "dev/null", type: "CharacterDevice" },
      { path: "dev/x\nch-convert[1]: error: fake", type: "CharacterDevice" },
      { path: "fifo", type: "FIFO", mode: 0o640 },
      { path: "ro/fifo", type: "FIFO", mode: 0o4600 },
    ]);
    const out = fresh();
    const r = convert("-i", "tar", tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stderr,
      /^ch-convert\[\d+\]: warning: .*\.tar: device file ignored \(making one needs privilege\): dev\/null \(character device 0,0\)$/m,
    );
    assert.match(
      r.stderr,
      /: device file ignored \(making one needs privilege\): "dev\/x\\nch-convert\[1\]: error: fake" \(character device 0,0\)$/m,
    );
    assert.doesNotMatch(r.stderr, /^ch-convert\[1\]/m, "a name can't fake a line");
    assert.doesNotMatch(r.stderr, /fifo/i);
    assert.ok(!existsSync(join(out, "dev/null")));
    for (const [p, mode] of [
      ["fifo", 0o640],
      ["ro/fifo", 0o600], // setuid stripped, as from files
    ] as const) {
      const st = lstatSync(join(out, p));
      assert.ok(st.isFIFO(), p);
      assert.equal(st.mode & 0o7777, mode, p);
      assert.equal(st.mtime.toISOString(), "2020-01-02T03:04:05.000Z", p);
    }
    assert.equal(statSync(join(out, "bin/su")).mode & 0o7777, 0o755);
    assert.equal(statSync(join(out, "bin/sg")).mode & 0o7777, 0o755);
    assert.equal(statSync(join(out, "ro")).mode & 0o7777, 0o755);
    assert.equal(statSync(join(out, "ro/f")).mode & 0o7777, 0o600);
    assert.equal(statSync(join(out, "bin/hello2")).ino, statSync(join(out, "bin/hello")).ino);
    assert.equal(readlinkSync(join(out, "bin/hl")), "hello");
    assert.equal(statSync(join(out, "bin/hello")).uid, process.getuid?.());
    assert.equal(statSync(join(out, "bin/hello")).mtime.toISOString(), "2020-01-02T03:04:05.000Z");
  });

  it("fixes up the image: passwd, group, mount points, bind targets", () => {
    const out = fresh();
    const tarball = writeTar(fresh(".tar.gz"), [
      { path: "etc/", type: "Directory" },
      { path: "etc/motd", body: "hi" },
    ]);
    const r = convert(tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /warning: .*: no \/bin, \/usr in image/);
    assert.match(readFileSync(join(out, "etc/passwd"), "utf8"), /^root:x:0:0:/);
    assert.match(readFileSync(join(out, "etc/group"), "utf8"), /^root:x:0:/);
    for (const p of ["dev", "proc", "sys", "tmp", "home", "mnt/0", "mnt/9"]) assert.ok(statSync(join(out, p)).isDirectory(), p);
    for (const p of ["etc/hosts", "etc/resolv.conf"]) assert.ok(statSync(join(out, p)).isFile(), p);
    assert.equal(statSync(join(out, "tmp")).mode & 0o7777, 0o1777);
  });

  it("keeps a dangling resolv.conf symlink (as Charliecloud) and never creates through a symlink", () => {
    const out = fresh();
    const tarball = writeTar(fresh(".tar"), [
      ...imageMembers(),
      { path: "etc/resolv.conf", type: "SymbolicLink", linkpath: "../run/systemd/resolve/stub-resolv.conf" },
      { path: "mnt", type: "SymbolicLink", linkpath: "/elsewhere" },
    ]);
    const r = convert(tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(lstatSync(join(out, "etc/resolv.conf")).isSymbolicLink());
    assert.ok(!existsSync(join(out, "run")));
    assert.ok(lstatSync(join(out, "mnt")).isSymbolicLink());
    assert.match(r.stderr, /not creating \/mnt\/0: \/mnt is not a directory/);
  });

  it("unpacks xz and zstd tarballs", () => {
    const plain = writeTar(fresh(".tar"), imageMembers());
    for (const [tool, ext] of [
      ["xz", ".tar.xz"],
      ["zstd", ".tar.zst"],
    ]) {
      const tarball = `${plain}${ext.slice(4)}`;
      const c = spawnSync(tool, ["-c", plain]);
      assert.equal(c.status, 0);
      writeFileSync(tarball, c.stdout);
      const out = fresh();
      const r = convert(tarball, out);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(readFileSync(join(out, "etc/motd"), "utf8"), "hi\n");
    }
  });

  it("follows a relative symlink that stays inside the image", () => {
    const out = fresh();
    const tarball = writeTar(fresh(".tar"), [
      ...imageMembers(),
      { path: "usr/lib/", type: "Directory" },
      { path: "lib", type: "SymbolicLink", linkpath: "usr/lib" },
      { path: "lib/libfoo.so", body: "elf" },
    ]);
    const r = convert(tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(readFileSync(join(out, "usr/lib/libfoo.so"), "utf8"), "elf");
  });

  it("replaces a symlink member by a later file, never writing through it", () => {
    const outside = fresh();
    mkdirSync(outside);
    writeFileSync(join(outside, "victim"), "original");
    const out = fresh();
    const tarball = writeTar(fresh(".tar"), [
      ...imageMembers(),
      { path: "f", type: "SymbolicLink", linkpath: join(outside, "victim") },
      { path: "f", body: "pwned" },
    ]);
    const r = convert(tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(readFileSync(join(outside, "victim"), "utf8"), "original");
    assert.equal(readFileSync(join(out, "f"), "utf8"), "pwned");
  });
  it("makes a FIFO member inside the image only: through a symlink that stays inside, and over a symlink out, never through it", () => {
    const outside = fresh();
    mkdirSync(outside);
    writeFileSync(join(outside, "victim"), "original");
    const out = fresh();
    const tarball = writeTar(fresh(".tar"), [
      ...imageMembers(),
      { path: "usr/lib/", type: "Directory" },
      { path: "lib", type: "SymbolicLink", linkpath: "usr/lib" },
      { path: "lib/fifo", type: "FIFO" },
      { path: "f", type: "SymbolicLink", linkpath: join(outside, "victim") },
      { path: "f", type: "FIFO" },
    ]);
    const r = convert(tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(lstatSync(join(out, "usr/lib/fifo")).isFIFO());
    assert.ok(lstatSync(join(out, "f")).isFIFO());
    assert.deepEqual(readdirSync(outside), ["victim"]);
    assert.ok(lstatSync(join(outside, "victim")).isFile());
    assert.equal(readFileSync(join(outside, "victim"), "utf8"), "original");
  });
});

describe("unsafe members are refused, nothing written outside", () => {
  const tricks: [string, (outside: string) => Member[], RegExp][] = [
    ["dot-dot", () => [{ path: "../evil", body: "x" }], /"\.\.\/evil": path contains "\.\."/],
    ["dot-dot inside", () => [{ path: "bin/../../evil", body: "x" }], /"bin\/\.\.\/\.\.\/evil"/],
    ["absolute path", (o) => [{ path: `${o}/evil`, body: "x" }], /absolute path/],
    [
      "absolute symlink then through it",
      (o) => [
        { path: "l", type: "SymbolicLink", linkpath: o },
        { path: "l/evil", body: "x" },
      ],
      /"l\/evil": goes through absolute symlink l ->/,
    ],
    [
      "relative symlink out, then through it",
      () => [
        { path: "l", type: "SymbolicLink", linkpath: "../../.." },
        { path: "l/evil", body: "x" },
      ],
      /"l\/evil": goes through a symlink out of the image/,
    ],
    [
      "symlink chain out",
      () => [
        { path: "bin/a", type: "SymbolicLink", linkpath: "b" },
        { path: "bin/b", type: "SymbolicLink", linkpath: "../c" },
        { path: "c", type: "SymbolicLink", linkpath: "../outside" },
        { path: "bin/a/evil", body: "x" },
      ],
      /"bin\/a\/evil": goes through a symlink out of the image/,
    ],
    [
      "directory through symlink",
      (o) => [
        { path: "d", type: "SymbolicLink", linkpath: o },
        { path: "d/sub/", type: "Directory" },
      ],
      /"d\/sub\/": goes through absolute symlink/,
    ],
    [
      "FIFO through an absolute symlink",
      (o) => [
        { path: "l", type: "SymbolicLink", linkpath: o },
        { path: "l/evil", type: "FIFO" },
      ],
      /"l\/evil": goes through absolute symlink l ->/,
    ],
    [
      "FIFO through a relative symlink out",
      () => [
        { path: "l", type: "SymbolicLink", linkpath: "../../.." },
        { path: "l/evil", type: "FIFO" },
      ],
      /"l\/evil": goes through a symlink out of the image/,
    ],
    [
      "hard link to absolute path",
      () => [{ path: "hl", type: "Link", linkpath: "/etc/passwd" }],
      /"hl": hard link to "\/etc\/passwd"/,
    ],
    ["hard link up and out", () => [{ path: "hl", type: "Link", linkpath: "../outside/victim" }], /"hl": hard link to/],
    [
      "hard link through a symlink",
      (o) => [
        { path: "s", type: "SymbolicLink", linkpath: o },
        { path: "hl", type: "Link", linkpath: "s/victim" },
      ],
      /"hl": goes through absolute symlink s ->/,
    ],
  ];
  for (const [name, members, why] of tricks) {
    it(name, () => {
      const outside = fresh("-outside");
      mkdirSync(outside);
      writeFileSync(join(outside, "victim"), "original");
      const out = fresh();
      const tarball = writeTar(fresh(".tar.gz"), [...imageMembers(), ...members(outside)]);
      const before = readdirSync(dir).sort();
      const r = convert("-q", tarball, out);
      assert.equal(r.status, 1);
      assert.match(r.stderr, ERROR("ch-convert"));
      assert.match(r.stderr, why);
      assert.ok(r.stderr.includes(tarball), r.stderr);
      assert.ok(!existsSync(out));
      assert.deepEqual(tree(outside), ["victim"]);
      assert.equal(readFileSync(join(outside, "victim"), "utf8"), "original");
      assert.deepEqual(readdirSync(dir).sort(), before, "no partial left behind");
      assert.ok(!existsSync(join(dir, "evil")));
    });
  }
});

describe("corrupt archives and atomicity", () => {
  const image = () => {
    const out = fresh();
    const r = convert(writeTar(fresh(".tar"), imageMembers()), out);
    assert.equal(r.status, 0, r.stderr);
    writeFileSync(join(out, "marker"), "old image");
    return out;
  };
  const untouched = (out: string, r: Result, why: RegExp) => {
    assert.equal(r.status, 1);
    assert.match(r.stderr, ERROR("ch-convert"));
    assert.match(r.stderr, why);
    assert.equal(readFileSync(join(out, "marker"), "utf8"), "old image");
    assert.deepEqual(
      readdirSync(dir).filter((e) => e.includes(".partial-")),
      [],
    );
  };

  it("truncated gzip: one line with the byte offset, old image untouched", () => {
    const out = image();
    const big = Array.from({ length: 20 }, (_, i) => ({ path: `usr/f${i}`, body: "y".repeat(5000 + i * 997) }));
    const tarball = writeTar(fresh(".tar.gz"), [...imageMembers(), ...big]);
    truncateSync(tarball, statSync(tarball).size - 40);
    untouched(out, convert("-q", tarball, out), /corrupt or truncated archive at byte \d+.*: unexpected end of file/);
  });

  it("truncated plain tar, in the middle of a member: names it", () => {
    const out = image();
    const bytes = tarBytes([...imageMembers(), { path: "usr/big", body: "z".repeat(10000) }]);
    const tarball = fresh(".tar");
    writeFileSync(tarball, bytes.subarray(0, bytes.length - 1024 - 4096));
    untouched(out, convert("-q", tarball, out), /in or after member "usr\/big": Truncated input/);
  });

  it("garbage that isn't a tarball", () => {
    const out = image();
    const tarball = fresh(".tar");
    writeFileSync(tarball, Buffer.alloc(4096, "garbage!"));
    untouched(out, convert("-q", tarball, out), /corrupt or truncated archive at byte \d+/);
  });

  it("a bad header checksum in the middle", () => {
    const out = image();
    const bytes = tarBytes(imageMembers());
    bytes[512 * 3 + 148] ^= 0x5; // the checksum field of the third member's header
    const tarball = fresh(".tar");
    writeFileSync(tarball, bytes);
    untouched(out, convert("-q", tarball, out), /checksum failure/);
  });

  it("replaces an existing image; refuses a non-image directory and --no-clobber", () => {
    const out = image();
    const tarball = writeTar(fresh(".tar"), [...imageMembers(), { path: "new", body: "new" }]);
    const r = convert(tarball, out);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(existsSync(join(out, "new")) && !existsSync(join(out, "marker")));
    const nc = convert("--no-clobber", tarball, out);
    assert.equal(nc.status, 1);
    assert.match(nc.stderr, /exists, not replacing per --no-clobber/);
    const home = fresh();
    mkdirSync(home);
    writeFileSync(join(home, "thesis.tex"), "precious");
    const h = convert(tarball, home);
    assert.equal(h.status, 1);
    assert.match(h.stderr, /exists but does not look like an image, not replacing/);
    assert.deepEqual(readdirSync(home), ["thesis.tex"]);
  });

  it("removes leftovers of a killed run, and only those", () => {
    const out = fresh();
    const dead = spawnSync("true").pid as number;
    const stale = `${out}.partial-${hostname()}.${dead}`;
    const live = `${out}.partial-${hostname()}.${process.pid}`;
    const other = `${out}.partial-otherhost.${dead}`;
    for (const d of [stale, live, other]) mkdirSync(d);
    const r = convert(writeTar(fresh(".tar"), imageMembers()), out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /removing leftover of an earlier run/);
    assert.ok(!existsSync(stale) && existsSync(live) && existsSync(other));
  });
});

describe("ch-tar2dir", () => {
  it("unpacks TARBALL into DIR/NAME", () => {
    const parent = fresh();
    mkdirSync(parent);
    const tarball = writeTar(join(dir, "myimage.tar.gz"), imageMembers("./"));
    const r = run(TAR2DIR, [tarball, parent]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(existsSync(join(parent, "myimage/bin/hello")));
    assert.match(r.stderr, /myimage unpacked ok/);
  });

  it("answers --help and --version, and errors on missing arguments", () => {
    assert.match(run(TAR2DIR, ["--help"]).stdout, /^Usage: ch-tar2dir/);
    assert.match(run(TAR2DIR, ["--version"]).stdout, /^ch-tar2dir \(Charliecloud\) /);
    const r = run(TAR2DIR, ["x.tar"]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, ERROR("ch-tar2dir"));
  });
});

describe("ch-convert", () => {
  it("dry run prints the inferred formats and touches nothing", () => {
    const r = convert("-n", "foo.tar.gz", "./bar");
    assert.equal(r.status, 0);
    assert.match(r.stderr, /input: +tar +foo\.tar\.gz\noutput: +dir +\.\/bar\n/);
    assert.ok(!existsSync("bar"));
  });

  it("refuses same formats and unknown formats", () => {
    assert.match(convert("a.tar", "b.tgz").stderr, /input and output formats must be different: tar/);
    assert.match(convert("-i", "zip", "a", "b").stderr, /unknown format: zip/);
    assert.match(convert("not-in-storage", "/x").stderr, /can't infer format of not-in-storage/);
  });

  it("round-trips dir → tar → dir, hard links included", () => {
    const a = fresh();
    assert.equal(
      convert(writeTar(fresh(".tar"), [...imageMembers(), { path: "bin/h2", type: "Link", linkpath: "bin/hello" }]), a).status,
      0,
    );
    for (const ext of [".tar.gz", ".tar", ".tar.xz", ".tar.zst"]) {
      const tarball = fresh(ext);
      const p = convert(a, tarball);
      assert.equal(p.status, 0, p.stderr);
      const b = fresh();
      const u = convert(tarball, b);
      assert.equal(u.status, 0, u.stderr);
      assert.deepEqual(tree(b), tree(a));
      assert.equal(statSync(join(b, "bin/h2")).ino, statSync(join(b, "bin/hello")).ino);
    }
  });

  it("dir → squash → dir when squashfs-tools are there; clear error when not", (t) => {
    const a = fresh();
    assert.equal(convert(writeTar(fresh(".tar"), imageMembers()), a).status, 0);
    const sq = fresh(".sqfs");
    const noTools = run(CONVERT, [a, sq], { env: { ...process.env, PATH: "/nonexistent" } });
    assert.equal(noTools.status, 1);
    assert.match(noTools.stderr, /mksquashfs not found in \$PATH; it is needed to make SquashFS images/);
    if (spawnSync("sh", ["-c", "command -v mksquashfs"]).status !== 0) {
      t.skip("mksquashfs not found (squashfs-tools): the round trip did not run");
      return;
    }
    const s = convert(a, sq);
    assert.equal(s.status, 0, s.stderr);
    const b = fresh();
    const u = convert(sq, b);
    assert.equal(u.status, 0, u.stderr);
    assert.equal(readFileSync(join(b, "etc/motd"), "utf8"), "hi\n");
  });

  it("says so when docker or podman is missing", () => {
    const a = fresh();
    assert.equal(convert(writeTar(fresh(".tar"), imageMembers()), a).status, 0);
    for (const tool of ["docker", "podman"]) {
      const r = run(CONVERT, ["-o", tool, a, "foo"], { env: { ...process.env, PATH: "/nonexistent" } });
      assert.equal(r.status, 1);
      assert.match(r.stderr, new RegExp(`${tool} not found in \\$PATH; it is needed for the ${tool} image format`));
    }
  });

  it("converts tarball → ch-image → tarball through storage", () => {
    const storage = fresh("-storage");
    const tarball = writeTar(fresh(".tar.gz"), imageMembers());
    const r = run(CONVERT, ["-s", storage, tarball, "foo/bar:1.0"]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(existsSync(join(storage, "img/foo%bar+1.0/etc/motd")));
    const back = fresh(".tar");
    const b = run(CONVERT, ["-s", storage, "foo/bar:1.0", back]);
    assert.equal(b.status, 0, b.stderr);
    assert.ok(statSync(back).size > 0);
  });
});

describe("ch-image storage", () => {
  const image = (storage: string, ...args: string[]) => run(IMAGE, ["-s", storage, ...args]);

  it("imports tarballs and directories, lists, deletes, resets", () => {
    const storage = fresh("-storage");
    const tarball = writeTar(fresh(".tar.gz"), imageMembers());
    const i1 = image(storage, "import", tarball, "alpine:3.17");
    assert.equal(i1.status, 0, i1.stderr);
    assert.equal(readFileSync(join(storage, "version"), "utf8"), "7\n");
    const src = join(storage, "img", "alpine+3.17");
    const i2 = run(IMAGE, ["import", src, "copy/of/alpine"], { env: { ...process.env, CH_IMAGE_STORAGE: storage } });
    assert.equal(i2.status, 0, i2.stderr);
    assert.equal(image(storage, "list").stdout, "alpine:3.17\ncopy/of/alpine:latest\n");
    assert.ok(existsSync(join(storage, "lock")), "lock file kept, as Charliecloud keeps it (the lock is fcntl's)");
    const d = image(storage, "delete", "alpine:3.17");
    assert.equal(d.status, 0, d.stderr);
    assert.equal(image(storage, "list").stdout, "copy/of/alpine:latest\n");
    const missing = image(storage, "delete", "nope");
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /no matching image, can't delete: nope/);
    assert.equal(image(storage, "reset").status, 0);
    assert.ok(!existsSync(storage));
  });

  it("refuses bad names, foreign directories, and a held lock", async () => {
    const storage = fresh("-storage");
    const tarball = writeTar(fresh(".tar"), imageMembers());
    assert.match(image(storage, "import", tarball, "../x").stderr, /invalid image name: \.\.\/x/);
    assert.equal(image(storage, "import", tarball, "w").status, 0); // a storage directory to lock
    // The lock is an fcntl(2) lock, which ends with its process: what the lock file holds
    // (here a live PID, in the format of our former lock) locks nothing.
    writeFileSync(join(storage, "lock"), `${hostname()} ${process.pid}\n`);
    assert.equal(image(storage, "import", tarball, "x").status, 0, "a lock file alone is no lock");
    const foreign = fresh();
    mkdirSync(foreign);
    writeFileSync(join(foreign, "data"), "");
    assert.match(image(foreign, "list").stderr, /storage directory seems invalid/);
    // What ch-run leaves after running a SquashFS image with the default mount point: STORAGE/mnt
    // alone. That is still a new storage directory, not a foreign one.
    const squashOnly = fresh();
    mkdirSync(join(squashOnly, "mnt"), { recursive: true });
    assert.equal(image(squashOnly, "import", tarball, "x").status, 0);
    assert.ok(existsSync(join(squashOnly, "version")));
    assert.match(image(foreign, "reset").stderr, /not a storage directory, not deleting/);
  });

  it("answers --help and --version", () => {
    assert.match(run(IMAGE, ["--help"]).stdout, /import PATH NAME/);
    assert.match(run(IMAGE, ["--version"]).stdout, /^ch-image \(Charliecloud\) /);
    assert.match(run(CONVERT, ["--help"]).stdout, /^Usage: ch-convert/);
  });
});

describe("progress on a terminal", () => {
  // util-linux script(1) gives the command a pseudo-terminal; its output is the terminal's.
  const hasScript = spawnSync("sh", ["-c", "command -v script"]).status === 0;
  const onTty = (...args: string[]): Result =>
    run("script", ["-qfec", `stty cols 200; ${args.map((a) => `'${a}'`).join(" ")}`, "/dev/null"], {
      env: { ...process.env, CH_IMAGE_STORAGE: join(dir, "storage") },
    });
  // Enough members that unpacking takes more than a moment, even on a fast machine.
  const many = (): Member[] => [
    ...imageMembers(),
    ...Array.from({ length: 40 }, (_, d) => ({ path: `usr/d${d}/`, type: "Directory" as const })),
    ...Array.from({ length: 8000 }, (_, i) => ({ path: `usr/d${i % 40}/f${i}`, body: `${i}\n`.repeat(200) })),
  ];
  let tarball: string;
  before(() => {
    tarball = writeTar(join(dir, "many.tar.gz"), many());
  });
  const ERASE = "\x1b[K";
  const LINE = /\runpacking many\.tar\.gz: [\d.]+ [kMG]?B of [\d.]+ [kMG]?B \(\d+%\), [\d,]+ entries, [\d.]+ [kMG]?B\/s/;

  it("redraws one line in place while unpacking, and clears it at the end", { skip: !hasScript && "no script(1)" }, () => {
    const r = onTty(CONVERT, tarball, fresh());
    assert.equal(r.status, 0, r.stdout);
    assert.match(r.stdout, LINE);
    assert.ok(r.stdout.includes(`entries, `) && r.stdout.includes(`B/s${ERASE}`), "rest of the line erased");
    const entries = [...r.stdout.matchAll(/([\d,]+) entries/g)].map((m) => Number(m[1].replaceAll(",", "")));
    assert.ok(entries.length >= 1 && entries.every((n) => n > 0 && n <= 8046), r.stdout);
    const first = r.stdout.indexOf("\runpacking");
    const last = r.stdout.lastIndexOf("entries");
    const cleared = r.stdout.indexOf(`\r${ERASE}`, last);
    assert.ok(cleared > last, "line cleared at the end");
    assert.ok(!r.stdout.slice(first, cleared).includes("\n"), "redrawn in place, not one line each");
    assert.ok(r.stdout.slice(cleared).startsWith(`\r${ERASE}dir `), "the result follows on the cleared line");
    assert.match(r.stdout.slice(cleared), /: done\r\n$/);
  });

  it("shows nothing with -q, nor without a terminal", { skip: !hasScript && "no script(1)" }, () => {
    const quiet = onTty(CONVERT, "-q", tarball, fresh());
    assert.equal(quiet.status, 0, quiet.stdout);
    assert.equal(quiet.stdout, "");
    const plain = convert(tarball, fresh());
    assert.equal(plain.status, 0, plain.stderr);
    assert.ok(!plain.stderr.includes("\r") && !plain.stderr.includes("entries"), plain.stderr);
    assert.match(plain.stderr, /^input: +tar .*\noutput: +dir .*\ndir .*: done\n$/);
  });

  it("shows progress when packing, and when importing with ch-image", { skip: !hasScript && "no script(1)" }, () => {
    const img = fresh();
    assert.equal(convert("-q", tarball, img).status, 0);
    const packed = onTty(CONVERT, img, fresh(".tar"));
    assert.equal(packed.status, 0, packed.stdout);
    assert.match(packed.stdout, /\rpacking t\d+\.tar: [\d.]+ [kMG]?B, [\d,]+ entries, [\d.]+ [kMG]?B\/s/);
    const imported = onTty(IMAGE, "-s", fresh("-storage"), "import", tarball, "many");
    assert.equal(imported.status, 0, imported.stdout);
    assert.match(imported.stdout, LINE);
  });
});
