// One storage directory for Charliecloud and us (built binaries, run as the ordinary test user):
// a storage directory laid out as Charliecloud 0.39 lays it out (version 7: img/, dlcache/,
// bucache/ with a Git repository, bularge/, ulcache/, lock) is used as it is (its images run,
// list, convert, push, pull over and delete; what we don't use is left byte for byte) and stays
// one Charliecloud accepts, by Charliecloud's own rules (lib/filesystem.py: validate_strict,
// version_read); so is every storage directory we make. Each tool's lock excludes the other's.
// Our own storage version 1 is upgraded in place. delete's globs never leave img/. And the
// options and variables of Charliecloud's ch-image we now take: list -u, pull --last-layer,
// --xattrs/--no-xattrs/$CH_XATTRS, --debug/$CH_IMAGE_DEBUG, $CH_LOG_FILE, $CH_REGY_DEFAULT_HOST,
// $CH_REGY_DEFAULT_PORT, $CH_REGY_PATH_PREFIX, gestalt.
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Header } from "tar";
import { paxRecord } from "../../src/image/xattrs.ts";
import { libc, loadLibc } from "../../src/sys/libc.ts";
import { busyboxImage, CH_RUN, cleanup, DIST, type Result, run, tmp } from "../helpers.ts";
import { chEnv, chImage } from "../registry/chimage.ts";
import { busyboxLayer, type Image, layerFromMembers, makeImage, Pusher } from "../registry/fixtures.ts";
import { type Registry, startRegistry } from "../registry/registry.ts";
import { imageMembers, tarBytes, writeTar } from "../tarballs.ts";

const IMAGE = join(DIST, "ch-image");
const CONVERT = join(DIST, "ch-convert");
const HOST_ARCH = process.arch === "x64" ? "amd64" : process.arch === "arm64" ? "arm64" : process.arch;
const PYTHON = "/usr/bin/python3";

let dir: string;
let n = 0;
const fresh = (suffix = "") => join(dir, `t${++n}${suffix}`);
let bbDir: string;

const image = (st: string, args: string[], extra: Record<string, string> = {}): Result =>
  run(IMAGE, ["-s", st, ...args], { env: chEnv({ extra }) });
const chRun = (st: string, ref: string, ...cmd: string[]): Result => run(CH_RUN, ["-s", st, ref, "--", ...cmd], { env: chEnv() });

