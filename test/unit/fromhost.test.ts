// ch-fromhost without containers: parsing the host's and the image's tools, resolving paths in
// an image, planning where files go, and injecting all or nothing (on real directories).
import assert from "node:assert/strict";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { MemFs, type MemNode, realFs } from "../../src/container/hostfs.ts";
import {
  inBinDir,
  isLibfabric,
  isProvider,
  isSharedLibrary,
  type LdDir,
  nvidiaLibraries,
  parseLdconfigP,
  parseLdconfigV,
  parseLdd,
} from "../../src/fromhost/host.ts";
import { resolveInImage } from "../../src/fromhost/imagepath.ts";
import { inject } from "../../src/fromhost/inject.ts";
import {
  type HostFacts,
  type ImageFacts,
  imageLibDir,
  type Plan,
  planInjection,
  providerDir,
  type Request,
  underLibDir,
} from "../../src/fromhost/plan.ts";
import { ChError } from "../../src/sys/errors.ts";
import { cleanup, tmp } from "../helpers.ts";

const LDCONFIG_V = `/usr/local/lib: (from /etc/ld.so.conf.d/libc.conf:2)
/lib/x86_64-linux-gnu: (from /etc/ld.so.conf.d/x86_64-linux-gnu.conf:3)
\tlibthread_db.so.1 -> libthread_db.so.1
\tlibc.so.6 -> libc.so.6
\tlibfabric.so.1 -> libfabric.so.1.20.0
\tlibicuuc.so.72 -> libicuuc.so.72.1
/lib: (from <builtin>:0)
`;

describe("parsing ldconfig and ldd", () => {
  it("ldconfig -Nv: directories in order, with their libraries", () => {
    const d = parseLdconfigV(LDCONFIG_V);
    assert.deepEqual(
      d.map((x) => x.dir),
      ["/usr/local/lib", "/lib/x86_64-linux-gnu", "/lib"],
    );
    assert.deepEqual(d[1].libs, ["libthread_db.so.1", "libc.so.6", "libfabric.so.1", "libicuuc.so.72"]);
    assert.equal(imageLibDir(d), "/lib/x86_64-linux-gnu", "where libc is, not the first directory");
    assert.equal(providerDir(d), "/lib/x86_64-linux-gnu/libfabric");
  });

  it("an image whose ldconfig finds no libraries, or no libfabric, says so", () => {
    assert.throws(() => imageLibDir(parseLdconfigV("/usr/lib: (from <builtin>:0)\n")), /lists no libraries \(use --dest\)/);
    assert.throws(() => providerDir(parseLdconfigV("/lib:\n\tlibc.so.6 -> libc.so.6\n")), /the image has no libfabric/);
  });

  it("ldconfig -p: entries with flags; ldd: found and missing", () => {
    const e = parseLdconfigP(
      "3 libs found in cache `/etc/ld.so.cache'\n\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n" +
        "\tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1\n\tlibnvvm.so.4 (libc6,x86-64) => /usr/local/cuda/lib/libnvvm.so.4\n",
    );
    assert.deepEqual(e[0], { name: "libcuda.so.1", flags: "libc6,x86-64", path: "/usr/lib/x86_64-linux-gnu/libcuda.so.1" });
    assert.equal(e.length, 3);
    const l = parseLdd(
      "\tlinux-vdso.so.1 (0x00007f)\n\tlibfabric.so.1 => /lib/x86_64-linux-gnu/libfabric.so.1 (0x00007f)\n\tlibfoo.so.2 => not found\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n",
    );
    assert.deepEqual(l, { found: ["/lib/x86_64-linux-gnu/libfabric.so.1"], missing: ["libfoo.so.2"] });
  });

  it("--nvidia without nvidia-container-cli: the driver's libraries of this architecture, real files, once; not CUDA's", () => {
    const e = parseLdconfigP(
      "\tlibcuda.so.1 (libc6,x86-64) => /d/libcuda.so.1\n\tlibcuda.so (libc6,x86-64) => /d/libcuda.so\n" +
        "\tlibcuda.so.1 (libc6) => /d32/libcuda.so.1\n\tlibnvidia-ml.so.1 (libc6,x86-64) => /d/libnvidia-ml.so.1\n" +
        "\tlibnvvm.so.4 (libc6,x86-64) => /cuda/libnvvm.so.4\n\tlibGL.so.1 (libc6,x86-64) => /d/libGL.so.1\n",
    );
    const real = (p: string) => (p.startsWith("/d/libcuda") ? "/d/libcuda.so.535.1" : p === "/d/libnvidia-ml.so.1" ? null : p);
    assert.deepEqual(nvidiaLibraries(e, "x64", real), ["/d/libcuda.so.535.1"]);
  });

  it("kinds of files by name", () => {
    for (const n of ["libfoo.so", "libfoo.so.1", "libfoo.so.1.2.3", "mca_btl_self.so"]) assert.ok(isSharedLibrary(n), n);
    for (const n of ["foo.so.txt", "libfoo.a", "libfoo.so.conf"]) assert.ok(!isSharedLibrary(n), n);
    assert.ok(isProvider("libgnix-fi.so") && !isProvider("libfabric.so.1"));
    assert.ok(isLibfabric("libfabric.so.1") && isLibfabric("libfabric.so") && !isLibfabric("libfabric-foo.so"));
    assert.ok(inBinDir("/usr/bin/x") && inBinDir("/opt/x/sbin/y") && !inBinDir("/usr/lib/binfmt.d/x") && !inBinDir("/bin"));
  });

  it("a library's place under the deepest host library directory", () => {
    const dirs = ["/usr/lib", "/usr/lib/x86_64-linux-gnu"];
    assert.equal(underLibDir("/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3", dirs), "openmpi/lib/openmpi3");
    assert.equal(underLibDir("/usr/lib/x86_64-linux-gnu", dirs), "");
    assert.equal(underLibDir("/opt/foo/lib", dirs), null);
  });
});

