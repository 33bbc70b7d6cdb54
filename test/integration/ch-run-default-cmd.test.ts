// ch-run IMAGE with no command (issue 12): the image's ENTRYPOINT then CMD, by Docker's rules for
// exec and shell forms, in its WORKDIR unless --cd; IMAGE -- COMMAND ignores them; no CMD and no
// ENTRYPOINT is Charliecloud's usage error; a SquashFS image's are read from the file (no
// squashfs-tools needed); ch/metadata.json is untrusted (a symlink out of the image is not
// followed, wrong types and huge files are ignored).
import assert from "node:assert/strict";
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parseDefaults } from "../../src/container/defaults.ts";
import { busyboxImage, CH_RUN, cleanup, DIST, type Result, run, tmp } from "../helpers.ts";

const IMAGE = join(DIST, "ch-image");
const USAGE = "usage: ch-run [OPTION...] IMAGE -- COMMAND [ARG...]\n";
const MISSING = /^ch-run\[\d+\]: error: IMAGE and\/or COMMAND not specified$/m;

let dir: string;
let storage: string;
const env = () => ({ ...process.env, CH_IMAGE_STORAGE: storage });
const image = (args: string[]): Result => run(IMAGE, args, { cwd: dir, env: env() });
const chRun = (args: string[]): Result => run(CH_RUN, args, { cwd: dir, env: env() });

/** Builds `tag` from a Dockerfile (FROM the imported busybox image). */
function build(tag: string, dockerfile: string): void {
  const ctx = join(dir, `ctx-${tag}`);
  mkdirSync(ctx);
  writeFileSync(join(ctx, "Dockerfile"), `FROM bb\n${dockerfile}`);
  const r = image(["build", "-t", tag, ctx]);
  assert.equal(r.status, 0, r.stderr);
}

before(() => {
  dir = tmp("ch-defcmd-");
  storage = join(dir, "storage");
  const bb = busyboxImage(dir, "bbimg");
  const t = run("tar", ["-C", bb, "-cf", join(dir, "bb.tar"), "."]);
  assert.equal(t.status, 0, t.stderr);
  const i = image(["import", join(dir, "bb.tar"), "bb"]);
  assert.equal(i.status, 0, i.stderr);
  build("execform", 'CMD ["echo", "exec", "$((1+2))"]\n');
  build("shellform", "CMD echo shell $((1+2))\n");
  build("epcmd", 'ENTRYPOINT ["echo", "ep"]\nCMD ["a", "b"]\n');
  build("eponly", "WORKDIR /w/sub\nENTRYPOINT pwd\n");
  build("none", "WORKDIR /w\n");
});
after(() => cleanup(dir));

