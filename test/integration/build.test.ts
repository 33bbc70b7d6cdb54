// ch-image build (the built binary): --parse-only's output, syntax errors, standard input, the
// inferred image name, build's options, --dry-run. Building itself: build-run.test.ts.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cleanup, DIST, type Result, run, tmp } from "../helpers.ts";

const IMAGE = join(DIST, "ch-image");
const ERROR = /^ch-image\[\d+\]: error: .+ \([a-z0-9-]+\.ts:\d+ \d+\)\n$/;
const USAGE = /^ch-image\[\d+\]: error: [^()]+\n$/;

let dir: string;
let storage: string;

function image(args: string[], input?: string, env: Record<string, string> = {}): Result {
  return run(IMAGE, args, { cwd: dir, input, env: { ...process.env, CH_IMAGE_STORAGE: storage, ...env } });
}

const lines = (r: Result) =>
  r.stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));

const DOCKERFILE = `# escape=\`
ARG BASE=alpine:3.19
FROM $BASE AS build
ENV A=1 B="two words"
ENV LEGACY a b
RUN --mount=type=cache,target=/c make \`
    all
COPY --from=tools --chown=0:0 --link ["a b", "/dst/"]
RUN <<-EOF
\techo "$A"
\tEOF
CMD ["run", "it"]
`;

before(() => {
  dir = tmp("ch-build-");
  storage = join(dir, "storage");
  mkdirSync(join(dir, "ctx"));
  writeFileSync(join(dir, "ctx", "Dockerfile"), DOCKERFILE);
});
after(() => cleanup(dir));

