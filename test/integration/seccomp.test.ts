// Root emulation, as an ordinary user: ch-run --seccomp makes chown(2), mknod(2) of a device and
// kexec_load(2) succeed without effect, refuses x32 calls, lets a FIFO be made for real; without
// it they fail. ch-image build passes --seccomp to RUN by default (--force=seccomp), not with
// --force=none, and adds --force-cmd's arguments (apt-get's by default).
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { seccompFilter } from "../../src/container/seccomp.ts";
import { hostArch } from "../../src/sys/arch.ts";
import { loadLibc } from "../../src/sys/libc.ts";
import { probe } from "../../src/sys/probe.ts";
import { busyboxImage, CH_RUN, chRun, cleanup, DIST, ERROR_LINE, ROOT, run, tmp } from "../helpers.ts";

let dir: string;
let img: string;
let storage: string;

before(async () => {
  await loadLibc();
  dir = tmp("ch-seccomp-");
  img = busyboxImage(dir);
  mkdirSync(join(img, "w"));
  chmodSync(join(img, "w"), 0o777);
  const cc = run("gcc", [
    "-static",
    "-O2",
    "-o",
    join(img, "usr/bin/seccomp-check"),
    join(ROOT, "test/fixtures/seccomp-check.c"),
  ]);
  assert.equal(cc.status, 0, cc.stderr);
  const cd = run("gcc", ["-O2", "-o", join(dir, "deny-seccomp"), join(ROOT, "test/fixtures/deny-seccomp.c")]);
  assert.equal(cd.status, 0, cd.stderr);
  storage = join(dir, "storage");
});
after(() => cleanup(dir));

const uid = process.geteuid?.() ?? 0;

