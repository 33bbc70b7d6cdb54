// ch-image build, building (the built binary, as an ordinary user): FROM a busybox image imported
// into storage, RUN through ch-run, COPY/ADD by Docker's rules with .dockerignore, multi-stage
// builds, heredocs, ENV/WORKDIR/ARG in RUN and in ch/metadata.json; a failing RUN or a syntax
// error leaves storage as it was; sources that leave the context, and destinations through
// symlinks in the image, are refused or confined.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { hostname } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { busyboxImage, cleanup, DIST, importBusybox, type Result, run, tmp } from "../helpers.ts";
import { makeCA } from "../registry/certs.ts";
import { chEnv, chImage } from "../registry/chimage.ts";
import { type Registry, startRegistry } from "../registry/registry.ts";

const IMAGE = join(DIST, "ch-image");
const ERROR = /^ch-image\[\d+\]: error: .+ \([a-z0-9-]+\.ts:\d+ \d+\)\n$/m;

let dir: string;
let storage: string;
/** A host directory the containers see at the same path (ch-run binds the host's /tmp). */
let witness: string;

function image(args: string[], opts: { input?: string; cwd?: string; env?: Record<string, string> } = {}): Result {
  return run(IMAGE, args, {
    cwd: opts.cwd ?? dir,
    input: opts.input,
    env: { ...process.env, CH_IMAGE_STORAGE: storage, ...opts.env },
  });
}

/** Writes files (content, or ["link", target]) under a context directory. */
function context(name: string, files: Record<string, string | ["link", string]>): string {
  const ctx = join(dir, name);
  for (const [path, v] of Object.entries(files)) {
    const p = join(ctx, path);
    mkdirSync(join(p, ".."), { recursive: true });
    if (typeof v === "string") writeFileSync(p, v);
    else symlinkSync(v[1], p);
  }
  return ctx;
}

const img = (name: string, ...path: string[]) => join(storage, "img", `${name}+latest`, ...path);
const text = (p: string) => readFileSync(p, "utf8");
const meta = (name: string) => JSON.parse(text(img(name, "ch", "metadata.json")));
/** What a build may leave in storage besides images: nothing (no partial directory in img/,
 * nothing of ours at the top, where Charliecloud refuses what it doesn't know). */
const leftovers = () => [
  ...readdirSync(storage).filter((n) => n === "tmp"),
  ...readdirSync(join(storage, "img")).filter((n) => n.includes(".partial-")),
];

before(() => {
  dir = tmp("ch-buildrun-");
  storage = join(dir, "storage");
  witness = mkdtempSync("/tmp/ch-witness-");
  importBusybox(dir, image);
});
after(() => {
  cleanup(dir);
  cleanup(witness);
});