function ok(r: Result, what: string): Result {
  assert.equal(r.status, 0, `${what} failed (${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
  return r;
}

function failed(r: Result, re: RegExp, what: string): void {
  assert.equal(r.status, 1, `${what}: expected exit 1, got ${r.status ?? r.signal}:\n${r.stdout}${r.stderr}`);
  assert.match(r.stderr, re, what);
  assert.doesNotMatch(r.stderr, /internal error/);
}

/** What Charliecloud 0.39's ch-image would object to in storage directory st, by its rules
 * (lib/filesystem.py, Storage.init, validate_strict and version_read): img/ and dlcache/ must be
 * directories; the version file must say 7 (no file is version 1); bucache, bularge, dlcache,
 * img, ulcache and version must be there, lock and mnt may be, and nothing else (imgtmp it
 * deletes); no image directory name may hold ":". Empty: Charliecloud takes it as its own. */
function charliecloudObjections(st: string): string[] {
  const out: string[] = [];
  for (const d of ["img", "dlcache"])
    if (!lstatSync(join(st, d), { throwIfNoEntry: false })?.isDirectory()) out.push(`not valid: ${d}/`);
  const version = existsSync(join(st, "version")) ? readFileSync(join(st, "version"), "utf8") : null;
  if (version === null || !/^\s*7\s*$/.test(version)) out.push(`version: ${JSON.stringify(version)}`);
  const entries = new Set(readdirSync(st));
  for (const e of ["bucache", "bularge", "dlcache", "img", "ulcache", "version"])
    if (!entries.delete(e)) out.push(`missing: ${e}`);
  for (const e of ["lock", "mnt", "imgtmp"]) entries.delete(e);
  if (entries.size > 0) out.push(`extraneous: ${[...entries].sort().join(" ")}`);
  for (const i of existsSync(join(st, "img")) ? readdirSync(join(st, "img")) : [])
    if (i.includes(":")) out.push(`bad image dir name: ${i}`);
  return out;
}

/** Every entry under path: type, mode, and for a file its size, mtime and content digest, for a
 * symlink its target (a directory's mtime changes with what others add and remove). */
function snapshot(path: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string, rel: string) => {
    const st = lstatSync(p);
    let what = `${st.mode.toString(8)}${st.isDirectory() ? "" : ` ${st.mtimeMs}`}`;
    if (st.isSymbolicLink()) what += ` -> ${readlinkSync(p)}`;
    else if (st.isFile()) what += ` ${st.size} ${createHash("sha256").update(readFileSync(p)).digest("hex")}`;
    out[rel] = what;
    if (st.isDirectory()) for (const e of readdirSync(p).sort()) walk(join(p, e), `${rel}/${e}`);
  };
  walk(path, ".");
  return out;
}

const HEX = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/** A storage directory as Charliecloud 0.39 makes it: version 7; images img/busybox (pulled as
 * "busybox": Charliecloud names a directory by the reference as written) and img/alpine+3.17,
 * with Charliecloud's metadata and build cache links (ch/metadata.json, ch/environment,
 * ch/git, ch/git.pickle); its download cache's files; a build cache (a bare Git repository
 * with a branch per image, and tags &NAME of deleted images, loose and packed); large files;
 * the upload cache; the lock file. */
function charliecloudStorage(): string {
  const st = fresh("-charliecloud");
  mkdirSync(st, { mode: 0o700 });
  chmodSync(st, 0o700);
  writeFileSync(join(st, "version"), "7\n");
  writeFileSync(join(st, "lock"), "");
  for (const [name, marker] of [
    ["busybox", "charliecloud busybox\n"],
    ["alpine+3.17", "charliecloud alpine\n"],
  ]) {
    const img = join(st, "img", name);
    mkdirSync(join(st, "img"), { recursive: true });
    cpSync(bbDir, img, { recursive: true, verbatimSymlinks: true });
    writeFileSync(join(img, "marker.txt"), marker);
    writeFileSync(
      join(img, "ch/metadata.json"),
      `${JSON.stringify({ arch: HOST_ARCH, cwd: "/", env: {}, history: [], labels: {}, shell: ["/bin/sh", "-c"], volumes: [] }, null, 2)}\n`,
    );
    writeFileSync(join(img, "ch/git"), `gitdir: ${st}/bucache/worktrees/${name}\n`);
    writeFileSync(join(img, "ch/git.pickle"), Buffer.from([0x80, 4, 0x95, 0, 0x2e]));
  }
  const dl = join(st, "dlcache");
  mkdirSync(dl);
  writeFileSync(join(dl, `${HEX}.tar.gz`), "a layer, as Charliecloud names it\n");
  writeFileSync(join(dl, `${HEX}.json`), "{}\n");
  writeFileSync(join(dl, "busybox.fat.json"), "{}\n");
  symlinkSync(`${HEX}.json`, join(dl, `busybox%${HEX}.manifest.json`));
  const bu = join(st, "bucache");
  for (const d of [
    "objects/pack",
    "objects/info",
    "refs/heads",
    "refs/tags",
    "worktrees/busybox",
    "worktrees/alpine+3.17",
    "hooks",
    "info",
  ])
    mkdirSync(join(bu, d), { recursive: true });
  writeFileSync(join(bu, "HEAD"), "ref: refs/heads/root\n");
  writeFileSync(join(bu, "config"), "[core]\n\trepositoryformatversion = 0\n\tbare = true\n");
  writeFileSync(join(bu, "description"), "Unnamed repository\n");
  for (const b of ["root", "busybox", "alpine+3.17"]) writeFileSync(join(bu, "refs/heads", b), `${"ab".repeat(20)}\n`);
  writeFileSync(join(bu, "refs/tags/&gone+1"), `${"cd".repeat(20)}\n`);
  writeFileSync(
    join(bu, "packed-refs"),
    `# pack-refs with: peeled fully-peeled sorted\n${"ef".repeat(20)} refs/tags/&old%thing+2\n${"ef".repeat(20)} refs/heads/packed\n`,
  );
  writeFileSync(join(bu, "objects/pack/pack-1.pack"), "PACK");
  for (const w of ["busybox", "alpine+3.17"]) writeFileSync(join(bu, "worktrees", w, "gitdir"), `${st}/img/${w}/ch/git\n`);
  mkdirSync(join(st, "bularge"));
  writeFileSync(join(st, "bularge", `${"12".repeat(16)}%usr%lib%big`), "large\n");
  mkdirSync(join(st, "ulcache"));
  writeFileSync(join(st, "ulcache", "busybox.config.json"), "{}\n");
  assert.deepEqual(charliecloudObjections(st), [], "the fixture is what Charliecloud accepts");
  return st;
}