describe("ch-run IMAGE with no command", () => {
  it("runs CMD in exec form (no shell) and in shell form (through /bin/sh -c)", () => {
    let r = chRun(["execform"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "exec $((1+2))\n");
    r = chRun(["shellform"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "shell 3\n");
  });

  it("runs ENTRYPOINT followed by CMD, and ENTRYPOINT alone in WORKDIR unless --cd", () => {
    let r = chRun(["epcmd"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "ep a b\n");
    r = chRun(["eponly"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "/w/sub\n");
    r = chRun(["-c", "/w", "eponly"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "/w\n");
    // The exit status is the command's.
    build("fails", "CMD exit 7\n");
    assert.equal(chRun(["fails"]).status, 7);
  });

  it("IMAGE -- COMMAND runs COMMAND alone, in / as before (no ENTRYPOINT, no WORKDIR)", () => {
    let r = chRun(["epcmd", "--", "echo", "mine"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "mine\n");
    r = chRun(["eponly", "--", "pwd"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "/\n");
  });

  it("no CMD and no ENTRYPOINT: Charliecloud's usage error, exit 31", () => {
    const r = chRun(["none"]);
    assert.equal(r.status, 31);
    assert.equal(r.stdout, USAGE);
    assert.match(r.stderr, MISSING);
  });

  it("does not follow ch/metadata.json or ch out of the image, nor read a huge one", () => {
    // Host files with a command that would show if they were read.
    const outside = join(dir, "outside");
    mkdirSync(outside);
    const leak = JSON.stringify({ cmd: ["echo", "LEAKED"], cwd: "/" });
    writeFileSync(join(outside, "metadata.json"), leak);
    const cases: [string, (ch: string) => void, RegExp][] = [
      ["passwd", (ch) => symlinkSync("/etc/passwd", join(ch, "metadata.json")), /metadata\.json: not a regular file/],
      ["hostfile", (ch) => symlinkSync(join(outside, "metadata.json"), join(ch, "metadata.json")), /not a regular file/],
      [
        "huge",
        (ch) => writeFileSync(join(ch, "metadata.json"), `{"cmd":["echo","LEAKED"]}${" ".repeat(2 << 20)}`),
        /larger than/,
      ],
      [
        "types",
        (ch) => writeFileSync(join(ch, "metadata.json"), '{"cmd":"echo LEAKED","entrypoint":[1]}'),
        /not a list of strings/,
      ],
      ["notjson", (ch) => writeFileSync(join(ch, "metadata.json"), "cmd: echo LEAKED"), /not JSON/],
    ];
    for (const [name, make, warning] of cases) {
      const img = busyboxImage(dir, `hostile-${name}`);
      mkdirSync(join(img, "ch"), { recursive: true });
      make(join(img, "ch"));
      const r = chRun([img]);
      assert.equal(r.status, 31, `${name}: ${r.stderr}`);
      assert.doesNotMatch(r.stdout, /LEAKED/);
      assert.match(r.stderr, warning, name);
      assert.match(r.stderr, MISSING, name);
    }
    // ch itself a symlink to a host directory holding a metadata.json.
    const img = busyboxImage(dir, "hostile-chdir");
    rmSync(join(img, "ch"), { recursive: true, force: true });
    symlinkSync(outside, join(img, "ch"));
    const r = chRun([img]);
    assert.equal(r.status, 31, r.stderr);
    assert.match(r.stderr, /ch: not a directory/);
    assert.match(r.stderr, MISSING);
  });
});

describe("ch-run IMAGE.sqfs with no command", () => {
  /** The image `tag` in storage as a SquashFS file (ch-convert), or made by mksquashfs `args`. */
  function sqfs(tag: string, args: string[] = []): string {
    const out = join(dir, `${tag}${args.length ? "-x" : ""}.sqfs`);
    const r = args.length
      ? run("mksquashfs", [join(storage, "img", `${tag}+latest`), out, "-noappend", "-quiet", "-no-progress", ...args])
      : run(join(DIST, "ch-convert"), [tag, out], { env: env() });
    assert.equal(r.status, 0, r.stderr);
    return out;
  }

  it("runs ENTRYPOINT and CMD read from the image file, in its WORKDIR unless --cd", () => {
    let r = chRun([sqfs("epcmd")]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "ep a b\n");
    const eponly = sqfs("eponly");
    r = chRun([eponly]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "/w/sub\n");
    r = chRun(["-c", "/w", eponly]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "/w\n");
    r = chRun([sqfs("shellform")]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "shell 3\n");
    // IMAGE -- COMMAND: COMMAND alone, in /.
    r = chRun([eponly, "--", "pwd"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "/\n");
  });

  it("in other compressions (xz, lz4, lzo, zstd: all read by ch-run itself)", () => {
    for (const comp of ["xz", "lz4", "lzo", "zstd"]) {
      const r = chRun([sqfs("epcmd", ["-comp", comp, "-all-root"])]);
      assert.equal(r.status, 0, `${comp}: ${r.stderr}`);
      assert.equal(r.stdout, "ep a b\n", comp);
    }
  });

  it("no CMD and no ENTRYPOINT: the usage error; a corrupt image's metadata: a warning, then the same", () => {
    let r = chRun([sqfs("none")]);
    assert.equal(r.status, 31);
    assert.equal(r.stdout, USAGE);
    assert.match(r.stderr, MISSING);
    const fake = join(dir, "fake.sqfs");
    writeFileSync(fake, "hsqs not really");
    r = chRun([fake]);
    assert.equal(r.status, 31);
    assert.match(
      r.stderr,
      /^ch-run\[\d+\]: warning: ignoring .*fake\.sqfs:\/ch\/metadata\.json: can't read .*: superblock past the end of the image$/m,
    );
    assert.match(r.stderr, MISSING);
  });

  it("does not follow a symlinked ch or metadata.json inside the image", () => {
    const leak = JSON.stringify({ cmd: ["echo", "LEAKED"] });
    const cases: [string, (img: string) => void, RegExp][] = [
      [
        "chlink",
        (img) => {
          mkdirSync(join(img, "other"));
          writeFileSync(join(img, "other/metadata.json"), leak);
          rmSync(join(img, "ch"), { recursive: true });
          symlinkSync("other", join(img, "ch"));
        },
        /:\/ch: not a directory/,
      ],
      [
        "metalink",
        (img) => {
          writeFileSync(join(img, "ch/real.json"), leak);
          symlinkSync("real.json", join(img, "ch/metadata.json"));
        },
        /:\/ch\/metadata\.json: not a regular file/,
      ],
    ];
    for (const [name, make, warning] of cases) {
      const img = busyboxImage(dir, `sq-${name}`);
      make(img);
      const out = join(dir, `sq-${name}.sqfs`);
      const m = run("mksquashfs", [img, out, "-noappend", "-quiet", "-no-progress"]);
      assert.equal(m.status, 0, m.stderr);
      const r = chRun([out]);
      assert.equal(r.status, 31, `${name}: ${r.stderr}`);
      assert.doesNotMatch(r.stdout, /LEAKED/);
      assert.match(r.stderr, warning, name);
      assert.match(r.stderr, MISSING, name);
    }
  });
});

describe("parseDefaults", () => {
  it("ENTRYPOINT + CMD, WORKDIR; wrong types ignored with a warning", () => {
    assert.deepEqual(parseDefaults('{"entrypoint":["a"],"cmd":["b","c"],"cwd":"/w"}', "m"), {
      argv: ["a", "b", "c"],
      cwd: "/w",
      warnings: [],
    });
    const d = parseDefaults('{"entrypoint":"a","cmd":["b"],"cwd":"rel"}', "m");
    assert.deepEqual(d.argv, ["b"]);
    assert.equal(d.cwd, null);
    assert.equal(d.warnings.length, 2);
    assert.deepEqual(parseDefaults("[1]", "m").argv, []);
    assert.deepEqual(parseDefaults('{"cmd":["a\\u0000b"]}', "m").argv, []);
  });
});
