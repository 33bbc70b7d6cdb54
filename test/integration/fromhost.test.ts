// ch-fromhost with real host software, as an ordinary user: a small image with the host's own
// ldconfig and libc for the placement rules, --nvidia with a fake driver tree, failures that
// must leave the image as it was; then Debian's OpenMPI injected into a Debian image that has
// no MPI, run under mpirun and Slurm, and a libfabric provider that the image's libfabric lists.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  renameSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, CH_RUN, cleanup, copyWithLibs, DIST, type Result, ROOT, run, tmp } from "../helpers.ts";

const FROMHOST = join(DIST, "ch-fromhost");
const ERROR = /^ch-fromhost\[\d+\]: error: .+ \([a-z0-9-]+\.ts:\d+ \d+\)\n$/;

function fromhost(args: string[], env: Record<string, string> = {}): Result {
  return run(FROMHOST, args, { env: { ...process.env, ...env }, timeout: 120_000 });
}

/** Every file, link and directory under root, with contents, modes and link targets. */
function snapshot(root: string): string[] {
  const out: string[] = [];
  for (const p of readdirSync(root, { recursive: true, encoding: "utf8" }).sort()) {
    const f = join(root, p);
    const st = lstatSync(f);
    const what = st.isSymbolicLink()
      ? `-> ${readlinkSync(f)}`
      : st.isDirectory()
        ? "dir"
        : createHash("sha256").update(readFileSync(f)).digest("hex").slice(0, 16);
    out.push(`${p} ${(st.mode & 0o7777).toString(8)} ${what}`);
  }
  return out;
}

/** A shared library built here, with a soname. */
function library(path: string, soname: string, symbol = "f"): void {
  mkdirSync(dirname(path), { recursive: true });
  const src = `${path}.c`;
  writeFileSync(src, `int ${symbol}(void) { return 42; }\n`);
  const r = run("gcc", ["-shared", "-fPIC", `-Wl,-soname,${soname}`, "-o", path, src]);
  assert.equal(r.status, 0, r.stderr);
}

/** A busybox image with the host's ldconfig and C library, so that its ldconfig finds a
 * library directory as a real distribution's does. */
function smallImage(parent: string, name: string): string {
  const img = busyboxImage(parent, name);
  copyWithLibs(realpathSync("/sbin/ldconfig"), img);
  if (realpathSync("/sbin/ldconfig") !== "/sbin/ldconfig") {
    mkdirSync(join(img, "sbin"), { recursive: true });
    copyFileSync(realpathSync("/sbin/ldconfig"), join(img, "sbin/ldconfig"));
    chmodSync(join(img, "sbin/ldconfig"), 0o755);
  }
  copyWithLibs("/usr/bin/true", img); // libc and the dynamic linker, at the host's paths
  mkdirSync(join(img, "etc/ld.so.conf.d"), { recursive: true });
  writeFileSync(join(img, "etc/ld.so.conf"), "include /etc/ld.so.conf.d/*.conf\n");
  return img;
}