/** Charliecloud's parts of st, as a snapshot: all but img/ and our own dlcache blobs. */
function theirs(st: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of ["bucache", "bularge", "ulcache", "version", "lock"])
    for (const [k, v] of Object.entries(snapshot(join(st, part)))) out[`${part}/${k}`] = v;
  for (const [k, v] of Object.entries(snapshot(join(st, "dlcache"))))
    if (!/\/sha256-[0-9a-f]{64}$/.test(k)) out[`dlcache/${k}`] = v;
  return out;
}

before(async () => {
  dir = tmp("ch-chstorage-");
  bbDir = busyboxImage(dir, "bb");
  await loadLibc();
});

after(() => {
  if (dir) cleanup(dir);
});

describe("a storage directory of Charliecloud's", () => {
  it("lists, runs, converts and deletes its images as it named them; leaves the rest as it was; stays valid", () => {
    const st = charliecloudStorage();
    const before = theirs(st);
    assert.equal(ok(image(st, ["list"]), "list").stdout, "alpine:3.17\nbusybox\n");
    assert.equal(
      ok(image(st, ["list", "-u"]), "list -u").stdout,
      "gone:1\nold/thing:2\n",
      "deleted images Charliecloud can undelete",
    );
    assert.equal(ok(image(st, ["list", "--undeleteable"]), "list --undeleteable").stdout, "gone:1\nold/thing:2\n");
    // Any spelling finds the one Charliecloud stored as written.
    for (const ref of ["busybox", "busybox:latest", "docker.io/library/busybox:latest"])
      assert.equal(ok(chRun(st, ref, "/bin/cat", "/marker.txt"), `ch-run ${ref}`).stdout, "charliecloud busybox\n");
    assert.equal(ok(chRun(st, "alpine:3.17", "/bin/cat", "/marker.txt"), "ch-run alpine:3.17").stdout, "charliecloud alpine\n");
    const out = fresh();
    ok(run(CONVERT, ["-s", st, "busybox", out], { env: chEnv() }), "ch-convert busybox DIR");
    assert.equal(readFileSync(join(out, "marker.txt"), "utf8"), "charliecloud busybox\n");
    const d = ok(image(st, ["delete", "alpine*"]), "delete alpine*");
    assert.match(d.stderr, /deleted image: alpine:3\.17/);
    assert.equal(ok(image(st, ["list"]), "list").stdout, "busybox\n");
    assert.deepEqual(
      theirs(st),
      before,
      "version, lock, bucache/, bularge/, ulcache/ and Charliecloud's dlcache/ files untouched",
    );
    assert.deepEqual(charliecloudObjections(st), []);
  });

  it("two other spellings of one reference: each found as written, the reference alone is ambiguous", () => {
    const st = charliecloudStorage();
    for (const [d, marker] of [
      ["library%x+1", "library"],
      ["docker.io%library%x+1", "docker.io"],
    ]) {
      cpSync(bbDir, join(st, "img", d), { recursive: true, verbatimSymlinks: true });
      writeFileSync(join(st, "img", d, "marker.txt"), `${marker}\n`);
    }
    assert.equal(ok(chRun(st, "library/x:1", "/bin/cat", "/marker.txt"), "as written").stdout, "library\n");
    assert.equal(ok(chRun(st, "docker.io/library/x:1", "/bin/cat", "/marker.txt"), "as written").stdout, "docker.io\n");
    const r = chRun(st, "x:1", "/bin/true");
    assert.equal(r.status, 31, r.stderr);
    assert.match(
      r.stderr,
      /image name is ambiguous: x:1 is each of img\/docker\.io%library%x\+1, img\/library%x\+1; give the name as stored/,
    );
    failed(image(st, ["delete", "x:1"]), /image name is ambiguous/, "delete x:1");
    assert.ok(existsSync(join(st, "img/library%x+1")) && existsSync(join(st, "img/docker.io%library%x+1")));
  });

  it("refuses a version it doesn't read, saying what reset would delete rather than advising it", () => {
    for (const v of ["6", "8"]) {
      const st = charliecloudStorage();
      writeFileSync(join(st, "version"), `${v}\n`);
      const r = image(st, ["list"]);
      failed(
        r,
        new RegExp(
          `incompatible storage directory v${v}: ${st}: .*"ch-image reset" would delete it with all its images and caches`,
        ),
        `v${v}`,
      );
      assert.match(r.stderr, v === "8" ? /newer Charliecloud/ : /upgrades older ones in place, keeping the images/);
      assert.ok(existsSync(join(st, "img/busybox")));
    }
  });

  describe("with a registry", () => {
    let reg: Registry;
    let img: Image;
    const hello = (text: string) => layerFromMembers([{ path: "hello.txt", body: text }]);

    before(async () => {
      reg = await startRegistry(join(dir, "reg"));
      img = makeImage({ kind: "docker", layers: [busyboxLayer(dir), hello("from the registry\n")], architecture: HOST_ARCH });
      const p = new Pusher(reg);
      await p.image("one", "latest", img);
      await p.image("pfx/sub/two", "latest", img);
    });

    after(async () => {
      await reg?.stop();
    });

    it("pushes its image (without Charliecloud's build cache links) and pulls over it in place", async () => {
      const st = charliecloudStorage();
      const before = theirs(st);
      ok(await chImage(["-s", st, "push", "busybox", `${reg.host}/pushed:1`], chEnv()), "push busybox");
      const back = fresh("-storage");
      ok(await chImage(["-s", back, "pull", `${reg.host}/pushed:1`], chEnv()), "pull it back");
      const pulled = join(back, "img", `${reg.host.replace(":", "+")}%pushed+1`);
      assert.equal(readFileSync(join(pulled, "marker.txt"), "utf8"), "charliecloud busybox\n");
      assert.ok(
        !existsSync(join(pulled, "ch/git")) && !existsSync(join(pulled, "ch/git.pickle")),
        "ch/git, ch/git.pickle not pushed",
      );
      // Pull into its name: the directory Charliecloud named is replaced, no second one made.
      ok(await chImage(["-s", st, "pull", `${reg.host}/one`, "busybox"], chEnv()), "pull one as busybox");
      assert.deepEqual(readdirSync(join(st, "img")).sort(), ["alpine+3.17", "busybox"]);
      assert.equal(ok(chRun(st, "busybox", "/bin/cat", "/hello.txt"), "ch-run").stdout, "from the registry\n");
      assert.deepEqual(theirs(st), before, "push left nothing in ulcache/, nothing of Charliecloud's changed");
      assert.deepEqual(charliecloudObjections(st), []);
      assert.equal(readFileSync(join(st, "version"), "utf8"), "7\n");
    });

    it("pull --last-layer N unpacks only the lowest N layers", async () => {
      const st = fresh("-storage");
      const r = ok(
        await chImage(["-s", st, "pull", "--last-layer", "1", `${reg.host}/one`, "partial"], chEnv()),
        "--last-layer 1",
      );
      assert.match(r.stderr, /--last-layer: unpacking 1 of 2 layers \(an incomplete image\)/);
      assert.ok(existsSync(join(st, "img/partial+latest/bin/busybox")));
      assert.ok(!existsSync(join(st, "img/partial+latest/hello.txt")), "layer 2 not unpacked");
      ok(await chImage(["-s", st, "pull", "--last-layer", "9", `${reg.host}/one`, "whole"], chEnv()), "--last-layer 9");
      assert.ok(existsSync(join(st, "img/whole+latest/hello.txt")));
      failed(
        await chImage(["-s", st, "pull", "--last-layer", "x", `${reg.host}/one`], chEnv()),
        /--last-layer: not a number of layers: x/,
        "bad N",
      );
    });

    it("$CH_REGY_DEFAULT_HOST, $CH_REGY_DEFAULT_PORT, $CH_REGY_PATH_PREFIX: the registry of references without a host", async () => {
      const st = fresh("-storage");
      const regy = { CH_REGY_DEFAULT_HOST: "127.0.0.1", CH_REGY_DEFAULT_PORT: String(reg.port) };
      ok(await chImage(["-s", st, "pull", "one"], chEnv({ extra: regy })), "pull one");
      ok(await chImage(["-s", st, "pull", "two"], chEnv({ extra: { ...regy, CH_REGY_PATH_PREFIX: "pfx/sub" } })), "pull two");
      assert.equal(ok(image(st, ["list"]), "list").stdout, "one:latest\ntwo:latest\n", "stored under the names given");
      assert.equal(ok(chRun(st, "two", "/bin/cat", "/hello.txt"), "ch-run two").stdout, "from the registry\n");
      const l = ok(await chImage(["-s", st, "list", "one"], chEnv({ extra: regy })), "list one");
      assert.match(l.stdout, new RegExp(`full remote ref: +127\\.0\\.0\\.1:${reg.port}/one:latest`));
      assert.match(l.stdout, /available remotely: +yes/);
      // A reference with a host is not affected.
      ok(
        await chImage(["-s", st, "pull", `${reg.host}/one`], chEnv({ extra: { ...regy, CH_REGY_PATH_PREFIX: "nope" } })),
        "with a host",
      );
      for (const [extra, re] of [
        [{ CH_REGY_DEFAULT_HOST: "127.0.0.1", CH_REGY_DEFAULT_PORT: "http" }, /\$CH_REGY_DEFAULT_PORT: not a port number: http/],
        [{ CH_REGY_DEFAULT_HOST: "a/b" }, /\$CH_REGY_DEFAULT_HOST: not a host name: a\/b/],
        [{ ...regy, CH_REGY_PATH_PREFIX: "../x" }, /\$CH_REGY_PATH_PREFIX: invalid path component: \.\./],
      ] as const)
        failed(await chImage(["-s", st, "pull", "one"], chEnv({ extra })), re, JSON.stringify(extra));
    });

    it("push --image DIR makes no storage directory for its temporary tarball", async () => {
      const st = fresh("-storage");
      const scratch = fresh("-tmp");
      mkdirSync(scratch);
      const env = chEnv({ extra: { TMPDIR: scratch } });
      failed(await chImage(["-s", st, "push", "--image", bbDir, "127.0.0.1:1/x"], env), /127\.0\.0\.1:1/, "unreachable");
      assert.ok(!existsSync(st), "no storage directory made");
      ok(await chImage(["-s", st, "push", "--image", bbDir, `${reg.host}/fromdir:1`], env), "push --image");
      assert.ok(!existsSync(st), "no storage directory made");
      // Only the native module's private cache (hidden, made once) may stay.
      assert.deepEqual(
        readdirSync(scratch).filter((f) => f !== `.charliecloud-${process.geteuid?.()}`),
        [],
        "its temporary directory removed",
      );
      ok(await chImage(["-s", st, "pull", `${reg.host}/fromdir:1`], chEnv()), "pull it back");
    });
  });
});

