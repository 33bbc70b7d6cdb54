// The storage directory as an attack surface and image names as paths (built binaries, run as
// the ordinary test user): storage that another user owns or can write is refused, with what to
// do; a blob planted in the download cache under the right name is not used (size and digest are
// checked again, and it is downloaded again); empty and odd names are refused by every program;
// failing commands leave no storage directory behind; every spelling of a reference finds the one
// image (busybox is busybox:latest), for pull, ch-run, list, delete, push and ch-convert.
import assert from "node:assert/strict";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, CH_RUN, cleanup, DIST, type Result, run, tmp } from "../helpers.ts";
import { chEnv, chImage } from "../registry/chimage.ts";
import { busyboxLayer, type Image, type Layer, layerFromMembers, makeImage, Pusher, sha256 } from "../registry/fixtures.ts";
import { type Registry, startRegistry } from "../registry/registry.ts";
import { imageMembers, writeTar } from "../tarballs.ts";

const IMAGE = join(DIST, "ch-image");
const CONVERT = join(DIST, "ch-convert");
/** One line in Charliecloud's error format. */
const ERROR = (prog: string) => new RegExp(`^${prog}\\[\\d+\\]: .+ \\([a-z0-9-]+\\.ts:\\d+ \\d+\\)\\n$`);
const HOST_ARCH = process.arch === "x64" ? "amd64" : process.arch === "arm64" ? "arm64" : process.arch;

let dir: string;
let n = 0;
const fresh = (suffix = "") => join(dir, `t${++n}${suffix}`);
/** A tarball image (busybox-less: enough to import and list). */
let tarball: string;
/** A runnable busybox image directory. */
let bbDir: string;

const env = () => chEnv();
const image = (st: string, ...args: string[]): Result => run(IMAGE, ["-s", st, ...args], { env: env() });
const convert = (st: string, ...args: string[]): Result => run(CONVERT, ["-s", st, ...args], { env: env() });