const IMG = "/img";

function memImage(extra: Record<string, MemNode> = {}): MemFs {
  const t: Record<string, MemNode> = {
    [`${IMG}/usr/bin`]: { dir: true },
    [`${IMG}/usr/lib/x86_64-linux-gnu/libc.so.6`]: "libc",
    [`${IMG}/lib`]: { link: "usr/lib" },
    [`${IMG}/etc/ld.so.conf`]: "include /etc/ld.so.conf.d/*.conf\n",
    [`${IMG}/etc/ld.so.conf.d`]: { dir: true },
  };
  for (const [k, v] of Object.entries(extra)) t[`${IMG}${k}`] = v;
  return new MemFs(t);
}

describe("paths in the image", () => {
  it("follows symlinks as the container will, absolute ones from the image's root", () => {
    const fs = memImage({ "/opt/a": { link: "/usr/lib" }, "/opt/b": { link: "../usr/bin" } });
    assert.deepEqual(resolveInImage(IMG, "/lib/x86_64-linux-gnu", fs), {
      path: "/usr/lib/x86_64-linux-gnu",
      host: `${IMG}/usr/lib/x86_64-linux-gnu`,
      type: "dir",
      missing: null,
    });
    assert.equal(resolveInImage(IMG, "/opt/a/x86_64-linux-gnu", fs).path, "/usr/lib/x86_64-linux-gnu");
    assert.equal(resolveInImage(IMG, "/opt/b", fs).path, "/usr/bin");
    const m = resolveInImage(IMG, "/lib/new/sub", fs);
    assert.equal(m.path, "/usr/lib/new/sub");
    assert.equal(m.missing, "/usr/lib/new");
  });

  it("refuses a path that climbs out of the image, through a symlink or by itself", () => {
    const fs = memImage({ "/usr/lib/evil": { link: "../../../../etc" }, "/usr/lib/loop": { link: "loop" } });
    assert.throws(
      () => resolveInImage(IMG, "/usr/lib/evil/x", fs),
      /resolves outside the image \/img through symlink \/usr\/lib\/evil/,
    );
    assert.throws(() => resolveInImage(IMG, "/../etc", fs), /climbs outside the image/);
    assert.throws(() => resolveInImage(IMG, "/missing/../../etc", fs), /climbs outside the image/);
    assert.throws(() => resolveInImage(IMG, "/usr/lib/loop", fs), /too many levels of symlinks/);
  });
});