describe("storage directories we make are Charliecloud's", () => {
  it("after import, push, delete and ch-run of a SquashFS image: layout Charliecloud accepts, lock file kept", (t) => {
    const st = fresh("-storage");
    ok(image(st, ["import", bbDir, "bb"]), "import");
    assert.equal(readFileSync(join(st, "version"), "utf8"), "7\n");
    assert.deepEqual(readdirSync(st).sort(), ["bucache", "bularge", "dlcache", "img", "lock", "ulcache", "version"]);
    assert.deepEqual(readdirSync(join(st, "bucache")), [], "an empty build cache: Charliecloud makes its repository there");
    assert.deepEqual(charliecloudObjections(st), []);
    ok(image(st, ["delete", "bb"]), "delete");
    assert.deepEqual(charliecloudObjections(st), []);
    if (!existsSync("/usr/bin/squashfuse") || !existsSync("/usr/bin/mksquashfs")) return t.skip("no squashfuse/mksquashfs");
    const sqfs = fresh(".sqfs");
    assert.equal(run("mksquashfs", [bbDir, sqfs, "-quiet", "-noappend"]).status, 0);
    // Absent: made whole (a lone mnt/ is no storage directory Charliecloud accepts).
    const st2 = fresh("-storage");
    assert.equal(ok(run(CH_RUN, ["-s", st2, sqfs, "--", "/bin/echo", "sq"], { env: chEnv() }), "ch-run sqfs").stdout, "sq\n");
    assert.deepEqual(charliecloudObjections(st2), []);
    assert.ok(lstatSync(join(st2, "mnt")).isDirectory());
    ok(run(CH_RUN, ["-s", st, sqfs, "--", "/bin/true"], { env: chEnv() }), "ch-run sqfs, existing storage");
    assert.deepEqual(charliecloudObjections(st), []);
    // Checked before mnt/ is made in it: a storage directory others can write is refused.
    const open = fresh("-storage");
    mkdirSync(open);
    chmodSync(open, 0o777);
    const r = run(CH_RUN, ["-s", open, sqfs, "--", "/bin/true"], { env: chEnv() });
    assert.equal(r.status, 31, r.stderr);
    assert.match(r.stderr, new RegExp(`storage directory unusable: ${open} is writable by group and others`));
    assert.deepEqual(readdirSync(open), [], "nothing made in it");
  });
});