describe("ch-fromhost", () => {
  let dir: string;
  let img: string;
  let libDir: string;
  let host: string;

  before(() => {
    dir = tmp();
    img = smallImage(dir, "img");
    host = join(dir, "host");
    // Host files: a library with its soname link, a program, a data file, a link to a file.
    library(join(host, "lib/libchtest.so.1.0"), "libchtest.so.1");
    symlinkSync("libchtest.so.1.0", join(host, "lib/libchtest.so.1"));
    mkdirSync(join(host, "bin"));
    writeFileSync(join(host, "bin/hello"), "#!/bin/sh\necho hello from the host\n");
    chmodSync(join(host, "bin/hello"), 0o750);
    mkdirSync(join(host, "etc"));
    writeFileSync(join(host, "etc/data.txt"), "data\n");
    chmodSync(join(host, "etc/data.txt"), 0o600);
    symlinkSync("../etc/data.txt", join(host, "bin/data-link"));
    writeFileSync(join(host, "list"), `${host}/lib/libchtest.so.1.0\n${host}/lib/libchtest.so.1\n\n`);
  });
  after(() => dir && cleanup(dir));

  it("--print-lib: the directory where the image's ldconfig finds libc", () => {
    const r = fromhost(["--print-lib", img]);
    assert.equal(r.status, 0, r.stderr);
    libDir = r.stdout.trim();
    assert.ok(existsSync(join(img, libDir, "libc.so.6")), `${libDir} has the image's libc`);
    assert.equal(r.stderr, "");
  });

  it("injects libraries, programs and --dest files, modes kept, links dereferenced; runs the image's ldconfig", () => {
    const r = fromhost([
      "-v",
      "-f",
      join(host, "list"),
      "-p",
      join(host, "bin/hello"),
      "-d",
      "/etc",
      "-p",
      join(host, "bin/data-link"),
      img,
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`${host}/bin/hello -> /usr/bin/hello \\(inferred\\)`));
    assert.match(r.stderr, new RegExp(`${host}/lib/libchtest.so.1.0 -> ${libDir}/libchtest.so.1.0 \\(inferred\\)`));
    assert.match(r.stderr, new RegExp(`${host}/bin/data-link -> /etc/data-link\\n`));
    assert.match(r.stderr, /injected 4 files into .*; ran ldconfig\n$/);
    assert.equal(statSync(join(img, "usr/bin/hello")).mode & 0o777, 0o750);
    assert.equal(readFileSync(join(img, "etc/data-link"), "utf8"), "data\n", "a link to a file: the file");
    assert.ok(lstatSync(join(img, "etc/data-link")).isFile());
    assert.equal(statSync(join(img, "etc/data-link")).mode & 0o777, 0o600);
    assert.equal(readlinkSync(join(img, libDir, "libchtest.so.1")), "libchtest.so.1.0", "the soname link stays a link");
    // The image's own ldconfig cache knows the library, and the program runs there.
    const ld = run(CH_RUN, [img, "--", "/sbin/ldconfig", "-p"]);
    assert.match(ld.stdout, new RegExp(`libchtest\\.so\\.1 \\(.*\\) => ${libDir}/libchtest\\.so\\.1`));
    const hello = run(CH_RUN, [img, "--", "hello"]);
    assert.equal(hello.stdout, "hello from the host\n", hello.stderr);
  });

  it("-q is quiet; --cmd runs through a shell", () => {
    const r = fromhost(["-q", "-c", `echo ${host}/bin/hello | cat`, img]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr + r.stdout, "");
  });

  it("a file with no destination: nothing injected, image unchanged", () => {
    const before = snapshot(img);
    const r = fromhost(["-p", join(host, "bin/hello"), "-p", join(host, "etc/data.txt"), "-f", join(host, "list"), img]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, ERROR);
    assert.match(
      r.stderr,
      new RegExp(
        `nothing injected: no destination for ${host}/etc/data.txt \\(not a library, not in a bin directory\\): use --dest`,
      ),
    );
    assert.deepEqual(snapshot(img), before);
  });

  it("missing sources, a failing --cmd, a directory given with --path: refused before anything is written", () => {
    const before = snapshot(img);
    for (const [args, re] of [
      [["-p", join(host, "nope")], /nothing injected: not found: .*\/nope \(from --path\)/],
      [["-c", "echo /bin/sh; exit 3"], /--cmd: command failed \(exit 3\): echo \/bin\/sh; exit 3/],
      [["-p", host], /a directory, not a file: .*\/host \(list its files with --cmd or --file\)/],
      [["--cray-cxi"], /--cray-cxi: \$CH_FROMHOST_OFI_CXI is not set/],
      [[], /nothing to inject: give --cmd, --file, --path, --nvidia, --cray-cxi or --cray-gni/],
    ] as [string[], RegExp][]) {
      const r = fromhost([...args, img], { CH_FROMHOST_OFI_CXI: "" });
      assert.equal(r.status, 1, `${args}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.match(r.stderr, ERROR);
    }
    assert.deepEqual(snapshot(img), before);
  });

  it("refuses a destination that leads out of the image through a symlink in it; nothing written outside", () => {
    const img2 = busyboxImage(dir, "evil");
    const outside = join(dir, "outside");
    mkdirSync(outside);
    symlinkSync("../../../outside", join(img2, "usr/share")); // img2/usr/share -> DIR/outside on the host
    const r = fromhost(["-d", "/usr/share", "-p", join(host, "etc/data.txt"), img2]);
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      /nothing injected: refusing \/usr\/share\/data\.txt \(for .*data\.txt\): it resolves outside the image .* through symlink \/usr\/share/,
    );
    assert.deepEqual(readdirSync(outside), []);
  });

  it("the image's ldconfig failing: everything put back", () => {
    const img3 = smallImage(dir, "img3");
    // Its ldconfig lists directories as usual, and fails when asked to update the cache.
    renameSync(join(img3, "sbin/ldconfig"), join(img3, "sbin/ldconfig.real"));
    writeFileSync(
      join(img3, "sbin/ldconfig"),
      '#!/bin/sh\n[ "$1" = -Nv ] && exec /sbin/ldconfig.real "$@"\necho "ldconfig: cache is on fire" >&2\nexit 3\n',
    );
    chmodSync(join(img3, "sbin/ldconfig"), 0o755);
    writeFileSync(join(img3, "usr/bin/hello"), "the image's own\n");
    const before = snapshot(img3);
    const r = fromhost(["-f", join(host, "list"), "-p", join(host, "bin/hello"), img3]);
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      /nothing injected, image unchanged: the image's ldconfig failed \(exit 3\): ldconfig: cache is on fire/,
    );
    assert.deepEqual(snapshot(img3), before);
    // --no-ldconfig: injected, ldconfig not run.
    const n = fromhost(["--no-ldconfig", "-f", join(host, "list"), img3]);
    assert.equal(n.status, 0, n.stderr);
    assert.ok(existsSync(join(img3, libDir, "libchtest.so.1.0")));
  });

  it("an image in storage, by name (its ldconfig runs through ch-run --unsafe)", () => {
    const storage = join(dir, "storage");
    const c = run(join(DIST, "ch-convert"), ["-s", storage, "-o", "ch-image", img, "local/small"]);
    assert.equal(c.status, 0, c.stderr);
    const env = { CH_IMAGE_STORAGE: storage };
    const r = fromhost(["-f", join(host, "list"), "-p", join(host, "bin/hello"), "local/small"], env);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`injected 3 files into ${realpathSync(storage)}/img/local%small\\+latest; ran ldconfig`));
    const h = run(CH_RUN, ["-s", storage, "local/small", "--", "hello"]);
    assert.equal(h.stdout, "hello from the host\n", h.stderr);
  });

  it("a SquashFS image: a clear error saying to unpack it", (t) => {
    if (!existsSync("/usr/bin/mksquashfs")) return t.skip("mksquashfs (squashfs-tools) not installed");
    const sqfs = join(dir, "img.sqfs");
    const c = run(join(DIST, "ch-convert"), [img, sqfs]);
    assert.equal(c.status, 0, c.stderr);
    const r = fromhost(["-p", join(host, "bin/hello"), sqfs]);
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      /can't inject into SquashFS image .*img\.sqfs: it is read-only; unpack it \(ch-convert .*img\.sqfs DIR\)/,
    );
  });

  describe("--nvidia, with a fake driver tree (files named as the driver's)", () => {
    let nv: string;
    before(() => {
      nv = join(dir, "nv");
      library(join(nv, "lib/libcuda.so.535.104.05"), "libcuda.so.1", "cuInit");
      library(join(nv, "lib/libnvidia-ml.so.535.104.05"), "libnvidia-ml.so.1", "nvmlInit");
      library(join(nv, "lib/libnvvm.so.4.0.0"), "libnvvm.so.4"); // CUDA's, not the driver's
      mkdirSync(join(nv, "bin"));
      writeFileSync(join(nv, "bin/nvidia-smi"), "#!/bin/sh\necho 'NVIDIA-SMI 535.104.05 (fake)'\n");
      chmodSync(join(nv, "bin/nvidia-smi"), 0o755);
      // An ld.so cache that lists them, made by the host's ldconfig (which also makes the soname links).
      writeFileSync(join(nv, "ld.so.conf"), `${nv}/lib\n`);
      const r = run("/sbin/ldconfig", ["-C", join(nv, "ld.so.cache"), "-f", join(nv, "ld.so.conf")]);
      assert.equal(r.status, 0, r.stderr);
    });

    const check = (target: string) => {
      const files = readdirSync(join(target, libDir));
      assert.ok(files.includes("libcuda.so.535.104.05") && files.includes("libnvidia-ml.so.535.104.05"), files.join(" "));
      assert.ok(!files.some((f) => f.startsWith("libnvvm")), "CUDA's own libraries are not the driver's");
      const ld = run(CH_RUN, [target, "--", "/sbin/ldconfig", "-p"]);
      assert.match(ld.stdout, new RegExp(`libcuda\\.so\\.1 \\(.*\\) => ${libDir}/libcuda\\.so\\.1`));
      const smi = run(CH_RUN, [target, "--", "nvidia-smi"]);
      assert.equal(smi.stdout, "NVIDIA-SMI 535.104.05 (fake)\n", smi.stderr);
    };

    it("without nvidia-container-cli: the driver's libraries from ldconfig -p, its programs from $PATH", () => {
      const target = smallImage(dir, "nv1");
      const r = fromhost(["-v", "--nvidia", target], {
        CH_FROMHOST_LD_CACHE: join(nv, "ld.so.cache"),
        PATH: `${nv}/bin:${process.env.PATH}`,
      });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /--nvidia: 2 driver libraries from the ld\.so cache, 1 programs from \$PATH/);
      check(target);
    });

    it("with nvidia-container-cli: its list", () => {
      const target = smallImage(dir, "nv2");
      const cli = join(dir, "cli");
      mkdirSync(cli);
      writeFileSync(
        join(cli, "nvidia-container-cli"),
        `#!/bin/sh\n[ "$*" = "list --binaries --libraries" ] || exit 9\n` +
          `printf '%s\\n' ${nv}/bin/nvidia-smi ${nv}/lib/libcuda.so.535.104.05 ${nv}/lib/libnvidia-ml.so.535.104.05\n`,
      );
      chmodSync(join(cli, "nvidia-container-cli"), 0o755);
      const r = fromhost(["--nvidia", target], { PATH: `${cli}:${process.env.PATH}` });
      assert.equal(r.status, 0, r.stderr);
      check(target);
      // A host without GPUs: nvidia-container-cli fails, and so does ch-fromhost, saying why.
      writeFileSync(
        join(cli, "nvidia-container-cli"),
        "#!/bin/sh\necho 'nvidia-container-cli: initialization error: nvml error: driver not loaded' >&2\nexit 1\n",
      );
      const f = fromhost(["--nvidia", target], { PATH: `${cli}:${process.env.PATH}` });
      assert.equal(f.status, 1);
      assert.match(
        f.stderr,
        /nvidia-container-cli failed \(exit 1\); does this host have GPUs\?: nvidia-container-cli: initialization error/,
      );
    });

    it("no driver anywhere: says so", () => {
      const empty = join(dir, "empty.conf");
      writeFileSync(empty, "");
      const cache = join(dir, "empty.cache");
      assert.equal(run("/sbin/ldconfig", ["-C", cache, "-f", empty]).status, 0);
      const r = fromhost(["--nvidia", img], { CH_FROMHOST_LD_CACHE: cache, PATH: "/usr/bin:/bin" });
      assert.equal(r.status, 1);
      assert.match(r.stderr, /--nvidia: no NVIDIA driver libraries found: no nvidia-container-cli, and none in the ld\.so cache/);
    });
  });
});

