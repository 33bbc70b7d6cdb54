// The linux-arm64 build (npm run build -- --arch arm64: dist/linux-arm64/), run on this machine
// under Debian's qemu-user-static, named explicitly (binfmt_misc may be missing here) with the
// aarch64 libraries of the cross toolchain's packages: it answers as every program, converts an
// image (xz through a pipe made with koffi's linux-arm64 module), and pulls from a registry,
// picking arm64 from an index. qemu-user can't emulate clone(2) into new namespaces, so a
// container launch is tried and, failing that way, reported as skipped with the reason.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, cleanup, DIST, type Result, run, tmp } from "../helpers.ts";
import { busyboxLayer, layerFromMembers, makeImage, makeIndex, Pusher } from "../registry/fixtures.ts";
import { type Registry, startRegistry } from "../registry/registry.ts";

const ARM = join(DIST, "linux-arm64");
const QEMU = "/usr/bin/qemu-aarch64-static";
const SYSROOT = "/usr/aarch64-linux-gnu";
const PROGRAMS = ["ch-run", "ch-image", "ch-convert", "ch-tar2dir", "ch-fromhost", "ch-checkns"];
const missing = !existsSync(join(ARM, "charliecloud"))
  ? "dist/linux-arm64 not built (npm run build -- --arch arm64)"
  : !existsSync(QEMU)
    ? `${QEMU} missing (apt-get install qemu-user-static)`
    : !existsSync(join(SYSROOT, "lib/ld-linux-aarch64.so.1"))
      ? `${SYSROOT} missing (apt-get install gcc-aarch64-linux-gnu)`
      : false;

let dir: string;
let reg: Registry | undefined;

/** An environment of the test's own: koffi's module goes to $TMPDIR, storage under dir. */
const env = () => ({ PATH: "/usr/bin:/bin", HOME: dir, USER: "u", TMPDIR: join(dir, "tmp"), QEMU_LD_PREFIX: SYSROOT });

/** PROGRAM ARGS of the arm64 build under qemu (asynchronous: the registry is in this process's
 * reach only through its own process, but a pull takes a while and the test shouldn't block). */
function arm(program: string, args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    const c = spawn(QEMU, [join(ARM, program), ...args], { env: env(), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    c.stdout.on("data", (d: Buffer) => {
      stdout += d;
    });
    c.stderr.on("data", (d: Buffer) => {
      stderr += d;
    });
    const timer = setTimeout(() => c.kill("SIGKILL"), 180_000);
    c.on("close", (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

before(() => {
  dir = tmp("ch-arm64-");
  mkdirSync(join(dir, "tmp"));
});
after(async () => {
  await reg?.stop();
  if (dir) cleanup(dir);
});

describe("linux-arm64 build under qemu-user", { skip: missing }, () => {
  it("is an aarch64 executable that answers --version and --help as every program", async () => {
    assert.equal(readFileSync(join(ARM, "charliecloud")).readUInt16LE(18), 183, "e_machine EM_AARCH64");
    const results = await Promise.all(PROGRAMS.map((p) => arm(p, ["--version"])));
    results.forEach((v, i) => {
      assert.equal(v.status, 0, `${PROGRAMS[i]}: ${v.stderr}`);
      if (PROGRAMS[i] === "ch-run") {
        // As Charliecloud's ch-run: the bare version, on stderr.
        assert.match(v.stderr, /^\d+\.\d+\.\d+\n$/, "no warning (a V8 code cache made on x86-64 would be rejected, saying so)");
        return;
      }
      assert.equal(v.stderr, "", "no warning (a V8 code cache made on x86-64 would be rejected, saying so)");
      assert.match(v.stdout, new RegExp(`^${PROGRAMS[i]} \\(Charliecloud\\) \\d+\\.\\d+\\.\\d+\\n$`));
    });
    const h = await arm("ch-image", ["--help"]);
    assert.equal(h.status, 0, h.stderr);
    assert.match(h.stdout, /^Usage: ch-image /);
    const n = await arm("charliecloud", ["ch-run", "--help"]);
    assert.match(n.stdout, /^Usage: ch-run /);
  });

  it("converts an image, through koffi's linux-arm64 module (tar.xz to a directory)", async () => {
    const img = busyboxImage(dir, "conv-src");
    const xz = join(dir, "conv.tar.xz");
    assert.equal(run("tar", ["-cJf", xz, "-C", img, "."]).status, 0);
    const out = join(dir, "conv-out");
    const r = await arm("ch-convert", [xz, out]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(join(out, "bin/busybox")).equals(readFileSync(join(img, "bin/busybox"))));
    assert.equal(readFileSync(join(out, "ch/environment"), "utf8"), readFileSync(join(img, "ch/environment"), "utf8"));
    // The module it loaded: the arm64 one, written where node-local modules go.
    const mods = readdirSync(join(dir, "tmp", `charliecloud-${process.geteuid?.()}`)).filter((f) => f.endsWith(".node"));
    assert.equal(mods.length, 1);
    assert.match(mods[0], /^koffi-[\d.]+-arm64-[0-9a-f]{16}\.node$/);
  });

  it("pulls from a registry, picking arm64 from an index", async () => {
    reg = await startRegistry(join(dir, "reg"));
    const bb = busyboxLayer(dir);
    const forArch = (a: string) =>
      makeImage({
        kind: "oci",
        layers: [bb, layerFromMembers([{ path: "arch.txt", body: `${a}\n` }])],
        architecture: a,
        variant: a === "arm64" ? "v8" : undefined,
        config: { Cmd: ["/bin/sh"] },
      });
    await new Pusher(reg).index("multi", "1", makeIndex("oci", [forArch("amd64"), forArch("arm64")]));
    const st = join(dir, "storage");
    const ref = `${reg.host}/multi:1`;
    const r = await arm("ch-image", ["-s", st, "pull", ref]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout + r.stderr, /arm64/);
    const img = join(st, "img", ref.replaceAll("/", "%").replaceAll(":", "+"));
    assert.equal(readFileSync(join(img, "arch.txt"), "utf8"), "arm64\n");
    assert.ok(existsSync(join(img, "bin/busybox")));
  });

  it("launches a container, where qemu-user can", async (t) => {
    const img = busyboxImage(dir, "run-img");
    const r = await arm("ch-run", [img, "--", "/bin/echo", "hello from arm64"]);
    if (r.status !== 0 && /can't create the container's user namespace .*: Invalid argument/.test(r.stderr)) {
      // qemu-user refuses clone(2) with namespace flags (EINVAL): no container under it.
      t.skip("qemu-user can't create user and mount namespaces (clone: EINVAL); run on aarch64 hardware");
      return;
    }
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "hello from arm64\n");
  });
});