describe("the storage lock is Charliecloud's", () => {
  const hold = (path: string): Promise<ChildProcess> =>
    new Promise((resolve, reject) => {
      const p = spawn(
        PYTHON,
        [
          "-c",
          "import fcntl,sys\nf=open(sys.argv[1],'w')\nfcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\nprint('locked',flush=True)\nsys.stdin.read()",
          path,
        ],
        {
          stdio: ["pipe", "pipe", "inherit"],
        },
      );
      p.stdout.once("data", () => resolve(p));
      p.once("exit", (c) => reject(new Error(`python exited ${c}`)));
    });
  /** What Charliecloud's lock (lockf on STORAGE/lock) gets: "got" or "busy". */
  const probe = (path: string) =>
    spawnSync(
      PYTHON,
      [
        "-c",
        "import fcntl,sys\nf=open(sys.argv[1],'w')\ntry:\n  fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\nexcept OSError: print('busy')",
        path,
      ],
      {
        encoding: "utf8",
      },
    ).stdout.trim();

  it("Charliecloud's lockf() keeps us out; ours keeps Charliecloud out, and ends with our process", async () => {
    const st = charliecloudStorage();
    const lock = join(st, "lock");
    const py = await hold(lock);
    failed(
      image(st, ["import", bbDir, "x"]),
      /storage directory is already in use: .+concurrent instances can't share one storage directory/,
      "locked",
    );
    py.stdin?.end();
    await new Promise((r) => py.once("exit", r));
    ok(image(st, ["import", bbDir, "x"]), "import once Charliecloud is done");
    // Ours held: an import waiting on a FIFO holds the lock.
    const fifo = fresh(".fifo");
    assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
    const ours = spawn(IMAGE, ["-s", st, "import", fifo, "y"], { env: chEnv(), stdio: "ignore" });
    // Wait for our lock in /proc/locks (probing with lockf() meanwhile could take the lock just
    // when ch-image tries, and ch-image then rightly gives up), then probe once.
    const ino = statSync(lock).ino;
    const held = () =>
      readFileSync("/proc/locks", "utf8")
        .split("\n")
        .some((l) => l.includes(`:${ino} `));
    for (let i = 0; i < 600 && !held(); i++) await new Promise((r) => setTimeout(r, 25));
    assert.ok(held(), "ch-image took the storage lock");
    assert.equal(probe(lock), "busy", "Charliecloud is kept out while we hold it");
    ours.kill("SIGKILL");
    await new Promise((r) => ours.once("exit", r));
    assert.equal(probe(lock), "got", "no stale lock: it ended with our process");
    assert.equal(ok(image(st, ["list"]), "list").stdout, "alpine:3.17\nbusybox\nx:latest\n", "no half-imported image listed");
    assert.deepEqual(charliecloudObjections(st), []);
  });
});