describe("ch-image build", () => {
  it(".dockerignore as a symlink: followed inside the context, refused out of it", () => {
    const inside = context("ign-in", {
      "secret.key": "no\n",
      "ok.txt": "yes\n",
      "rules/ignore": "*.key\n",
      ".dockerignore": ["link", "rules/ignore"],
      Dockerfile: "FROM bb\nCOPY . /ctx/\n",
    });
    const r = image(["build", "-t", "ign-in", inside]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(existsSync(img("ign-in", "ctx/secret.key")), false, "the linked rules were applied");
    assert.equal(text(img("ign-in", "ctx/ok.txt")), "yes\n");
    const outside = context("ign-out", { ".dockerignore": ["link", "/etc/hostname"], Dockerfile: "FROM bb\nCOPY . /ctx/\n" });
    const o = image(["build", "-t", "ign-out", outside]);
    assert.equal(o.status, 1);
    assert.match(o.stderr, /\.dockerignore: a symbolic link out of the context; make it a file in the context/);
    assert.equal(existsSync(img("ign-out")), false);
    assert.equal(image(["delete", "ign-in"]).status, 0); // later tests list the storage
  });

  it("FROM an image in storage, ARG/ENV/WORKDIR in RUN and in ch/metadata.json, COPY by Docker's rules", () => {
    const ctx = context("ctx1", {
      "a.txt": "A\n",
      "b.txt": "B\n",
      "ignored.txt": "no\n",
      "dir/sub/f": "F\n",
      "dir/link": ["link", "sub/f"],
      "dir/secret.key": "no\n",
      "dir/keep.key": "yes\n",
      "skipped/no": "no\n",
      "skipped/yes": "yes\n",
      ".dockerignore": "# comment\nignored.txt\n**/*.key\n!dir/keep.key\nskipped\n!skipped/yes\n",
      Dockerfile: `FROM bb
ARG GREETING=hello
ENV E1=one E2="two words"
WORKDIR /work
RUN echo "$GREETING $E1 $E2 $IMAGE_VAR" > out.txt && pwd > pwd.txt && touch ${witness}/ran
COPY *.txt /files/
COPY dir /d
COPY dir/ /d2/
COPY skipped /skipped
COPY --chown=0:0 a.txt /renamed
COPY --chmod=600 b.txt a.txt /modes/
WORKDIR sub
RUN pwd > /work/sub.txt
LABEL org.example.x=yes
SHELL ["/bin/sh", "-ec"]
CMD echo hi
USER nobody
`,
    });
    const r = image(["build", "--build-arg", "GREETING=hi", "-t", "built", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /root emulation/);
    assert.match(r.stderr, /^ {2}1[.*] FROM bb$/m); // "*": a build cache hit (another test's FROM bb)
    assert.match(
      r.stderr,
      /warning: \S*\/ctx1\/Dockerfile:10: COPY --chown=0:0 ignored: files belong to the user building the image/,
    );
    assert.match(r.stderr, /grown in 17 instructions( \(1 cached\))?: built:latest/);
    // RUN: ARG from --build-arg, ENV, the base image's ch/environment, WORKDIR as cwd.
    assert.equal(text(img("built", "work/out.txt")), "hi one two words from-image\n");
    assert.equal(text(img("built", "work/pwd.txt")), "/work\n");
    assert.equal(text(img("built", "work/sub.txt")), "/work/sub\n");
    assert.ok(existsSync(join(witness, "ran")));
    // COPY: globs, .dockerignore, a directory's contents, symlinks inside it kept, --chmod.
    assert.deepEqual(readdirSync(img("built", "files")).sort(), ["a.txt", "b.txt"]);
    for (const d of ["d", "d2"]) {
      assert.equal(text(img("built", d, "sub/f")), "F\n");
      assert.equal(readlinkSync(img("built", d, "link")), "sub/f");
      assert.deepEqual(readdirSync(img("built", d)).sort(), ["keep.key", "link", "sub"]);
    }
    assert.equal(text(img("built", "renamed")), "A\n");
    assert.deepEqual(readdirSync(img("built", "skipped")), ["yes"]);
    assert.equal(lstatSync(img("built", "modes/b.txt")).mode & 0o7777, 0o600);
    assert.equal(lstatSync(img("built", "modes/a.txt")).mode & 0o7777, 0o600);
    const m = meta("built");
    assert.equal(m.cwd, "/work/sub");
    assert.equal(m.env.E1, "one");
    assert.equal(m.env.E2, "two words");
    assert.equal(m.env.IMAGE_VAR, "from-image");
    assert.equal(m.env.PATH, "/ch/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    assert.equal(m.env.TAR_OPTIONS, "--no-same-owner");
    assert.equal(m.env.GREETING, undefined); // an ARG is not stored
    assert.deepEqual(m.labels, { "org.example.x": "yes" });
    assert.deepEqual(m.shell, ["/bin/sh", "-ec"]);
    assert.deepEqual(m.cmd, ["/bin/sh", "-ec", "echo hi"]);
    assert.equal(m.user, "nobody");
    assert.equal(m.history.length, 16);
    assert.equal(
      m.history[3].created_by,
      `RUN echo "$GREETING $E1 $E2 $IMAGE_VAR" > out.txt && pwd > pwd.txt && touch ${witness}/ran`,
    );
    assert.match(text(img("built", "ch/environment")), /^E2=two words$/m);
    assert.deepEqual(leftovers(), []);
    const run1 = run(join(DIST, "ch-run"), ["-s", storage, "built", "--", "cat", "/work/out.txt"]);
    assert.equal(run1.stdout, "hi one two words from-image\n", run1.stderr);
  });

  it("multi-stage: COPY --from a stage (resolved inside it), unneeded stages skipped; ADD tarballs; heredocs", () => {
    const src = join(dir, "tarsrc");
    mkdirSync(join(src, "tdir"), { recursive: true });
    writeFileSync(join(src, "member"), "M\n");
    writeFileSync(join(src, "tdir/x"), "X\n");
    const ctx = context("ctx2", {
      "plain.gz": "",
      Dockerfile: `FROM bb AS one
RUN mkdir -p /out && echo built > /out/x && busybox ln -s /etc/passwd /out/leak && busybox mkfifo /fifo
CMD ["from-one"]
FROM scratch AS unused
RUN false
FROM one
COPY --from=one /out/x /x
COPY --from=0 /out/leak /leak
ADD t.tar /t/
ADD t.tar.gz /tgz
ADD plain.gz /plain.gz
ARG V=arg
COPY <<EOF /heredoc.txt
value=$V
EOF
RUN <<EOF
echo "heredoc run $V" > /hr
EOF
RUN cat > /lit <<'END'
literal $V
END
RUN <<EOF
#!/bin/sh
echo "shebang $0" > /sb
EOF
RUN ["/bin/sh", "-c", "echo exec form > /ex"]
ENTRYPOINT ["/bin/echo"]
VOLUME /data /logs
`,
    });
    writeFileSync(join(ctx, "plain.gz"), gzipSync("not a tarball\n"));
    assert.equal(run("tar", ["-C", src, "-cf", join(ctx, "t.tar"), "member", "tdir"]).status, 0);
    assert.equal(run("tar", ["-C", src, "-czf", join(ctx, "t.tar.gz"), "member", "tdir"]).status, 0);
    const r = image(["build", "-t", "multi", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /RUN false/); // stage "unused" isn't needed
    assert.ok(lstatSync(img("multi", "fifo")).isFIFO(), "a stage's FIFO is one in the next stage");
    assert.doesNotMatch(r.stderr, /warning: .*fifo/);
    assert.equal(text(img("multi", "x")), "built\n");
    // The stage's /out/leak -> /etc/passwd is the stage's own passwd, not the host's.
    assert.equal(text(img("multi", "leak")), "root:x:0:0:root:/root:/bin/sh\n");
    for (const d of ["t", "tgz"]) {
      assert.equal(text(img("multi", d, "member")), "M\n");
      assert.equal(text(img("multi", d, "tdir/x")), "X\n");
    }
    assert.deepEqual(readFileSync(img("multi", "plain.gz")), readFileSync(join(ctx, "plain.gz")));
    assert.equal(text(img("multi", "heredoc.txt")), "value=arg\n");
    assert.equal(text(img("multi", "hr")), "heredoc run arg\n");
    assert.equal(text(img("multi", "lit")), "literal $V\n");
    assert.match(text(img("multi", "sb")), /^shebang \/\.ch-run-heredoc\.\d+\n$/);
    assert.deepEqual(
      readdirSync(img("multi")).filter((n) => n.startsWith(".ch-run")),
      [],
    );
    assert.equal(text(img("multi", "ex")), "exec form\n");
    // FROM a stage: its metadata, and ENTRYPOINT resets the CMD it inherits.
    const m = meta("multi");
    assert.deepEqual([m.entrypoint, m.cmd, m.volumes], [["/bin/echo"], [], ["/data", "/logs"]]);
    assert.deepEqual(image(["list"]).stdout, "bb:latest\nbuilt:latest\nmulti:latest\n");
    assert.deepEqual(leftovers(), []);
  });

  it("--target STAGE builds that stage, and only the stages it needs", () => {
    const df = `FROM bb AS base
RUN echo base > /base
FROM bb AS tool
RUN echo tool > /tool
FROM base AS dev
COPY --from=tool /tool /tool
RUN touch ${witness}/target-dev
LABEL stage=dev
FROM base AS never
RUN touch ${witness}/target-never
FROM dev
RUN touch ${witness}/target-last
`;
    const r = image(["build", "--target", "dev", "-t", "targeted", "-f", "-", dir], { input: df });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual([text(img("targeted", "base")), text(img("targeted", "tool"))], ["base\n", "tool\n"]);
    assert.ok(existsSync(join(witness, "target-dev")));
    assert.equal(existsSync(join(witness, "target-never")), false);
    assert.equal(existsSync(join(witness, "target-last")), false);
    assert.deepEqual(meta("targeted").labels, { stage: "dev" });
    assert.match(r.stderr, /grown in 8 instructions( \(\d cached\))?: targeted:latest/);
    const bad = image(["build", "--target", "nosuch", "-t", "targeted2", "-f", "-", dir], { input: df });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /error: target stage "nosuch" could not be found /);
    assert.equal(existsSync(img("targeted2")), false);
  });

  it("FROM an image built before: its WORKDIR, SHELL and ENV from ch/metadata.json", () => {
    const r = image(["build", "-t", "child", "-f", "-", dir], {
      input: 'FROM built\nRUN pwd > /p && echo "$E2" >> /p && echo $- >> /p\n',
    });
    assert.equal(r.status, 0, r.stderr);
    const [cwd, e2, flags] = text(img("child", "p")).split("\n");
    assert.deepEqual([cwd, e2], ["/work/sub", "two words"]);
    assert.match(flags, /e/); // SHELL ["/bin/sh", "-ec"]
    assert.deepEqual(meta("child").cmd, ["/bin/sh", "-ec", "echo hi"]);
  });

  it("FROM scratch: COPY into nothing; the image gets what ch-run needs", () => {
    const ctx = context("ctx7", { "a.txt": "A\n" });
    const noShell = image(["build", "-t", "scratchy", "-f", "-", ctx], { input: "FROM scratch\nRUN true\n" });
    assert.equal(noShell.status, 1);
    assert.match(noShell.stderr, /error: <stdin>:2: RUN: command exited with status 49 \(could not be executed\): RUN true /);
    const r = image(["build", "-t", "scratchy", "-f", "-", ctx], { input: "FROM scratch\nCOPY a.txt /\n" });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(text(img("scratchy", "a.txt")), "A\n");
    for (const d of ["dev", "proc", "sys", "tmp", "etc", "mnt/0"]) assert.ok(lstatSync(img("scratchy", d)).isDirectory(), d);
    assert.deepEqual(meta("scratchy").env, {
      PATH: "/ch/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      TAR_OPTIONS: "--no-same-owner",
    });
  });

  it("a failing RUN names FILE:LINE and the exit status; the tag in storage is untouched", () => {
    const before = text(img("built", "ch/metadata.json"));
    const r = image(["build", "--force=none", "-t", "built", "-f", "-", dir], {
      input: "FROM bb\nRUN touch /new\nRUN exit 7\nRUN touch /never\n",
    });
    assert.equal(r.status, 1);
    assert.doesNotMatch(r.stderr, /root emulation/);
    assert.match(r.stderr, ERROR);
    assert.match(r.stderr, /error: <stdin>:3: RUN: command exited with status 7: RUN exit 7 /);
    assert.doesNotMatch(r.stderr, /touch \/never/);
    assert.equal(text(img("built", "ch/metadata.json")), before);
    assert.equal(existsSync(img("built", "new")), false);
    assert.equal(text(img("built", "work/out.txt")), "hi one two words from-image\n");
    assert.deepEqual(leftovers(), []);
  });

  it("a RUN whose command exits 31 or 49 (ch-run's own statuses) says the command's status; a ch-run failure says so", () => {
    for (const status of [31, 49]) {
      const r = image(["build", "-t", "st", "-f", "-", dir], { input: `FROM bb\nRUN exit ${status}\n` });
      assert.equal(r.status, 1);
      assert.match(r.stderr, new RegExp(`error: <stdin>:2: RUN: command exited with status ${status}: RUN exit ${status} `));
      assert.doesNotMatch(r.stderr, /ch-run failed|could not be executed/);
    }
    const missing = image(["build", "-t", "st", "-f", "-", dir], { input: 'FROM bb\nRUN ["/nowhere"]\n' });
    assert.match(
      missing.stderr,
      /error: <stdin>:2: RUN: command exited with status 49 \(could not be executed\): RUN \["\/nowhere"\] /,
    );
    // ch-run fails before the command: its working directory is gone.
    const gone = image(["build", "-t", "st", "-f", "-", dir], { input: "FROM bb\nWORKDIR /w\nRUN rmdir /w\nRUN true\n" });
    assert.equal(gone.status, 1);
    assert.match(gone.stderr, /ch-run\[\d+\]: error: can't cd to \/w: No such file or directory/);
    assert.match(gone.stderr, /error: <stdin>:4: RUN: ch-run failed \(status 31\), the command did not start: RUN true /);
  });

  it("RUN sees the stage's variables only: not the host's XDG_* or TMPDIR that ch-run itself needs", () => {
    const xdg = join(dir, "xdg");
    mkdirSync(xdg, { mode: 0o700 });
    const r = image(["build", "-t", "envs", "-f", "-", dir], {
      input:
        // biome-ignore lint/suspicious/noTemplateCurlyInString: Dockerfile text, not a template
        'FROM bb\nENV XDG_RUNTIME_DIR=/own\nRUN echo "${XDG_CACHE_HOME-unset} ${TMPDIR-unset} $XDG_RUNTIME_DIR $HOME $HOST_ONLY" > /env.txt\n',
      env: { XDG_CACHE_HOME: xdg, TMPDIR: "/tmp", XDG_RUNTIME_DIR: xdg, HOST_ONLY: "leaked" },
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(text(img("envs", "env.txt")), "unset unset /own /root \n"); // $HOST_ONLY: empty
  });

  it("COPY without a context (Dockerfile as CONTEXT -) says so", () => {
    const r = image(["build", "-t", "nocontext", "-"], { input: "FROM bb\nCOPY a /a\n" });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /error: <stdin>:2: COPY: no build context \(the Dockerfile came from standard input\) /);
    const t = image(["build", "-"], { input: "FROM bb\n" });
    assert.equal(t.status, 1);
    assert.match(t.stderr, /-t TAG needed when CONTEXT is -/);
  });

  it("removes the partial image a killed build of the same name left (dead PID, this host)", () => {
    const dead = run("sh", ["-c", "echo $$"]).stdout.trim();
    const left = join(storage, "img", `after-kill+latest.partial-${hostname()}.${dead}`);
    mkdirSync(join(left, "0/sub"), { recursive: true });
    const r = image(["build", "-t", "after-kill", "-f", "-", dir], { input: "FROM bb\n" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /removing leftover of an earlier run: /);
    assert.equal(existsSync(left), false);
    assert.deepEqual(leftovers(), []);
  });

  it("RUN --mount is refused, not ignored", () => {
    const r = image(["build", "-t", "mount", "-f", "-", dir], { input: "FROM bb\nRUN --mount=type=cache,target=/c true\n" });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /error: <stdin>:2: RUN --mount: not supported yet in this version /);
    assert.equal(existsSync(img("mount")), false);
  });

  it("a syntax error runs nothing and writes nothing", () => {
    const r = image(["build", "-t", "syntax", "-f", "-", dir], {
      input: `FROM bb\nRUN touch ${witness}/syntax\nCOPY --form=x a b\n`,
    });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /error: <stdin>:3: unknown flag: form /);
    assert.doesNotMatch(r.stderr, /FROM bb/);
    assert.equal(existsSync(join(witness, "syntax")), false);
    assert.equal(existsSync(img("syntax")), false);
  });
});

describe("ch-image build and a registry (loopback docker-registry)", () => {
  let reg: Registry;
  before(async () => {
    reg = await startRegistry(join(dir, "registry"));
  });
  after(async () => {
    await reg?.stop();
  });

  it("FROM an image not in storage: pulls it from its registry, then builds", () => {
    const ref = `${reg.host}/bb:1`;
    const p = image(["push", "bb", ref]);
    assert.equal(p.status, 0, p.stderr);
    const r = image(["build", "-t", "pulled", "-f", "-", dir], { input: `FROM ${ref}\nRUN echo ok > /ok\n` });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /base image not in storage, pulling: 127\.0\.0\.1:\d+\/bb:1/);
    assert.equal(text(img("pulled", "ok")), "ok\n");
    assert.match(image(["list"]).stdout, /^127\.0\.0\.1:\d+\/bb:1$/m);
    assert.deepEqual(leftovers(), []);
  });

  it("push of a built image, then pull under another name, keeps all of ch/metadata.json and ch/environment", () => {
    const r = image(["build", "-t", "allmeta", "-f", "-", dir], {
      input: `FROM bb
ENV A=1 B="two words"
WORKDIR /w
RUN touch /w/made
SHELL ["/bin/sh", "-ec"]
LABEL org.example.a=x "org.example.b"="y z"
USER nobody:nogroup
VOLUME ["/zdata", "/adata"]
ENTRYPOINT ["/bin/echo", "entry"]
CMD ["arg1", "arg2"]
EXPOSE 8080 53/UDP 7000-7001
ARG SIG=SIGUSR1
STOPSIGNAL $SIG
HEALTHCHECK --interval=1m30s --timeout=0.5s --retries=3 CMD ["/bin/true", "x"]
ONBUILD RUN echo triggered > /trig
RUN true
ENV C=3
`,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /warning: <stdin>:7: USER nobody:nogroup: recorded for ch-run; RUN still runs as root/);
    const ref = `${reg.host}/allmeta:v1`;
    const p = image(["push", "allmeta", ref]);
    assert.equal(p.status, 0, p.stderr);
    const back = image(["pull", ref, "back:again"]);
    assert.equal(back.status, 0, back.stderr);
    const built = meta("allmeta");
    const pulled = JSON.parse(text(join(storage, "img", "back+again", "ch", "metadata.json")));
    // What the build recorded is there to lose.
    assert.deepEqual(built.shell, ["/bin/sh", "-ec"]);
    assert.equal(built.user, "nobody:nogroup");
    assert.deepEqual(built.volumes, ["/adata", "/zdata"]);
    assert.deepEqual(
      [built.entrypoint, built.cmd],
      [
        ["/bin/echo", "entry"],
        ["arg1", "arg2"],
      ],
    );
    assert.deepEqual(built.labels, { "org.example.a": "x", "org.example.b": "y z" });
    assert.equal(built.cwd, "/w");
    assert.deepEqual(built.expose, ["53/udp", "7000/tcp", "7001/tcp", "8080/tcp"]);
    assert.equal(built.stopsignal, "SIGUSR1");
    assert.deepEqual(built.healthcheck, { Test: ["CMD", "/bin/true", "x"], Interval: 90e9, Timeout: 0.5e9, Retries: 3 });
    assert.deepEqual(built.onbuild, ["RUN echo triggered > /trig"]);
    const keys = ["arch", "cwd", "env", "entrypoint", "cmd", "labels", "shell", "user", "volumes"];
    for (const k of [...keys, "expose", "stopsignal", "healthcheck", "onbuild"]) assert.deepEqual(pulled[k], built[k], k);
    assert.deepEqual(Object.keys(pulled).sort(), Object.keys(built).sort());
    // History: every entry, in order, with its time and instruction; pushed as one layer, only
    // the last entry that made a layer says so (Docker refuses more non-empty entries than layers).
    const strip = (h: Record<string, unknown>[]) => h.map(({ empty_layer: _, ...rest }) => rest);
    assert.equal(pulled.history.length, built.history.length);
    assert.deepEqual(strip(pulled.history), strip(built.history));
    const made = (h: Record<string, unknown>[]) => h.flatMap((e, i) => (e.empty_layer ? [] : [i]));
    assert.deepEqual(made(pulled.history), [made(built.history).at(-1)]);
    assert.deepEqual(pulled.history.at(-1), built.history.at(-1)); // ENV C=3: empty in both
    assert.equal(text(join(storage, "img", "back+again", "ch", "environment")), text(img("allmeta", "ch", "environment")));
    assert.match(text(img("allmeta", "ch", "environment")), /^B=two words$/m);
    // VOLUME mount points are made on pull.
    for (const v of ["adata", "zdata"]) assert.ok(lstatSync(join(storage, "img", "back+again", v)).isDirectory(), v);
    // And the pulled image builds on as the built one would: its SHELL and WORKDIR.
    const child = image(["build", "-t", "fromback", "-f", "-", dir], { input: "FROM back:again\nRUN echo $- > flags\n" });
    assert.equal(child.status, 0, child.stderr);
    assert.match(text(img("fromback", "w/flags")), /e/);
    assert.equal(meta("fromback").user, "nobody:nogroup");
    // Its ONBUILD triggers: not run, said so, and not inherited (as Docker: they fire once).
    assert.match(
      child.stderr,
      /warning: <stdin>:1: FROM back:again: its ONBUILD triggers are not run in this version: RUN echo triggered > \/trig$/m,
    );
    assert.equal(existsSync(img("fromback", "trig")), false);
    assert.deepEqual(meta("fromback").onbuild, []);
    assert.equal(meta("fromback").stopsignal, "SIGUSR1");
  });
});

describe("ch-image build: ADD of a URL (a server on 127.0.0.1)", () => {
  let server: Server;
  let base: string;
  const hits = new Map<string, number>();
  const LM = "Wed, 21 Oct 2015 07:28:00 GMT";
  const cachedBody = Buffer.from("cache me\n");
  const cachedSum = createHash("sha256").update(cachedBody).digest("hex");
  let tarBody: Buffer;
  before(async () => {
    const src = join(dir, "urltar");
    mkdirSync(src);
    writeFileSync(join(src, "member"), "M\n");
    assert.equal(run("tar", ["-C", src, "-cf", join(dir, "url.tar"), "member"]).status, 0);
    tarBody = readFileSync(join(dir, "url.tar"));
    server = createServer((req, res) => {
      const path = req.url ?? "";
      hits.set(path, (hits.get(path) ?? 0) + 1);
      if (path === "/files/hello.txt") res.writeHead(200, { "Last-Modified": LM }).end("hello\n");
      else if (path === "/redir") res.writeHead(302, { Location: "/files/hello.txt" }).end();
      else if (path === "/t.tar") res.writeHead(200).end(tarBody);
      else if (path === "/cached.bin") res.writeHead(200).end(cachedBody);
      else if (path === "/flaky" && hits.get(path) === 1) res.writeHead(503).end("busy\n");
      else if (path === "/flaky") res.writeHead(200).end("second try\n");
      else if (path === "/cut") {
        // Says 100 bytes, sends 5, hangs up: never a file of 5 bytes.
        res.writeHead(200, { "Content-Length": "100" });
        res.write("short");
        res.socket?.destroy();
      } else res.writeHead(404).end("no such file\n");
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => server?.close());

  const build = (tag: string, dockerfile: string) => {
    const ctx = mkdtempSync(join(dir, "urlctx-"));
    writeFileSync(join(ctx, "Dockerfile"), dockerfile);
    writeFileSync(join(ctx, "local.txt"), "L\n");
    return chImage(["build", "-t", tag, ctx], chEnv({ extra: { CH_IMAGE_STORAGE: storage } }));
  };
  const dlcache = () => (existsSync(join(storage, "dlcache")) ? readdirSync(join(storage, "dlcache")).sort() : []);

  it("downloads, never unpacks; names as Docker; mode 600 and Last-Modified; caches only what has a --checksum", async () => {
    const top = readdirSync(storage).sort();
    const cacheBefore = dlcache();
    const r = await build(
      "urls",
      `FROM bb
ADD ${base}/files/hello.txt /dl/
ADD ${base}/files/hello.txt /named.txt
ADD ${base}/redir /r/
ADD --chmod=644 ${base}/t.tar /tars/
ADD --checksum=sha256:${cachedSum} ${base}/cached.bin /c
WORKDIR /w
ADD ${base}/files/hello.txt ${base}/cached.bin ./
`,
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(text(img("urls", "dl/hello.txt")), "hello\n");
    assert.equal(lstatSync(img("urls", "dl/hello.txt")).mode & 0o7777, 0o600);
    assert.equal(lstatSync(img("urls", "dl/hello.txt")).mtime.getTime(), Date.parse(LM));
    assert.equal(text(img("urls", "named.txt")), "hello\n");
    assert.equal(text(img("urls", "r/redir")), "hello\n"); // named by the URL given, not where it led
    assert.deepEqual(readFileSync(img("urls", "tars/t.tar")), tarBody);
    assert.equal(existsSync(img("urls", "tars/member")), false);
    assert.equal(lstatSync(img("urls", "tars/t.tar")).mode & 0o7777, 0o644);
    assert.equal(text(img("urls", "c")), "cache me\n");
    assert.deepEqual(readdirSync(img("urls", "w")).sort(), ["cached.bin", "hello.txt"]);
    assert.deepEqual(
      readdirSync(img("urls")).filter((n) => n.startsWith(".ch-download")),
      [],
    );
    // The one download with a checksum is cached, by its digest; nothing new at the top.
    assert.deepEqual(
      dlcache().filter((n) => !cacheBefore.includes(n)),
      [`sha256-${cachedSum}`],
    );
    assert.deepEqual(readdirSync(storage).sort(), top);
    assert.deepEqual(leftovers(), []);
    // Built again: the checksummed file from the cache, the others downloaded again.
    const n = hits.get("/cached.bin");
    const again = await build(
      "urls2",
      `FROM bb\nADD --checksum=sha256:${cachedSum} ${base}/cached.bin /c\nADD ${base}/files/hello.txt /h\n`,
    );
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stderr, /Dockerfile:2: ADD: using cached download of http:/);
    assert.equal(hits.get("/cached.bin"), n);
    assert.equal(text(img("urls2", "c")), "cache me\n");
    // A cache entry that isn't what its name says is not used: downloaded again.
    writeFileSync(join(storage, "dlcache", `sha256-${cachedSum}`), "tampered\n");
    // (The ENV makes the ADD a build cache miss, so that it runs.)
    const fixed = await build("urls3", `FROM bb\nENV T=3\nADD --checksum=sha256:${cachedSum} ${base}/cached.bin /c\n`);
    assert.equal(fixed.status, 0, fixed.stderr);
    assert.match(fixed.stderr, /warning: \S+:3: ADD: cached download of \S+ is wrong; downloading it again/);
    assert.equal(text(img("urls3", "c")), "cache me\n");
    assert.equal(hits.get("/cached.bin"), (n ?? 0) + 1);
  });

  it("a URL with credentials is refused before it is printed; HTTPS redirected to HTTP is refused", async () => {
    const u = new URL(`${base}/files/hello.txt`);
    u.username = "user";
    u.password = "s3cret";
    const cred = await build("cred", `FROM bb\nADD ${u.href} /x\n`);
    assert.equal(cred.status, 1);
    assert.match(cred.stderr, /Dockerfile:2: ADD: credentials in a URL are not supported: http:\/\/127\.0\.0\.1:\d+/);
    assert.doesNotMatch(cred.stdout + cred.stderr, /s3cret/);
    // An HTTPS server (the test CA, trusted through SSL_CERT_FILE) that redirects to plain HTTP.
    const ca = makeCA(join(dir, "url-ca"));
    const tlsServer = createHttpsServer({ cert: readFileSync(ca.serverCert), key: readFileSync(ca.serverKey) }, (_req, res) =>
      res.writeHead(302, { Location: `${base}/files/hello.txt` }).end(),
    );
    await new Promise<void>((r) => tlsServer.listen(0, "127.0.0.1", r));
    try {
      const https = `https://127.0.0.1:${(tlsServer.address() as AddressInfo).port}/down`;
      const ctx = mkdtempSync(join(dir, "urlctx-"));
      writeFileSync(join(ctx, "Dockerfile"), `FROM bb\nADD ${https} /x\n`);
      const env = chEnv({ caBundle: ca.bundle, extra: { CH_IMAGE_STORAGE: storage } });
      const down = await chImage(["build", "-t", "down", ctx], env);
      assert.equal(down.status, 1, down.stderr);
      assert.match(
        down.stderr,
        /ADD: can't download https:\S+: redirected from HTTPS to plain HTTP \(http:\S+\); use --tls-no-verify/,
      );
      const allowed = await chImage(["--tls-no-verify", "build", "-t", "down", ctx], env);
      assert.equal(allowed.status, 0, allowed.stderr);
      assert.equal(text(img("down", "x")), "hello\n");
    } finally {
      tlsServer.close();
    }
  });

  it("a --checksum mismatch and an HTTP 404 are errors naming the line; nothing is kept", async () => {
    const cacheBefore = dlcache();
    const wrong = "0".repeat(64);
    const bad = await build("badsum", `FROM bb\nADD --checksum=sha256:${wrong} ${base}/cached.bin /c\n`);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, ERROR);
    assert.match(
      bad.stderr,
      new RegExp(
        `error: \\S+/Dockerfile:2: ADD: --checksum mismatch for ${base}/cached.bin: expected sha256:${wrong}, got sha256:${cachedSum} `,
      ),
    );
    assert.equal(existsSync(img("badsum")), false);
    assert.deepEqual(dlcache(), cacheBefore);
    const missing = await build("missing", `FROM bb\nRUN true\nADD ${base}/nope.txt /n\n`);
    assert.equal(missing.status, 1);
    assert.match(
      missing.stderr,
      new RegExp(`error: \\S+/Dockerfile:3: ADD: can't download ${base}/nope.txt: HTTP 404 \\(no such file\\) `),
    );
    assert.equal(hits.get("/nope.txt"), 1); // not retried
    assert.equal(existsSync(img("missing")), false);
    // A 5xx is retried, as registry requests are; a body cut short is retried, then an error.
    const flaky = await build("flaky", `FROM bb\nADD ${base}/flaky /f\n`);
    assert.equal(flaky.status, 0, flaky.stderr);
    assert.match(flaky.stderr, /HTTP 503; retrying/);
    assert.equal(text(img("flaky", "f")), "second try\n");
    const cut = await build("cut", `FROM bb\nADD ${base}/cut /c\n`);
    assert.equal(cut.status, 1);
    assert.match(cut.stderr, /error: \S+\/Dockerfile:2: ADD: downloading \S+\/cut: socket hang up \(gave up after 4 tries\)/);
    assert.equal(hits.get("/cut"), 4);
    assert.equal(existsSync(img("cut")), false);
    assert.deepEqual(leftovers(), []);
  });

  it("refuses COPY of a URL, --checksum of a local file, a bad checksum, ADD from git", async () => {
    for (const [df, msg] of [
      [`COPY ${base}/files/hello.txt /x`, /Dockerfile:2: COPY: source can't be a URL for COPY/],
      [
        `ADD --checksum=sha256:${cachedSum} local.txt /x`,
        /Dockerfile:2: ADD --checksum: only for http\(s\) URL sources, not: local\.txt/,
      ],
      [`ADD --checksum=md5:abc ${base}/cached.bin /x`, /Dockerfile:2: ADD: --checksum: invalid digest/],
      ["ADD https://example.com/repo.git /x", /Dockerfile:2: ADD from a git repository: not supported yet/],
    ] as const) {
      const r = await build("refused", `FROM bb\n${df}\n`);
      assert.equal(r.status, 1, df);
      assert.match(r.stderr, msg, df);
    }
    assert.equal(existsSync(img("refused")), false);
  });
});

describe("ch-image build against hostile input", () => {
  it("refuses COPY sources outside the context: ../x, symlinks out of it, globs matching them", () => {
    writeFileSync(join(dir, "outside"), "secret\n");
    const ctx = context("ctx3", {
      "a.txt": "A\n",
      "link-out": ["link", join(dir, "outside")],
      "link-up": ["link", "../.."],
      "dir/up": ["link", "../../outside"],
    });
    for (const src of ["../outside", "link-out", "link-up/outside", "link-*", "dir/up", "dir/../../outside"]) {
      const r = image(["build", "-t", "hostile", "-f", "-", ctx], { input: `FROM bb\nCOPY ${src} /x/\n` });
      assert.equal(r.status, 1, src);
      assert.match(r.stderr, /error: <stdin>:2: COPY: can't copy from outside the build context: /, src);
    }
    assert.equal(existsSync(img("hostile")), false);
    assert.deepEqual(leftovers(), []);
  });

  it("confines destinations to the image: symlinks in it are followed inside it, or replaced", () => {
    const hostDir = join(dir, "hostdir");
    const hostFile = join(dir, "hostfile");
    mkdirSync(hostDir);
    writeFileSync(hostFile, "host\n");
    const ctx = context("ctx4", { "a.txt": "A\n", "tree/evil/y": "Y\n" });
    const r = image(["build", "-t", "confined", "-f", "-", ctx], {
      input: `FROM bb
RUN busybox ln -s ${hostDir} /evil && busybox ln -s ../../../../../../../../..${hostDir} /rel && busybox ln -s ${hostFile} /evilfile
COPY a.txt /evil/
COPY a.txt /rel/a2.txt
COPY a.txt /evilfile
COPY tree/ /
RUN rm -rf /ch && busybox ln -s ${hostDir} /ch
`,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readdirSync(hostDir), []);
    assert.equal(text(hostFile), "host\n");
    assert.deepEqual(readdirSync(img("confined", hostDir)).sort(), ["a.txt", "a2.txt", "y"]);
    assert.equal(lstatSync(img("confined", "evilfile")).isFile(), true);
    assert.equal(text(img("confined", "evilfile")), "A\n");
    // ch/ a symlink out of the image: replaced by a directory, the metadata written there.
    assert.equal(lstatSync(img("confined", "ch")).isDirectory(), true);
    assert.equal(meta("confined").cwd, "/");
  });

  it("never copies the storage directory into the image when it is in the context", () => {
    const ctx = context("ctx6", { "a.txt": "A\n" });
    const env = { ...process.env, CH_IMAGE_STORAGE: join(ctx, "st") };
    assert.equal(run(IMAGE, ["import", join(dir, "bb.tar"), "bb"], { env }).status, 0);
    const r = run(IMAGE, ["build", "-t", "self", "-f", "-", ctx], { env, input: "FROM bb\nCOPY . /all/\n" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /warning: not copying the storage directory: st$/m);
    assert.deepEqual(readdirSync(join(ctx, "st/img/self+latest/all")), ["a.txt"]);
  });

  it("reads the base image's ch/ files inside it: a symlink to a host file is not followed out", () => {
    const secret = join(dir, "hostsecret");
    writeFileSync(secret, "SECRET=leak\n");
    const evil = busyboxImage(dir, "evilbb");
    unlinkSync(join(evil, "ch/environment"));
    symlinkSync(secret, join(evil, "ch/environment"));
    assert.equal(run("tar", ["-C", evil, "-cf", join(dir, "evilbb.tar"), "."]).status, 0);
    assert.equal(image(["import", join(dir, "evilbb.tar"), "evilbb"]).status, 0);
    const r = image(["build", "-t", "noleak", "-f", "-", dir], { input: "FROM evilbb\nENV X=1\n" });
    assert.equal(r.status, 0, r.stderr);
    const m = meta("noleak");
    assert.equal(m.env.SECRET, undefined);
    assert.equal(m.env.X, "1");
    assert.doesNotMatch(text(img("noleak", "ch/environment")), /SECRET/);
  });

  it("ADD refuses a tarball with a member outside the destination", () => {
    const ctx = context("ctx5", { "sub/f": "F\n" });
    const t = run("tar", ["-C", join(ctx, "sub"), "-cPf", join(ctx, "bad.tar"), "../sub/f"]);
    assert.equal(t.status, 0, t.stderr);
    const r = image(["build", "-t", "badtar", "-f", "-", ctx], { input: "FROM bb\nADD bad.tar /x/\n" });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /refusing unsafe member "\.\.\/sub\/f"/);
    assert.equal(existsSync(img("badtar")), false);
  });
});