/** Host facts from a table of files: path -> mode (or "dir", or a link target). */
function host(files: Record<string, number | "dir" | { link: string }>, over: Partial<HostFacts> = {}): HostFacts {
  const real = (p: string): string | null => {
    const f = files[p];
    if (f !== undefined) return typeof f === "object" ? real(f.link) : p;
    return p === "/" || Object.keys(files).some((k) => k.startsWith(`${p}/`)) ? p : null; // a directory above files
  };
  return {
    libDirs: () => ["/usr/lib", "/usr/lib/x86_64-linux-gnu", "/lib64"],
    stat(p) {
      const r = real(p);
      if (r === null) return null;
      const f = files[r];
      if (f === undefined || f === "dir") return { type: "dir", mode: 0o40755 };
      return { type: "file", mode: 0o100000 | (f as number) };
    },
    realpath: real,
    ldd: () => [],
    env: {},
    cray: false,
    ...over,
  };
}

function image(fs: MemFs, ld = LDCONFIG_V): ImageFacts & { asked: number } {
  const img = {
    root: IMG,
    fs,
    asked: 0,
    ld(): LdDir[] {
      img.asked++;
      return parseLdconfigV(ld);
    },
  };
  return img;
}

const req = (path: string, dest: string | null = null, origin = "--cmd 'x'"): Request => ({ path, dest, origin });