describe("our storage version 1", () => {
  function v1(): string {
    const st = fresh("-v1");
    mkdirSync(join(st, "img"), { recursive: true, mode: 0o755 });
    chmodSync(st, 0o700);
    writeFileSync(join(st, "version"), "1\n");
    writeFileSync(join(st, "lock"), "somehost 12345 678\n");
    for (const [d, marker] of [
      ["busybox", "old busybox"],
      ["foo+latest", "foo"],
      ["docker.io%library%bar", "bar"],
      ["dup", "dup as written"],
      ["dup+latest", "dup normalized"],
    ]) {
      cpSync(bbDir, join(st, "img", d), { recursive: true, verbatimSymlinks: true });
      writeFileSync(join(st, "img", d, "marker.txt"), `${marker}\n`);
    }
    mkdirSync(join(st, "dlcache"));
    writeFileSync(join(st, "dlcache", `sha256-${HEX}`), "blob");
    mkdirSync(join(st, "tmp"));
    writeFileSync(join(st, "tmp/push-layer.tar.gz"), "leftover");
    return st;
  }

  it("is read as it is by ch-run, and upgraded in place by ch-image, saying what it does", () => {
    const st = v1();
    // ch-run only reads: any spelling finds img/busybox; nothing is changed.
    assert.equal(ok(chRun(st, "busybox:latest", "/bin/cat", "/marker.txt"), "ch-run").stdout, "old busybox\n");
    assert.equal(readFileSync(join(st, "version"), "utf8"), "1\n");
    const r = ok(image(st, ["list"]), "list");
    assert.equal(r.stdout, "bar:latest\nbusybox:latest\ndup\ndup:latest\nfoo:latest\n");
    assert.match(r.stderr, new RegExp(`upgrading storage directory v1 to v7 \\(Charliecloud's layout\\): ${st}`));
    assert.match(r.stderr, /renamed image: img\/busybox -> img\/busybox\+latest/);
    assert.match(r.stderr, /renamed image: img\/docker\.io%library%bar -> img\/bar\+latest/);
    assert.match(r.stderr, /warning: not renaming image img\/dup: img\/dup\+latest exists \(both kept; dup names the first\)/);
    assert.match(r.stderr, /removed tmp\/ \(push's temporary directory; push now uses ulcache\/\)/);
    assert.equal(readFileSync(join(st, "version"), "utf8"), "7\n");
    assert.deepEqual(charliecloudObjections(st), []);
    assert.equal(readFileSync(join(st, "dlcache", `sha256-${HEX}`), "utf8"), "blob", "download cache kept");
    for (const [ref, marker] of [
      ["busybox", "old busybox"],
      ["docker.io/bar", "bar"],
      ["dup", "dup as written"],
      ["dup:latest", "dup normalized"],
    ])
      assert.equal(ok(chRun(st, ref, "/bin/cat", "/marker.txt"), ref).stdout, `${marker}\n`, ref);
    const again = ok(image(st, ["list"]), "list again");
    assert.equal(again.stderr, "", "upgraded once");
  });

  it("keeps a tmp/ holding more than push's tarball, and says so", () => {
    const st = v1();
    writeFileSync(join(st, "tmp/mine"), "x");
    const r = ok(image(st, ["list"]), "list");
    assert.match(
      r.stderr,
      new RegExp(`warning: left in place, not empty: ${st}/tmp \\(Charliecloud refuses a storage directory with it`),
    );
    assert.equal(readFileSync(join(st, "tmp/mine"), "utf8"), "x");
  });
});

describe("delete with globs", () => {
  it("matches names in img/ only: not '..', not through a symlink, not hidden or partial entries", () => {
    const st = fresh("-storage");
    for (const name of ["a", "ab", "b/c", "foo", "foo_stage0", "foo_stage12", "foox_stage1"])
      ok(image(st, ["import", bbDir, name]), `import ${name}`);
    const victim = fresh("-victim");
    mkdirSync(victim);
    writeFileSync(join(victim, "precious"), "keep\n");
    symlinkSync(victim, join(st, "img/link"));
    mkdirSync(join(st, "img/.hidden"));
    mkdirSync(join(st, "img/z.partial-otherhost.1"));
    const outside = snapshot(victim);
    const dl = snapshot(join(st, "dlcache"));
    const list = () => image(st, ["list"]).stdout.split("\n").filter(Boolean);
    failed(image(st, ["delete", ".."]), /invalid image name: \.\./, "..");
    failed(image(st, ["delete", "../*"]), /no matching image, can't delete: \.\.\/\*/, "../*");
    failed(image(st, ["delete", "*/../*", "..%*"]), /unable to delete 2 invalid image\(s\)/, "*/../*");
    failed(image(st, ["delete", "a%b"]), /invalid image name: a%b/, "a%b");
    assert.equal(list().length, 8, "nothing deleted by refused globs");
    const l = ok(image(st, ["delete", "l?nk"]), "delete l?nk");
    assert.match(l.stderr, /deleted symbolic link \(not what it points to\): img\/link/);
    assert.ok(!existsSync(join(st, "img/link")));
    ok(image(st, ["delete", "a*"]), "delete a*");
    assert.deepEqual(list(), ["b/c:latest", "foo:latest", "foo_stage0:latest", "foo_stage12:latest", "foox_stage1:latest"]);
    ok(image(st, ["delete", "b/*"]), "delete b/*");
    const f = ok(image(st, ["delete", "foo"]), "delete foo, with its build stages");
    assert.match(f.stderr, /deleted image: foo_stage12:latest/);
    assert.deepEqual(list(), ["foox_stage1:latest"]);
    ok(image(st, ["delete", "*"]), "delete *");
    assert.deepEqual(list(), []);
    assert.ok(
      existsSync(join(st, "img/.hidden")) && existsSync(join(st, "img/z.partial-otherhost.1")),
      "hidden and partial entries not matched",
    );
    assert.deepEqual(snapshot(victim), outside, "the symlink's target untouched");
    assert.deepEqual(snapshot(join(st, "dlcache")), dl);
    failed(image(st, ["delete", "*"]), /no matching image, can't delete: \*/, "nothing left");
    assert.deepEqual(charliecloudObjections(st), []);
  });
});

describe("Charliecloud's options and variables", () => {
  it("gestalt answers for this build: a build cache (not Git's), no Python; the storage path; logging", () => {
    const st = fresh("-storage");
    assert.equal(ok(image(st, ["gestalt", "storage-path"]), "storage-path").stdout, `${st}\n`);
    assert.equal(ok(image(st, ["gestalt"]), "no selector").stdout, "");
    ok(image(st, ["gestalt", "bucache"]), "bucache: builds have a cache");
    failed(image(st, ["gestalt", "bucache-dot"]), /no DOT output of the build cache: this one is not Git's/, "bucache-dot");
    failed(image(st, ["gestalt", "python-path"]), /no Python interpreter: this ch-image is not written in Python/, "python-path");
    failed(image(st, ["gestalt", "nope"]), /unknown gestalt selector: nope/, "nope");
    const l = ok(image(st, ["gestalt", "logging"]), "logging");
    assert.match(l.stderr, /^info\nch-image\[\d+\]: warning: warning\nch-image\[\d+\]: error: error\n$/);
    const v = ok(image(st, ["-vvv", "gestalt", "logging"]), "logging -vvv");
    assert.match(v.stderr, /^trace\ndebug\nverbose\ninfo\n/);
    failed(image(st, ["gestalt", "logging", "--fail"]), /error: the program failed inexplicably/, "--fail");
    failed(image(st, ["undelete", "x"]), /no deleted image to undelete in the build cache: x:latest/, "undelete");
    assert.ok(!existsSync(st), "no storage directory made");
  });

  it("--debug and $CH_IMAGE_DEBUG add the stack to a fatal error", () => {
    const st = fresh("-storage");
    const plain = image(st, ["delete", "nope"]);
    failed(plain, /no matching image/, "plain");
    assert.equal(plain.stderr.split("\n").filter(Boolean).length, 1, "one line");
    for (const [args, extra] of [
      [["--debug", "delete", "nope"], {}],
      [["delete", "nope"], { CH_IMAGE_DEBUG: "1" }],
    ] as const) {
      const r = image(st, [...args], extra);
      failed(r, /no matching image, can't delete: nope \(storage\.ts:\d+ 0\)\n {2}at .+\(storage\.ts:\d+\)\n/, "debug");
      assert.match(r.stderr, / {2}at .+\(ch-image\.ts:\d+\)/);
    }
  });

  it("$CH_LOG_FILE: chatter appended to the file (and -v), errors on stderr too", () => {
    const st = fresh("-storage");
    const log = fresh(".log");
    writeFileSync(log, "before\n");
    const r = image(st, ["gestalt", "logging", "--fail"], { CH_LOG_FILE: log });
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      /^ch-image\[\d+\]: error: error\nch-image\[\d+\]: error: the program failed inexplicably \(ch-image\.ts:\d+ 0\)\n$/,
    );
    assert.match(
      readFileSync(log, "utf8"),
      /^before\nverbose\ninfo\nch-image\[\d+\]: warning: warning\nch-image\[\d+\]: error: error\nch-image\[\d+\]: error: the program failed inexplicably/,
    );
    const i = ok(image(st, ["import", bbDir, "x"], { CH_LOG_FILE: log }), "import");
    assert.equal(i.stderr, "");
    assert.match(readFileSync(log, "utf8"), /\nimporting: [\s\S]*\nimported: x:latest\n$/);
    failed(
      image(st, ["list"], { CH_LOG_FILE: join(fresh(), "no", "log") }),
      /can't open log file \(\$CH_LOG_FILE\)/,
      "bad log file",
    );
  });

  it("--xattrs and $CH_XATTRS keep extended attributes; --no-xattrs overrides both", (t) => {
    const probe = fresh();
    writeFileSync(probe, "");
    try {
      libc().lsetxattr(probe, "user.probe", Buffer.from("1"));
    } catch {
      return t.skip(`no user xattrs in ${dir}`);
    }
    const pax = (records: Buffer[]) => {
      const body = Buffer.concat(records);
      const head = Buffer.alloc(512);
      new Header({ path: "PaxHeader/f", type: "ExtendedHeader", mode: 0o644, size: body.length, mtime: new Date(0) }).encode(
        head,
        0,
      );
      return Buffer.concat([head, body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
    };
    const tarball = fresh(".tar");
    writeFileSync(
      tarball,
      Buffer.concat([
        tarBytes(imageMembers()).subarray(0, -1024),
        pax([paxRecord("SCHILY.xattr.user.ok", Buffer.from("fine"))]),
        tarBytes([{ path: "etc/tagged", body: "x" }]).subarray(0, -1024),
        Buffer.alloc(1024),
      ]),
    );
    const st = fresh("-storage");
    const tagged = (name: string) => libc().llistxattr(join(st, "img", `${name}+latest`, "etc/tagged"));
    for (const [name, args, extra, want] of [
      ["plain", [], {}, []],
      ["opt", ["--xattrs"], {}, ["user.ok"]],
      ["env", [], { CH_XATTRS: "1" }, ["user.ok"]],
      ["envno", ["--no-xattrs"], { CH_XATTRS: "1" }, []],
      ["optno", ["--xattrs", "--no-xattrs"], {}, []],
    ] as const) {
      ok(image(st, [...args, "import", tarball, name], extra), name);
      assert.deepEqual(tagged(name), want, name);
    }
    // writeTar: an import without xattrs still works the same.
    ok(image(st, ["import", writeTar(fresh(".tar"), imageMembers()), "again"]), "import");
  });
});