// ---- Debian's OpenMPI and libfabric, in a Debian image without MPI ----

const IMAGE = process.env.CH_TEST_DEBIAN_IMAGE;
const SLURM = process.env.CH_TEST_SLURM === "1";
const skipDebian = IMAGE ? false : "needs a Debian image (.ci/setup-debian.sh sets CH_TEST_DEBIAN_IMAGE)";
const OMPI = { OMPI_MCA_pml: "ob1", OMPI_MCA_btl: "self,vader" };

describe("Debian's OpenMPI and libfabric injected into a Debian image", { skip: skipDebian, timeout: 600_000 }, () => {
  let dir: string;
  let img: string;
  before(() => {
    dir = tmp();
    img = join(dir, "deb");
    const c = run(join(DIST, "ch-convert"), [IMAGE as string, img], { timeout: 300_000 });
    assert.equal(c.status, 0, c.stderr);
    // No MPI in the image: its packages removed by its own dpkg (as root of the container).
    const purge = run(
      CH_RUN,
      ["-w", "-u", "0", "-g", "0", img, "--", "dpkg", "--purge", "--force-depends", "libopenmpi3", "libmpich12"],
      {
        env: { ...process.env, PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
      },
    );
    assert.equal(purge.status, 0, purge.stderr);
    const cc = run("mpicc.openmpi", ["-O2", "-o", join(img, "pingpong"), join(ROOT, "test/fixtures/mpi-pingpong.c")]);
    assert.equal(cc.status, 0, cc.stderr);
  });
  after(() => dir && cleanup(dir));

  it("the image has no MPI: the program compiled on the host can't start", () => {
    const r = run(CH_RUN, [img, "--", "/pingpong"]);
    assert.equal(r.status, 127);
    assert.match(r.stderr, /libmpi\.so\.40: cannot open shared object file/);
  });

  it("-c 'dpkg -L libopenmpi3' whole: refused (its docs have no destination), image unchanged", () => {
    const before = readdirSync(join(img, "usr/lib"), { recursive: true }).length;
    const r = fromhost(["-c", "dpkg -L libopenmpi3", img]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /nothing injected: no destination for \/usr\/share\/doc\/libopenmpi3\/.*; and \d+ more/);
    assert.equal(readdirSync(join(img, "usr/lib"), { recursive: true }).length, before);
  });

  it("the host's OpenMPI injected (-c with its package list): 2 ranks under mpirun, and under srun --mpi=pmix", {
    skip: SLURM ? false : "needs Slurm (CH_TEST_SLURM)",
  }, () => {
    const r = fromhost(["-c", "dpkg -L libopenmpi3 | grep -v ^/usr/share/doc/", img]);
    assert.equal(r.status, 0, r.stderr);
    // OpenMPI finds its components where the host's are.
    assert.ok(existsSync(join(img, "usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_btl_vader.so")) || process.arch !== "x64");
    for (const launcher of [
      ["mpirun.openmpi", "--oversubscribe", "-np", "2"],
      ["srun", "--overcommit", "-n", "2", "--mpi=pmix"],
    ]) {
      // A tag of our own: the MPI tests, which may run meanwhile, count numbered ones in /dev/shm as theirs.
      const join = `--join-tag=fromhost-${process.pid}`;
      const m = run("timeout", ["-k", "5", "90", ...launcher, CH_RUN, join, img, "--", "/pingpong"], {
        env: { ...process.env, ...OMPI },
        timeout: 120_000,
      });
      assert.equal(m.status, 0, `${launcher[0]}: ${m.stdout}${m.stderr}`);
      assert.deepEqual(
        [...m.stdout.matchAll(/^rank (\d) of (\d) /gm)].map((x) => `${x[1]}/${x[2]}`).sort(),
        ["0/2", "1/2"],
        `${launcher[0]}: ${m.stdout}`,
      );
      assert.match(m.stdout, /^rank 0: round trip of 4194304 bytes ok$/m);
    }
  });

  it("a libfabric provider built on the host: --print-fi, then injected with -p; the image's libfabric lists it (fi_info)", (t) => {
    if (!existsSync("/usr/include/rdma/providers/fi_prov.h")) return t.skip("needs libfabric-dev (the provider interface)");
    if (!existsSync("/usr/bin/fi_info")) return t.skip("needs libfabric-bin (fi_info)");
    const dest = fromhost(["--print-fi", img]);
    assert.equal(dest.status, 0, dest.stderr);
    const provDir = dest.stdout.trim();
    assert.ok(
      readdirSync(join(img, dirname(provDir))).some((f) => f.startsWith("libfabric.so.")),
      `${provDir} is beside libfabric`,
    );
    const prov = join(dir, "libchtest-fi.so");
    const cc = run("gcc", ["-shared", "-fPIC", "-o", prov, join(ROOT, "test/fixtures/chtest-fi.c")]);
    assert.equal(cc.status, 0, cc.stderr);
    assert.ok(!existsSync(join(img, "usr/bin/fi_info")), "the image has no fi_info of its own");
    const r = fromhost(["-v", "-p", prov, "-p", "/usr/bin/fi_info", img]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`libchtest-fi\\.so -> ${provDir}/libchtest-fi\\.so \\(inferred\\)`));
    const env = { ...process.env };
    delete env.FI_PROVIDER_PATH; // libfabric's default provider path, beside it
    const fi = run(CH_RUN, [img, "--", "fi_info", "-l"], { env });
    assert.equal(fi.status, 0, fi.stderr);
    assert.match(fi.stdout, /^chtest:\n\s+version: 1\.0$/m);
  });
});