function ok(r: Result, what: string): void {
  assert.equal(r.status, 0, `${what} failed (${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
}

/** A failure with exit 1 and one error line (what a bad input must give, never a stack). */
function refused(r: Result, prog: string, re: RegExp): void {
  assert.equal(r.status, 1, `${prog}: expected exit 1, got ${r.status ?? r.signal}:\n${r.stdout}${r.stderr}`);
  const lines = r.stderr.split("\n").filter(Boolean);
  const last = `${lines[lines.length - 1] ?? ""}\n`;
  assert.match(last, ERROR(prog), r.stderr);
  assert.match(last, re);
  assert.doesNotMatch(r.stderr, /internal error|\n\s+at /);
}

/** A valid storage directory with one image, made by ch-image itself. */
function storageWithImage(name = "seed"): string {
  const st = fresh("-storage");
  ok(image(st, "import", tarball, name), "import");
  return st;
}

before(() => {
  dir = tmp("ch-storage-");
  tarball = writeTar(join(dir, "img.tar"), imageMembers());
  bbDir = busyboxImage(dir, "bb");
});

after(() => {
  if (dir) cleanup(dir);
});

describe("storage directory of someone else", () => {
  it("refuses storage writable by others (0777, 1777), for reading and writing, saying how to fix it", () => {
    const st = storageWithImage();
    for (const mode of [0o777, 0o1777, 0o757, 0o775]) {
      chmodSync(st, mode);
      const m = mode.toString(8).padStart(4, "0");
      const why = new RegExp(`storage directory unusable: ${st} is writable by .+ \\(mode ${m}\\); fix: chmod go-w ${st}`);
      refused(image(st, "list"), "ch-image", why);
      refused(image(st, "import", tarball, "x"), "ch-image", why);
      refused(image(st, "delete", "seed"), "ch-image", why);
      refused(image(st, "reset"), "ch-image", why);
      refused(convert(st, "seed", fresh(".tar")), "ch-convert", why);
      assert.ok(existsSync(join(st, "img/seed+latest")), "nothing deleted");
      assert.ok(!existsSync(join(st, "img/x+latest")), "nothing imported");
    }
    chmodSync(st, 0o755);
    assert.equal(image(st, "list").stdout, "seed:latest\n");
  });

  it("refuses parts of storage that others can write: img/, dlcache/, ulcache/, the version file", () => {
    const st = storageWithImage();
    for (const [part, mode] of [
      ["img", 0o777],
      ["dlcache", 0o1777],
      ["ulcache", 0o777],
      ["version", 0o666],
    ] as const) {
      const p = join(st, part);
      const old = lstatSync(p).mode & 0o7777;
      chmodSync(p, mode);
      refused(image(st, "list"), "ch-image", new RegExp(`storage directory unusable: ${p} is writable by group and others`));
      refused(image(st, "import", tarball, "x"), "ch-image", new RegExp(`${p} is writable`));
      chmodSync(p, old);
      ok(image(st, "list"), `list after chmod ${part} back`);
    }
  });

  it("refuses a storage directory owned by another user (root), and another user's symlink", () => {
    // `/` is root's: a real directory of another user that the test user can't have made.
    for (const args of [
      ["-s", "/", "list"],
      ["-s", "/", "import", tarball, "x"],
      ["-s", "/", "pull", "127.0.0.1:1/x"],
    ])
      refused(
        run(IMAGE, args, { env: env() }),
        "ch-image",
        /storage directory unusable: \/ is owned by UID 0, not by you \(UID \d+\); someone else may have made it: use another storage directory/,
      );
    refused(
      run(IMAGE, ["list"], { env: { ...env(), CH_IMAGE_STORAGE: "/" } }),
      "ch-image",
      /storage directory unusable: \/ is owned by UID 0/,
    );
    // Another user's symlink in the storage directory's place is not followed.
    const rootLink = ["/bin", "/lib", "/sbin"].find((p) => {
      const s = lstatSync(p, { throwIfNoEntry: false });
      return s?.isSymbolicLink() && s.uid === 0;
    });
    if (rootLink) refused(image(rootLink, "list"), "ch-image", new RegExp(`${rootLink} is a symbolic link of UID 0, not yours`));
    // A symlink of one's own to one's own storage is fine.
    const st = storageWithImage();
    const link = fresh("-link");
    symlinkSync(st, link);
    assert.equal(image(link, "list").stdout, "seed:latest\n");
  });

  it("ch-run runs no image by name from a storage directory others can write", () => {
    const st = fresh("-storage");
    ok(image(st, "import", bbDir, "bb"), "import");
    const probe = () => run(CH_RUN, ["-s", st, "bb", "--", "/bin/echo", "ran"], { env: env() });
    const good = probe();
    assert.equal(good.status, 0, good.stderr);
    assert.equal(good.stdout, "ran\n");
    chmodSync(join(st, "img"), 0o777);
    const bad = probe();
    assert.equal(bad.status, 31, bad.stderr);
    assert.match(bad.stderr, ERROR("ch-run"));
    assert.match(bad.stderr, new RegExp(`storage directory unusable: ${st}/img is writable by group and others`));
    assert.equal(bad.stdout, "", "nothing ran");
    chmodSync(join(st, "img"), 0o755);
    chmodSync(st, 0o1777);
    assert.match(probe().stderr, new RegExp(`${st} is writable by group and others \\(mode 1777\\)`));
    chmodSync(st, 0o755);
  });

  it("a storage path that is a file: one error line and exit 1, not an internal error", () => {
    const file = fresh(".file");
    writeFileSync(file, "not storage\n");
    for (const args of [
      ["list"],
      ["list", "-l"],
      ["import", tarball, "x"],
      ["delete", "x"],
      ["reset"],
      ["pull", "127.0.0.1:1/x"],
    ])
      refused(image(file, ...args), "ch-image", new RegExp(`storage directory unusable: ${file} is not a directory`));
    assert.equal(readFileSync(file, "utf8"), "not storage\n");
    // Below a file: ENOTDIR, still one line.
    refused(image(join(file, "sub"), "list"), "ch-image", /can't use storage directory: .+: Not a directory/);
    refused(image(join(file, "sub"), "import", tarball, "x"), "ch-image", /can't use storage directory: .+: Not a directory/);
  });
});

describe("no storage directory made by a failing command", () => {
  it("list, reset, delete, import, pull, push, list REF and ch-convert leave an absent storage absent", () => {
    const st = fresh("-storage");
    const absent = (what: string) => assert.ok(!existsSync(st), `${what} made ${st}`);
    const l = image(st, "list");
    ok(l, "list");
    assert.equal(l.stdout, "");
    absent("list");
    ok(image(st, "list", "-l"), "list -l");
    absent("list -l");
    ok(image(st, "reset"), "reset");
    absent("reset");
    refused(image(st, "delete", "nonexistent"), "ch-image", /no matching image, can't delete: nonexistent/);
    absent("delete");
    refused(image(st, "import", "/nonexistent", "x"), "ch-image", /can't import, no such file or directory: \/nonexistent/);
    absent("import");
    refused(image(st, "pull", "127.0.0.1:1/x"), "ch-image", /can't connect to registry 127\.0\.0\.1:1/);
    absent("pull");
    refused(image(st, "push", "nonexistent"), "ch-image", /can't push: no image in storage: nonexistent/);
    absent("push");
    refused(image(st, "list", "127.0.0.1:1/x"), "ch-image", /127\.0\.0\.1:1/);
    absent("list REF");
    refused(convert(st, "-i", "ch-image", "nonexistent", fresh(".tar")), "ch-convert", /no such image in storage: nonexistent/);
    absent("ch-convert from storage");
    refused(convert(st, tarball, ""), "ch-convert", /invalid image name: "": empty/);
    absent("ch-convert to an empty name");
    // And a command that writes makes it, private to the user.
    ok(image(st, "import", tarball, "x"), "import");
    assert.equal(lstatSync(st).mode & 0o077, 0, "storage made private");
    assert.equal(image(st, "list").stdout, "x:latest\n");
  });
});

describe("image names at every entry point", () => {
  const BAD: [string, RegExp][] = [
    ["", /invalid image name: "": empty/],
    [".", /invalid image name: \.: image ref syntax/],
    ["..", /invalid image name: \.\.: image ref syntax/],
    ["../x", /invalid image name: \.\.\/x: image ref syntax/],
    ["img", /./], // fine as a name: checked below not to be the img/ directory
    ["a%b", /"%" and "\+" are not allowed/],
    ["a+b", /"%" and "\+" are not allowed/],
    ["Upper", /image ref syntax/],
  ];

  it("ch-convert, import, pull, delete, push refuse empty and odd names, and write nothing", () => {
    const st = storageWithImage();
    const before = readdirSync(join(st, "img"));
    for (const [name, re] of BAD) {
      if (name === "img") continue;
      // ".", ".." and "../x" are paths where a path may be given (ch-convert's inferred output,
      // pull's DEST), names only where only a name may be.
      const pathLike = name.startsWith(".");
      if (!pathLike) refused(convert(st, tarball, name), "ch-convert", re);
      refused(convert(st, "-o", "ch-image", tarball, name), "ch-convert", re);
      refused(image(st, "import", tarball, name), "ch-image", re);
      if (!pathLike) refused(image(st, "pull", "127.0.0.1:1/x", name), "ch-image", re);
      refused(image(st, "delete", name), "ch-image", re);
      refused(image(st, "push", name), "ch-image", re);
    }
    assert.deepEqual(readdirSync(join(st, "img")), before);
    assert.equal(image(st, "list").stdout, "seed:latest\n", "no bin, etc, ... listed as images");
    assert.ok(existsSync(join(st, "version")) && existsSync(join(st, "img/seed+latest")));
  });

  it("ch-convert X.tar '' no longer turns STORAGE/img into the image", () => {
    const st = fresh("-storage");
    refused(convert(st, tarball, ""), "ch-convert", /invalid image name/);
    assert.ok(!existsSync(st));
    ok(convert(st, tarball, "img"), "convert to the name img");
    assert.equal(image(st, "list").stdout, "img:latest\n");
    assert.ok(existsSync(join(st, "img/img+latest/etc/motd")));
  });

  it("ch-run looks names up in storage only when they are names", () => {
    const st = fresh("-storage");
    ok(image(st, "import", bbDir, "bb"), "import");
    // "" used to be STORAGE/img itself.
    const empty = run(CH_RUN, ["-s", st, "", "--", "/bin/echo", "ran"], { env: env() });
    assert.equal(empty.status, 31, empty.stderr);
    assert.equal(empty.stdout, "");
    assert.match(empty.stderr, /can't find image/);
    // A path is still a path.
    const byPath = run(CH_RUN, [bbDir, "--", "/bin/echo", "ran"], { env: env() });
    assert.equal(byPath.stdout, "ran\n", byPath.stderr);
  });
});

describe("one image, any spelling of its reference", () => {
  it("import busybox: list says busybox:latest; ch-run, ch-convert, delete take every spelling", () => {
    const st = fresh("-storage");
    ok(image(st, "import", bbDir, "busybox"), "import");
    assert.ok(existsSync(join(st, "img/busybox+latest/bin/busybox")), "stored as busybox+latest, as Charliecloud does");
    assert.equal(image(st, "list").stdout, "busybox:latest\n");
    ok(image(st, "import", bbDir, "docker.io/library/busybox:latest"), "import again, other spelling");
    assert.equal(image(st, "list").stdout, "busybox:latest\n", "still one image");
    for (const spelling of [
      "busybox",
      "busybox:latest",
      "library/busybox",
      "docker.io/busybox",
      "registry-1.docker.io:443/library/busybox:latest",
    ]) {
      const r = run(CH_RUN, ["-s", st, spelling, "--", "/bin/echo", spelling], { env: env() });
      assert.equal(r.status, 0, `${spelling}: ${r.stderr}`);
      assert.equal(r.stdout, `${spelling}\n`);
      const out = fresh(".tar");
      ok(convert(st, spelling, out), `ch-convert ${spelling}`);
      assert.ok(existsSync(out));
    }
    ok(image(st, "delete", "library/busybox"), "delete by another spelling");
    assert.equal(image(st, "list").stdout, "");
  });

  describe("with a registry", () => {
    let reg: Registry;
    let bb: Layer;
    const hello = (text: string) => layerFromMembers([{ path: "hello.txt", body: text }]);
    let img: Image;

    before(async () => {
      reg = await startRegistry(join(dir, "reg"));
      bb = busyboxLayer(dir);
      img = makeImage({ kind: "docker", layers: [bb, hello("right\n")], architecture: HOST_ARCH });
      const p = new Pusher(reg);
      for (const repo of ["one", "two", "cached"]) await p.image(repo, "latest", img);
    });

    after(async () => {
      await reg?.stop();
    });

    const pull = (st: string, ...args: string[]) => chImage(["-s", st, "pull", ...args], env());
    const cat = (st: string, ref: string) => run(CH_RUN, ["-s", st, ref, "--", "/bin/cat", "/hello.txt"], { env: env() });

    it("pull X then ch-run X:latest; pull X:latest then ch-run X; both spellings are one image", async () => {
      const st = fresh("-storage");
      ok(await pull(st, `${reg.host}/one`), "pull one");
      let r = cat(st, `${reg.host}/one:latest`);
      assert.equal(r.stdout, "right\n", r.stderr);
      ok(await pull(st, `${reg.host}/two:latest`), "pull two:latest");
      r = cat(st, `${reg.host}/two`);
      assert.equal(r.stdout, "right\n", r.stderr);
      ok(await pull(st, `${reg.host}/one:latest`), "pull one:latest");
      ok(await pull(st, `${reg.host}/two`), "pull two");
      assert.deepEqual(image(st, "list").stdout.split("\n").filter(Boolean), [
        `${reg.host}/one:latest`,
        `${reg.host}/two:latest`,
      ]);
      assert.deepEqual(readdirSync(join(st, "img")).sort(), [
        `${reg.host.replace(":", "+")}%one+latest`,
        `${reg.host.replace(":", "+")}%two+latest`,
      ]);
      for (const spelling of [`${reg.host}/one`, `${reg.host}/one:latest`]) {
        const l = await chImage(["-s", st, "list", spelling], env());
        ok(l, `list ${spelling}`);
        assert.match(l.stdout, /in local storage: +yes/, spelling);
      }
      // push by the other spelling finds it too.
      ok(await chImage(["-s", st, "push", `${reg.host}/one`, `${reg.host}/pushed:1`], env()), "push");
      ok(image(st, "delete", `${reg.host}/two`), "delete two");
      assert.deepEqual(image(st, "list").stdout, `${reg.host}/one:latest\n`);
    });

    it("a blob planted in dlcache under the right name is checked, refused and downloaded again", async () => {
      const layer = img.layers[1];
      const hex = layer.digest.replace(/^sha256:/, "");
      const evil = layerFromMembers([
        { path: "hello.txt", body: "planted\n" },
        { path: "bin/", type: "Directory" },
        { path: "bin/sh", body: "#!/bin/false\necho pwned\n" },
      ]);
      const st = storageWithImage();
      const cached = join(st, "dlcache", `sha256-${hex}`);
      const plant = (bytes: Buffer) => {
        mkdirSync(join(st, "dlcache"), { recursive: true, mode: 0o755 });
        rmSync(cached, { force: true });
        writeFileSync(cached, bytes);
      };
      const check = async (what: string) => {
        const r = await pull(st, `${reg.host}/cached`);
        ok(r, `pull (${what})`);
        assert.match(r.stderr, /warning: layer 2\/2 [0-9a-f]{7}: cached download is wrong \(.+\); downloading it again/, what);
        const ran = cat(st, `${reg.host}/cached`);
        assert.equal(ran.stdout, "right\n", `${what}: ${ran.stderr}`);
        assert.ok(!readFileSync(join(st, `img/${reg.host.replace(":", "+")}%cached+latest/bin/busybox`)).includes("pwned"));
        assert.equal(sha256(readFileSync(cached)), layer.digest, `${what}: the cache now holds the right blob`);
      };
      // Another blob entirely (other size), as the issue found it used.
      plant(evil.bytes);
      await check("planted blob");
      // Same size, one byte different: only the digest tells.
      const flipped = Buffer.from(layer.bytes);
      flipped[flipped.length - 5] ^= 0xff;
      assert.equal(flipped.length, layer.size);
      plant(flipped);
      await check("same size, wrong digest");
      // A symlink to a file with the right bytes is not a cached blob either.
      const elsewhere = fresh(".blob");
      writeFileSync(elsewhere, layer.bytes);
      mkdirSync(join(st, "dlcache"), { recursive: true, mode: 0o755 });
      rmSync(cached, { force: true });
      symlinkSync(elsewhere, cached);
      await check("symlink");
      assert.ok(!lstatSync(cached).isSymbolicLink());
      // A right blob is used as is, without a warning.
      const again = await pull(st, `${reg.host}/cached`);
      ok(again, "pull with a good cache");
      assert.doesNotMatch(again.stderr, /warning/);
      assert.match(again.stderr, /2 layers \(2 already downloaded\)/);
    });
  });
});