describe("planning an injection", () => {
  it("libraries into the image's library directory, plugin subdirectories kept; programs into /usr/bin; --dest", () => {
    const h = host({
      "/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.4": 0o644,
      "/usr/lib/x86_64-linux-gnu/libmpi.so.40": { link: "/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.4" },
      "/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_btl_self.so": 0o644,
      "/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/libompi_dbg_msgq.so": 0o644,
      "/opt/x/lib/libx.so.1": 0o755,
      "/usr/bin/orted": 0o4755,
      "/etc/openmpi/openmpi-mca-params.conf": 0o644,
      "/usr/lib/x86_64-linux-gnu/openmpi": "dir",
    });
    const img = image(memImage());
    const p = planInjection(
      [
        req("/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.4"),
        req("/usr/lib/x86_64-linux-gnu/libmpi.so.40"),
        req("/usr/lib/x86_64-linux-gnu/openmpi"), // a directory in a package's list: skipped
        req("/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_btl_self.so"),
        req("/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/libompi_dbg_msgq.so"),
        req("/opt/x/lib/libx.so.1"),
        req("/usr/bin/orted"),
        req("/etc/openmpi/openmpi-mca-params.conf", "/etc/openmpi"),
      ],
      h,
      img,
      { noLdconfig: false },
    );
    assert.deepEqual(
      p.copies.map((c) => [c.dst, c.kind, c.inferred, c.link, c.mode.toString(8)]),
      [
        ["/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.4", "lib", true, null, "644"],
        ["/usr/lib/x86_64-linux-gnu/libmpi.so.40", "lib", true, "libmpi.so.40.30.4", "644"],
        ["/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_btl_self.so", "lib", true, null, "644"],
        ["/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/libompi_dbg_msgq.so", "lib", true, null, "644"],
        ["/usr/lib/x86_64-linux-gnu/libx.so.1", "lib", true, null, "755"],
        ["/usr/bin/orted", "exe", true, null, "755"], // setuid dropped
        ["/etc/openmpi/openmpi-mca-params.conf", "other", false, null, "644"],
      ],
    );
    assert.deepEqual(
      p.mkdirs.map((d) => d.path),
      [
        "/usr/lib/x86_64-linux-gnu/openmpi",
        "/usr/lib/x86_64-linux-gnu/openmpi/lib",
        "/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3",
        "/etc/openmpi",
      ],
    );
    // A library others link to, in a directory the image's ldconfig doesn't search, is made known to it.
    assert.deepEqual(p.writes, [
      {
        dst: "/etc/ld.so.conf.d/ch-fromhost.conf",
        host: `${IMG}/etc/ld.so.conf.d/ch-fromhost.conf`,
        content: "/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3\n",
      },
    ]);
    assert.equal(p.ldconfig, true);
    assert.equal(img.asked, 1, "the image's ldconfig is asked once");
    assert.match(p.log.join("\n"), /skipping directory \/usr\/lib\/x86_64-linux-gnu\/openmpi/);
  });

  it("programs only: the image's ldconfig is neither asked nor run; --no-ldconfig", () => {
    const h = host({ "/usr/bin/a": 0o755, "/usr/lib/x86_64-linux-gnu/liba.so": 0o644 });
    const img = image(memImage());
    const p = planInjection([req("/usr/bin/a")], h, img, { noLdconfig: false });
    assert.equal(p.ldconfig, false);
    assert.equal(img.asked, 0);
    assert.equal(planInjection([req("/usr/lib/x86_64-linux-gnu/liba.so")], h, img, { noLdconfig: true }).ldconfig, false);
  });

  it("providers beside the image's libfabric; the directories of what they load, if not searched, in ch-ofi.conf", () => {
    const h = host(
      { "/opt/cray/lib64/libgnix-fi.so": 0o755, "/opt/cray/ugni/lib64/libugni.so.0": 0o755 },
      {
        ldd: (p) =>
          p.endsWith("-fi.so")
            ? [
                "/opt/cray/ugni/lib64/libugni.so.0",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libfabric.so.1",
              ]
            : [],
      },
    );
    const p = planInjection([req("/opt/cray/lib64/libgnix-fi.so", null, "--cray-gni")], h, image(memImage()), {
      noLdconfig: false,
    });
    assert.deepEqual(
      p.copies.map((c) => c.dst),
      ["/usr/lib/x86_64-linux-gnu/libfabric/libgnix-fi.so"],
    );
    assert.deepEqual(
      p.writes.map((w) => [w.dst, w.content]),
      [["/etc/ld.so.conf.d/ch-ofi.conf", "/opt/cray/ugni/lib64\n"]],
    );
    assert.throws(
      () =>
        planInjection([req("/opt/cray/lib64/libgnix-fi.so")], { ...h, env: { FI_PROVIDER_PATH: "/x" } }, image(memImage()), {
          noLdconfig: false,
        }),
      /FI_PROVIDER_PATH is set \(\/x\): libfabric will look there; use --dest/,
    );
  });

  it("Cray's libfabric (linked with libcxi) replaces the image's, with what it loads that the image lacks", () => {
    const h = host(
      { "/opt/cray/lib64/libfabric.so.1": 0o755, "/usr/lib64/libcxi.so.1": 0o755, "/usr/lib64/libc.so.6": 0o755 },
      { ldd: () => ["/usr/lib64/libcxi.so.1", "/usr/lib64/libc.so.6"] },
    );
    const p = planInjection([req("/opt/cray/lib64/libfabric.so.1", null, "--cray-cxi")], h, image(memImage()), {
      noLdconfig: false,
    });
    assert.deepEqual(
      p.copies.map((c) => [c.src, c.dst, c.kind]),
      [
        ["/opt/cray/lib64/libfabric.so.1", "/usr/lib/x86_64-linux-gnu/libfabric.so.1", "cray-libfabric"],
        ["/usr/lib64/libcxi.so.1", "/usr/lib/x86_64-linux-gnu/libcxi.so.1", "lib"],
      ],
    );
  });

  it("adds the include of ld.so.conf.d to an ld.so.conf that lacks it, keeping what it has", () => {
    const h = host({ "/usr/lib/x86_64-linux-gnu/sub/libs.so.1": 0o644 });
    const fs = memImage({ "/etc/ld.so.conf": "/opt/lib", "/etc/ld.so.conf.d/ch-fromhost.conf": "/earlier\n" });
    const p = planInjection([req("/usr/lib/x86_64-linux-gnu/sub/libs.so.1")], h, image(fs), { noLdconfig: false });
    assert.deepEqual(
      p.writes.map((w) => [w.dst, w.content]),
      [
        ["/etc/ld.so.conf.d/ch-fromhost.conf", "/earlier\n/usr/lib/x86_64-linux-gnu/sub\n"],
        ["/etc/ld.so.conf", "/opt/lib\ninclude /etc/ld.so.conf.d/*.conf\n"],
      ],
    );
  });

  it("on Cray hosts, makes the mount points ch-run binds Cray's directories to", () => {
    const p = planInjection([req("/usr/bin/a")], host({ "/usr/bin/a": 0o755 }, { cray: true }), image(memImage()), {
      noLdconfig: false,
    });
    assert.ok(p.mkdirs.some((d) => d.path === "/var/opt/cray/alps/spool"));
    assert.ok(p.mkdirs.some((d) => d.path === "/opt/cray/xpmem"));
  });

  const refused = (reqs: Request[], files: Parameters<typeof host>[0], re: RegExp, fs = memImage()) => {
    assert.throws(
      () => planInjection(reqs, host(files), image(fs), { noLdconfig: false }),
      (e: unknown) => e instanceof ChError && re.test(e.message) && /^nothing injected: /.test(e.message),
    );
  };

  it("refuses, before writing anything: missing files, files with no destination, directories given with --path", () => {
    refused([req("/usr/bin/a"), req("/nope")], { "/usr/bin/a": 0o755 }, /not found: \/nope \(from --cmd 'x'\)/);
    refused(
      [req("/etc/foo")],
      { "/etc/foo": 0o644 },
      /no destination for \/etc\/foo \(not a library, not in a bin directory\): use --dest/,
    );
    refused([req("/opt", null, "--path")], { "/opt/x": 0o644 }, /a directory, not a file: \/opt/);
  });

  it("refuses two files for one destination, a directory in the way, and a destination out of the image", () => {
    refused(
      [req("/a/bin/tool"), req("/b/bin/tool")],
      { "/a/bin/tool": 0o755, "/b/bin/tool": 0o755 },
      /two files would go to \/usr\/bin\/tool: \/a\/bin\/tool and \/b\/bin\/tool/,
    );
    refused(
      [req("/a/bin/tool")],
      { "/a/bin/tool": 0o755 },
      /a directory is in the way in the image: \/usr\/bin\/tool/,
      memImage({ "/usr/bin/tool": { dir: true } }),
    );
    refused(
      [req("/etc/f", "/usr/share/evil")],
      { "/etc/f": 0o644 },
      /refusing \/usr\/share\/evil\/f \(for \/etc\/f\): it resolves outside the image \/img through symlink \/usr\/share\/evil/,
      memImage({ "/usr/share/evil": { link: "../../../home/victim" } }),
    );
    refused(
      [req("/etc/f", "/etc/passwd")],
      { "/etc/f": 0o644 },
      /not a directory in the image: \/etc\/passwd/,
      memImage({ "/etc/passwd": "x" }),
    );
  });
});