describe("ch-run --seccomp", () => {
  it("chown(2) succeeds without effect; without --seccomp it fails", () => {
    const sh = "touch /w/x && chown 1234:1234 /w/x";
    const r = chRun(["--seccomp", "-w", img, "--", "sh", "-c", sh]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(join(img, "w/x")).uid, uid, "nothing changed");
    const n = chRun(["-w", img, "--", "sh", "-c", sh]);
    assert.notEqual(n.status, 0);
    assert.match(n.stderr, /chown: \/w\/x: (Invalid argument|Operation not permitted)/);
  });

  it("fakes mknod(2) of a device only: a FIFO is made", () => {
    const r = chRun(["--seccomp", "-w", img, "--", "sh", "-c", "mknod /w/c c 1 3 && mknod /w/p p"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(existsSync(join(img, "w/c")), false, "no device made");
    assert.ok(statSync(join(img, "w/p")).isFIFO());
    const n = chRun(["-w", img, "--", "mknod", "/w/c2", "c", "1", "3"]);
    assert.notEqual(n.status, 0);
  });

  it("kexec_load(2) returns 0 as a self-test; x32 calls refused with EPERM", () => {
    const r = chRun(["--seccomp", "-w", img, "--", "seccomp-check", "/w/c3"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^kexec_load 0 0$/m);
    assert.match(r.stdout, /^mknod_chr 0 0$/m);
    if (hostArch() === "x64") assert.match(r.stdout, /^x32_getpid -1 1$/m);
    const n = chRun(["-w", img, "--", "seccomp-check"]);
    assert.equal(n.status, 0, n.stderr);
    assert.match(n.stdout, /^kexec_load -1 (1|38)$/m, "refused (or no kexec here) without the filter");
    if (hostArch() === "x64") assert.match(n.stdout, /^x32_getpid -1 38$|^x32_getpid \d+ 0$/m);
  });

  it("--feature=seccomp says yes; a filter the kernel refuses fails the launcher's step", () => {
    assert.equal(chRun(["--feature=seccomp"]).status, 0);
    assert.equal(
      probe((b) => b.seccomp(seccompFilter(b.arch), { what: "probe" })),
      true,
    );
    // An empty program is EINVAL: the step fails, as ch-run's would (one line, exit 31).
    assert.equal(
      probe((b) => b.seccomp(new Uint8Array(0), { what: "probe" })),
      false,
    );
  });

  it("a filter that can't be installed is ch-run's one-line error, exit 31", () => {
    // Under a filter of its own that refuses seccomp(2) with EACCES.
    const deny = (args: string[]) => run(join(dir, "deny-seccomp"), [CH_RUN, ...args]);
    const r = deny(["--seccomp", img, "--", "true"]);
    assert.equal(r.status, 31, r.stderr);
    assert.match(r.stderr, ERROR_LINE);
    assert.match(r.stderr, /error: can't install seccomp\(2\) filter for root emulation \(--seccomp\): Permission denied/);
    assert.equal(deny([img, "--", "true"]).status, 0, "the same without --seccomp works");
    assert.equal(deny(["--feature=seccomp"]).status, 1);
  });
});

describe("ch-image build: root emulation", () => {
  const IMAGE = join(DIST, "ch-image");
  const image = (args: string[]) => run(IMAGE, args, { cwd: dir, env: { ...process.env, CH_IMAGE_STORAGE: storage } });
  before(() => {
    const t = run("tar", ["-C", img, "-cf", join(dir, "bb.tar"), "."]);
    assert.equal(t.status, 0, t.stderr);
    const i = image(["import", join(dir, "bb.tar"), "bb"]);
    assert.equal(i.status, 0, i.stderr);
  });

  it("RUN chown succeeds by default (--force=seccomp), fails with --force=none", () => {
    const ctx = join(dir, "ctx-chown");
    mkdirSync(ctx);
    writeFileSync(
      join(ctx, "Dockerfile"),
      "FROM bb\nRUN echo 'nobody:x:65534:65534::/:/bin/sh' >> /etc/passwd && touch /x && chown nobody /x\nRUN seccomp-check > /check\n",
    );
    const r = image(["build", "-t", "chowned", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /root emulation/);
    const check = run("cat", [join(storage, "img/chowned+latest/check")]).stdout;
    assert.match(check, /^kexec_load 0 0$/m, "RUN ran under the filter");
    const n = image(["build", "--force=none", "-t", "chowned2", ctx]);
    assert.notEqual(n.status, 0);
    assert.match(n.stderr, /chown: \/x: (Invalid argument|Operation not permitted)/);
    assert.match(n.stderr, /error: \S*Dockerfile:2: RUN: command exited with status 1/);
  });

  it("apt-get is told to stay root; --force-cmd replaces the list; --force=none adds nothing", () => {
    const ctx = join(dir, "ctx-apt");
    mkdirSync(ctx);
    writeFileSync(
      join(ctx, "Dockerfile"),
      [
        "FROM bb",
        `RUN printf '#!/bin/sh\\necho "$0 $*" >> /args\\n' > /bin/apt-get && chmod 755 /bin/apt-get && cp /bin/apt-get /bin/foo`,
        "RUN DEBIAN_FRONTEND=noninteractive apt-get install -y hello && foo -c",
        `RUN ["apt-get", "update"]`,
        "",
      ].join("\n"),
    );
    const args = (tag: string) => run("cat", [join(storage, `img/${tag}+latest/args`)]).stdout;
    const r = image(["build", "-t", "apt1", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(
      args("apt1"),
      "/bin/apt-get -o APT::Sandbox::User=root install -y hello\n/bin/foo -c\n/bin/apt-get -o APT::Sandbox::User=root update\n",
    );
    const f = image(["build", "--force-cmd=foo,-a,--bar=baz", "-t", "apt2", ctx]);
    assert.equal(f.status, 0, f.stderr);
    assert.equal(args("apt2"), "/bin/apt-get install -y hello\n/bin/foo -a --bar=baz -c\n/bin/apt-get update\n");
    const n = image(["build", "--force=none", "-t", "apt3", ctx]);
    assert.equal(n.status, 0, n.stderr);
    assert.equal(args("apt3"), "/bin/apt-get install -y hello\n/bin/foo -c\n/bin/apt-get update\n");
  });
});

describe("ch-image build: apt-get under root emulation", () => {
  const tarball = process.env.CH_TEST_DEBIAN_IMAGE;
  const skip = tarball ? false : "CH_TEST_DEBIAN_IMAGE unset (.ci/setup-debian.sh sets it)";
  const IMAGE = join(DIST, "ch-image");
  const image = (args: string[]) =>
    run(IMAGE, args, { cwd: dir, env: { ...process.env, CH_IMAGE_STORAGE: storage }, timeout: 300_000 });

  it("RUN apt-get install of a package from Debian's mirror; with --force=none it fails", { skip }, () => {
    const i = image(["import", tarball as string, "deb"]);
    assert.equal(i.status, 0, i.stderr);
    const ctx = join(dir, "ctx-deb");
    mkdirSync(ctx);
    writeFileSync(
      join(ctx, "Dockerfile"),
      "FROM deb\nRUN apt-get update && apt-get install -y --no-install-recommends hello && hello > /hello.out\n",
    );
    const r = image(["build", "-t", "debhello", ctx]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(run("cat", [join(storage, "img/debhello+latest/hello.out")]).stdout, "Hello, world!\n");
    assert.ok(existsSync(join(storage, "img/debhello+latest/usr/bin/hello")));
    const n = image(["build", "--force=none", "-t", "debhello2", ctx]);
    assert.notEqual(n.status, 0);
    assert.match(n.stderr, /setgroups .*Operation not permitted/);
  });
});