describe("ch-image build --parse-only", () => {
  it("prints each instruction as a JSON line and touches no storage", () => {
    const r = image(["build", "--parse-only", "ctx"]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(lines(r), [
      { line: 2, keyword: "arg", flags: {}, args: ["BASE", "alpine:3.19"], json: false },
      { line: 3, keyword: "from", flags: {}, args: ["$BASE", "AS", "build"], json: false },
      { line: 4, keyword: "env", flags: {}, args: ["A", "1", "B", '"two words"'], json: false },
      { line: 5, keyword: "env", flags: {}, args: ["LEGACY", "a b"], json: false },
      { line: 6, keyword: "run", flags: { mount: ["type=cache,target=/c"] }, args: ["make     all"], json: false },
      {
        line: 8,
        keyword: "copy",
        flags: { from: "tools", chown: "0:0", link: true },
        args: ["a b", "/dst/"],
        json: true,
      },
      {
        line: 9,
        keyword: "run",
        flags: {},
        args: ["<<-EOF"],
        json: false,
        heredocs: [{ name: "EOF", fd: 0, expand: true, chomp: true, content: 'echo "$A"\n' }],
      },
      { line: 12, keyword: "cmd", flags: {}, args: ["run", "it"], json: true },
    ]);
    assert.equal(r.stderr, "inferred image name: ctx\n");
    assert.equal(existsSync(storage), false);
  });

  it("stops at a syntax error: exit 1, one line naming FILE:LINE, nothing on standard output", () => {
    writeFileSync(join(dir, "bad"), "FROM x\nRUN ok\nCOPY --form=a b c\nRUN never\n");
    const r = image(["build", "--parse-only", "-f", "bad", "ctx"]);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, ERROR);
    assert.match(r.stderr, /error: bad:3: unknown flag: form /);
    const u = image(["build", "--parse-only", "-f", "-", "ctx"], "FROM x\n\nFROOM y\n");
    assert.equal(u.status, 1);
    assert.match(u.stderr, /error: <stdin>:3: unknown instruction: FROOM /);
    const s = image(["build", "--parse-only", "-f", "-", "ctx"], "ARG I\nFROM $I\n");
    assert.equal(s.status, 1);
    assert.match(s.stderr, /error: <stdin>:2: base name \(\$I\) should not be blank /);
  });

  it("reads the Dockerfile from standard input: -f - (context still given) or CONTEXT -", () => {
    const f = image(["build", "--parse-only", "-f", "-", "ctx"], "from x\nrun a \\\n b\n");
    assert.equal(f.status, 0, f.stderr);
    assert.deepEqual(
      lines(f).map((i) => [i.keyword, i.args]),
      [
        ["from", ["x"]],
        ["run", ["a  b"]],
      ],
    );
    assert.equal(f.stderr, "inferred image name: ctx\n");
    const c = image(["build", "--parse-only", "-"], "FROM x\n");
    assert.equal(c.status, 0, c.stderr);
    assert.equal(lines(c).length, 1);
    const both = image(["build", "--parse-only", "-f", "x", "-"], "FROM x\n");
    assert.equal(both.status, 1);
    assert.match(both.stderr, /--file not allowed when CONTEXT is -/);
  });

  it("infers the image name as Charliecloud does when -t is absent", () => {
    mkdirSync(join(dir, "My@Ctx"));
    for (const f of ["Dockerfile.@FOO.bar", "baz.@QUX.dockerfile", "x.df", "plain"]) writeFileSync(join(dir, f), "FROM x\n");
    const table: [string[], string][] = [
      [["-f", "Dockerfile.@FOO.bar", "ctx"], "foo.bar"],
      [["-f", "baz.@QUX.dockerfile", "ctx"], "baz.qux"],
      [["-f", "x.df", "ctx"], "x"],
      [["-f", "plain", "My@Ctx"], "myctx"],
      [["-f", "plain", "/"], "root"],
    ];
    for (const [args, name] of table) {
      const r = image(["build", "--parse-only", ...args]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, `inferred image name: ${name}\n`, args.join(" "));
    }
    const t = image(["build", "--parse-only", "-t", "given:1", "-f", "plain", "ctx"]);
    assert.equal(t.stderr, "");
    const bad = image(["build", "--parse-only", "-t", "no good", "-f", "plain", "ctx"]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /invalid image name: no good/);
  });

  it("build args: from the environment without =, unused ones warned about, missing ones refused", () => {
    writeFileSync(join(dir, "args"), "ARG V\nFROM img:$V\nARG W\n");
    const r = image(["build", "--parse-only", "-f", "args", "--build-arg", "V", "--build-arg=NOPE=1", "ctx"], undefined, {
      V: "1",
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /^ch-image\[\d+\]: warning: one or more build-args were not consumed: NOPE$/m);
    const m = image(["build", "--parse-only", "-f", "args", "--build-arg", "UNSET_VAR_X", "ctx"]);
    assert.equal(m.status, 1);
    assert.match(m.stderr, USAGE);
    assert.match(m.stderr, /--build-arg: UNSET_VAR_X: no value and not in environment/);
  });

  it("options and $CH_IMAGE_CACHE are checked", () => {
    const table: [string[], Record<string, string>, RegExp][] = [
      [["--force=fakeroot"], {}, /--force: invalid mode: fakeroot/],
      [["--force-cmd=apt-get"], {}, /--force-cmd: expected CMD,ARG1/],
      [[], { CH_IMAGE_CACHE: "maybe" }, /\$CH_IMAGE_CACHE: invalid value: maybe/],
      [["--tag"], {}, /requires an argument/],
    ];
    for (const [opts, env, re] of table) {
      const r = image(["build", "--parse-only", "ctx", ...opts], undefined, env);
      assert.equal(r.status, 1, opts.join(" "));
      assert.match(r.stderr, re);
    }
    const ok = image([
      "--no-cache",
      "build",
      "--force",
      "--force-cmd=apt-get,-o,x\\,y",
      "--rebuild",
      "-n",
      "--parse-only",
      "ctx",
    ]);
    assert.equal(ok.status, 0, ok.stderr);
  });

  it("refuses a missing or non-directory context", () => {
    const r = image(["build", "--parse-only", "nope"]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /context directory: nope: No such file or directory/);
    const f = image(["build", "--parse-only", "-f", "plain", "plain"]);
    assert.match(f.stderr, /context is not a directory: plain/);
    const d = image(["build", "--parse-only", "-f", "missing", "ctx"]);
    assert.match(d.stderr, /can't read Dockerfile: missing: No such file or directory/);
    assert.equal(image(["build", "--parse-only"]).status, 1);
  });
});

describe("ch-image build --dry-run", () => {
  it("executes nothing and writes no storage (FROM names an image nowhere here)", () => {
    const r = image(["build", "-n", "-t", "x", "ctx"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /ctx\/Dockerfile:3: FROM \$BASE AS build\n/);
    assert.match(r.stderr, /dry run: nothing executed, no image written: x\n/);
    assert.equal(existsSync(storage), false);
  });
  it("is listed in --help, with build-cache and undelete", () => {
    const r = image(["--help"]);
    assert.match(r.stdout, /^ {2}build \[-t TAG\]/m);
    assert.match(r.stdout, /--parse-only/);
    assert.match(r.stdout, /--no-cache: not used; --rebuild: run them/);
    assert.match(r.stdout, /^ {2}build-cache \[--reset\] \[--gc\] \[--tree\]/m);
    assert.match(r.stdout, /^ {2}undelete IMAGE /m);
  });
});