describe("injecting, all or nothing (real directories)", () => {
  const dir = tmp();
  after(() => cleanup(dir));
  let n = 0;

  /** An image directory with /usr/bin/keep (to be replaced), and host files to inject. */
  function setup() {
    const d = join(dir, String(n++));
    const root = join(d, "img");
    mkdirSync(join(root, "usr/bin"), { recursive: true });
    writeFileSync(join(root, "usr/bin/keep"), "old");
    mkdirSync(join(d, "host"));
    for (const f of ["a", "keep", "b"]) writeFileSync(join(d, "host", f), `new ${f}`);
    chmodSync(join(d, "host/a"), 0o750);
    const plan: Plan = {
      copies: ["a", "keep", "b"].map((f) => ({
        src: join(d, "host", f),
        dst: `/usr/bin/${f}`,
        host: join(root, "usr/bin", f),
        mode: f === "a" ? 0o750 : 0o644,
        kind: "exe",
        inferred: true,
        link: null,
      })),
      mkdirs: [{ path: "/new", host: join(root, "new") }],
      writes: [{ dst: "/new/conf", host: join(root, "new/conf"), content: "x\n" }],
      ldconfig: false,
      warnings: [],
      log: [],
    };
    plan.copies.push({ ...plan.copies[0], dst: "/usr/bin/a.link", host: join(root, "usr/bin/a.link"), link: "a" });
    return { root, plan, host: join(d, "host") };
  }

  const tree = (root: string): string[] =>
    readdirSync(root, { recursive: true, encoding: "utf8" })
      .map((p) => `${p}:${statSync(join(root, p)).isDirectory() ? "dir" : readFileSync(join(root, p), "utf8")}`)
      .sort();

  it("puts every file in place, modes kept, a link as a link; replaces what was there", () => {
    const { root, plan } = setup();
    let ran = false;
    inject(plan, () => {
      ran = true;
    });
    assert.ok(ran);
    assert.equal(readFileSync(join(root, "usr/bin/keep"), "utf8"), "new keep");
    assert.equal(statSync(join(root, "usr/bin/a")).mode & 0o777, 0o750);
    assert.equal(readlinkSync(join(root, "usr/bin/a.link")), "a");
    assert.equal(readFileSync(join(root, "new/conf"), "utf8"), "x\n");
    assert.deepEqual(
      readdirSync(join(root, "usr/bin")).filter((f) => f.startsWith(".ch-fromhost")),
      [],
      "nothing left aside",
    );
  });

  it("a copy that fails: nothing injected, what was there kept, nothing left aside", () => {
    const { root, plan, host } = setup();
    const before = tree(root);
    chmodSync(join(host, "b"), 0); // unreadable (tests run as an ordinary user)
    assert.throws(
      () => inject(plan, () => {}),
      (e: unknown) =>
        e instanceof ChError &&
        e.errno === 13 &&
        /^nothing injected, image unchanged: can't copy .*host\/b to \/usr\/bin\/b$/.test(e.message),
    );
    assert.deepEqual(tree(root), before);
  });

  it("a failure after everything is in place (the image's ldconfig): all put back", () => {
    const { root, plan } = setup();
    const before = tree(root);
    assert.throws(
      () =>
        inject(plan, () => {
          assert.equal(readFileSync(join(root, "usr/bin/keep"), "utf8"), "new keep", "in place when it runs");
          throw new ChError("the image's ldconfig failed (exit 3)");
        }),
      /nothing injected, image unchanged: the image's ldconfig failed \(exit 3\)/,
    );
    assert.deepEqual(tree(root), before);
    assert.ok(!existsSync(join(root, "new")));
  });

  it("a directory without write permission is opened for the copy and closed again", () => {
    const { root, plan } = setup();
    chmodSync(join(root, "usr/bin"), 0o555);
    inject(plan, () => {});
    assert.equal(statSync(join(root, "usr/bin")).mode & 0o777, 0o555);
    assert.equal(readFileSync(join(root, "usr/bin/b"), "utf8"), "new b");
  });

  it("a replaced file that can't be removed afterwards: injected, a warning naming it, modes restored", () => {
    const { root, plan } = setup();
    chmodSync(join(root, "usr/bin"), 0o555);
    let aside = "";
    const out: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string) => {
      out.push(String(chunk));
      return true;
    }) as typeof process.stderr.write;
    try {
      inject(plan, () => {
        // The copy of keep set aside becomes a directory with something in it: unlink(2) fails.
        aside = readdirSync(join(root, "usr/bin")).find((f) => f.startsWith(".ch-fromhost-old")) ?? "";
        rmSync(join(root, "usr/bin", aside));
        mkdirSync(join(root, "usr/bin", aside));
        writeFileSync(join(root, "usr/bin", aside, "x"), "");
      });
    } finally {
      process.stderr.write = write;
    }
    assert.ok(aside);
    assert.equal(readFileSync(join(root, "usr/bin/keep"), "utf8"), "new keep");
    assert.match(
      out.join(""),
      new RegExp(`warning: injected, but could not remove the files replaced; remove them by hand: .*${aside}`),
    );
    assert.equal(statSync(join(root, "usr/bin")).mode & 0o777, 0o555, "directory mode restored");
    chmodSync(join(root, "usr/bin"), 0o755);
  });

  it("never writes through a symlink at the destination: it is replaced", () => {
    const { root, plan, host } = setup();
    const outside = join(host, "outside");
    writeFileSync(outside, "precious");
    symlinkSync(outside, join(root, "usr/bin/b"));
    inject(plan, () => {});
    assert.equal(readFileSync(outside, "utf8"), "precious");
    assert.equal(readFileSync(join(root, "usr/bin/b"), "utf8"), "new b");
  });
});

describe("the real file system view", () => {
  it("resolveInImage works on real directories too", () => {
    const d = tmp();
    try {
      mkdirSync(join(d, "usr/lib"), { recursive: true });
      symlinkSync("usr/lib", join(d, "lib"));
      assert.equal(resolveInImage(d, "/lib", realFs).path, "/usr/lib");
    } finally {
      cleanup(d);
    }
  });
});
