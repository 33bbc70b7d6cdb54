// The container plan, with no privilege: options and host facts in, operations out.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ContainerView } from "../../src/container/binds.ts";
import { execute } from "../../src/container/execute.ts";
import { type HostFs, layeredFs, MemFs, type MemNode, prefixedFs, rememberingFs } from "../../src/container/hostfs.ts";
import {
  defaultRunOptions,
  execCandidates,
  type HostFacts,
  lockedMountFlags,
  type Op,
  overlayOptions,
  plan,
  type RunOptions,
} from "../../src/container/plan.ts";
import { ChError } from "../../src/sys/errors.ts";
import { Recorder } from "../../src/sys/syscalls.ts";

const IMG = "/var/tmp/img";

function image(extra: Record<string, MemNode> = {}): Record<string, MemNode> {
  const t: Record<string, MemNode> = {};
  for (const d of ["dev", "proc", "sys", "tmp", "home", "root", "mnt/0", "bin"]) t[`${IMG}/${d}`] = { dir: true };
  t[`${IMG}/etc/passwd`] = "root:x:0:0::/root:/bin/sh\n";
  t[`${IMG}/etc/group`] = "root:x:0:\n";
  t[`${IMG}/etc/hosts`] = "";
  for (const [k, v] of Object.entries(extra)) t[k.startsWith("/") ? k : `${IMG}/${k}`] = v;
  return t;
}

function facts(tree: Record<string, MemNode>, over: Partial<HostFacts> = {}): HostFacts {
  return {
    euid: 1000,
    egid: 1000,
    user: "alice",
    env: { PATH: "/usr/bin", HOME: "/home/alice", TMPDIR: "/scratch", LANG: "C" },
    cwd: "/home/alice",
    image: { root: IMG, mountFlags: 4096 | 2 | 4, readOnly: false },
    passwd: (uid) =>
      uid === 1000 ? { name: "alice", uid, gid: 1000, gecos: "Alice", dir: "/home/alice", shell: "/bin/bash" } : null,
    group: (gid) => (gid === 1000 ? { name: "alice", gid } : null),
    fs: new MemFs({
      "/dev/null": { other: true },
      "/proc/self": { dir: true },
      "/sys/kernel": { dir: true },
      "/etc/hosts": "h",
      "/tmp": { dir: true },
      "/scratch": { dir: true },
      "/home/alice/x": "",
      ...tree,
    }),
    ...over,
  };
}

function opts(over: Partial<RunOptions> = {}): RunOptions {
  return { ...defaultRunOptions(["ls", "-l"]), ...over };
}

const kinds = (ops: Op[]) => ops.map((o) => o.op);
const find = <K extends Op["op"]>(ops: Op[], k: K) => ops.filter((o): o is Extract<Op, { op: K }> => o.op === k);

describe("plan", () => {
  it("makes a read-only container in the right order", () => {
    const p = plan(opts(), facts(image()));
    assert.deepEqual(kinds(p.ops), [
      "private",
      "bind",
      "tmpfs",
      "file",
      "bind",
      "file",
      "bind",
      "umount",
      "bind",
      "bind",
      "bind",
      "bind",
      "bind",
      "remount-ro",
      "pivot",
      "userns",
      "exec",
    ]);
    const binds = find(p.ops, "bind").map((b) => `${b.src}>${b.dst}`);
    assert.deepEqual(binds, [
      `${IMG}>${IMG}`,
      `${IMG}/dev/passwd>${IMG}/etc/passwd`,
      `${IMG}/dev/group>${IMG}/etc/group`,
      `/dev>${IMG}/dev`,
      `/proc>${IMG}/proc`,
      `/sys>${IMG}/sys`,
      `/etc/hosts>${IMG}/etc/hosts`,
      `/scratch>${IMG}/tmp`,
    ]);
  });

  it("keeps the image's locked mount flags on the read-only remount", () => {
    const p = plan(opts(), facts(image()));
    const r = find(p.ops, "remount-ro")[0];
    assert.equal(r.flags, 0x2 | 0x4 | 0x200000); // nosuid, nodev, relatime
    assert.equal(lockedMountFlags(0) & 0x1000000, 0x1000000, "strictatime is asked for explicitly");
    assert.equal(find(plan(opts({ write: true }), facts(image())).ops, "remount-ro").length, 0);
  });

  it("maps the requested IDs and synthesizes passwd and group", () => {
    const p = plan(opts({ uid: 0, gid: 5 }), facts(image()));
    assert.deepEqual(find(p.ops, "userns")[0], { op: "userns", uid: 0, gid: 5 });
    const [passwd, group] = find(p.ops, "file").map((f) => f.content);
    assert.match(passwd, /^nobody:x:65534:65534:nobody:\/:\/bin\/false$/m);
    assert.match(passwd, /^charlie:x:0:5:Charlie:\/root:\/bin\/sh$/m);
    assert.doesNotMatch(passwd, /^root:/m);
    assert.match(group, /^charliegroup:x:5:$/m);
    const me = find(plan(opts(), facts(image())).ops, "file")[0].content;
    assert.match(me, /^alice:x:1000:1000:Alice:\/root:\/bin\/sh$/m);
    assert.equal(find(plan(opts({ noPasswd: true }), facts(image())).ops, "file").length, 0);
  });

  it("builds the environment: HOME, PATH with /bin, no TMPDIR, CH_RUNNING", () => {
    const env = find(plan(opts(), facts(image())).ops, "exec")[0].env;
    assert.ok(env.includes("HOME=/root"));
    assert.ok(env.includes("PATH=/usr/bin:/bin"));
    assert.ok(env.includes("LANG=C"));
    assert.ok(env.includes("CH_RUNNING=Weird Al Yankovic"));
    assert.ok(!env.some((e) => e.startsWith("TMPDIR=")));
    const noRoot = image();
    delete noRoot[`${IMG}/root`];
    assert.ok(find(plan(opts(), facts(noRoot)).ops, "exec")[0].env.includes("HOME=/"));
  });

  it("searches the container's PATH for the command", () => {
    const ex = find(plan(opts(), facts(image())).ops, "exec")[0];
    assert.deepEqual(ex.candidates, ["/usr/bin/ls", "/bin/ls"]);
    assert.deepEqual(execCandidates("./x", "/bin"), ["./x"]);
    assert.deepEqual(execCandidates("x", undefined), ["/bin/x", "/usr/bin/x"]);
  });

  it("uses a private tmpfs for /tmp with -t", () => {
    const p = plan(opts({ privateTmp: true }), facts(image()));
    assert.ok(find(p.ops, "tmpfs").some((t) => t.dst === `${IMG}/tmp`));
    assert.ok(!find(p.ops, "bind").some((b) => b.src === "/scratch"));
  });

  it("binds the host's $TMPDIR at /tmp (Slurm's per-job one), else its /tmp", () => {
    const bind = (p: ReturnType<typeof plan>) => find(p.ops, "bind").find((b) => b.dst === `${IMG}/tmp`)?.src;
    assert.equal(bind(plan(opts(), facts(image()))), "/scratch");
    assert.equal(bind(plan(opts(), facts(image(), { env: { PATH: "/bin" } }))), "/tmp");
    assert.equal(bind(plan(opts(), facts(image(), { env: { TMPDIR: "" } }))), "/tmp");
    assert.equal(bind(plan(opts(), facts(image({ "/home/alice/t": { dir: true } }), { env: { TMPDIR: "t" } }))), "/home/alice/t");
    assert.throws(
      () => plan(opts(), facts(image(), { env: { TMPDIR: "/gone" } })),
      (e: ChError) => e.message === "can't bind: source not found: /gone" && e.errno === 2,
    );
    assert.doesNotThrow(() => plan(opts({ privateTmp: true }), facts(image(), { env: { TMPDIR: "/gone" } })));
  });

  it("puts the overlay's upper layer in the staging tmpfs with -W", () => {
    const p = plan(opts({ writeFake: "4m" }), facts(image()));
    const ov = find(p.ops, "overlay")[0];
    assert.deepEqual(ov, {
      op: "overlay",
      lower: IMG,
      upper: `${IMG}/dev/upper`,
      work: `${IMG}/dev/work`,
      dst: `${IMG}/dev/merged`,
    });
    assert.equal(find(p.ops, "tmpfs")[0].options, "size=4m,mode=0700");
    assert.ok(find(p.ops, "bind").some((b) => b.dst === `${IMG}/dev/merged/proc`));
    assert.deepEqual(find(p.ops, "pivot")[0], { op: "pivot", root: `${IMG}/dev/merged` });
    assert.equal(find(p.ops, "remount-ro").length, 0);
    assert.equal(find(p.ops, "umount").length, 0, "the staging tmpfs holds the overlay");
  });

  it("mounts $HOME at /home/$USER with --home, beside the image's own /home", () => {
    // --home implies -W (options.ts): /home/alice is made in the overlay, /home stays the image's.
    const t = image({ "home/bob/f": "" });
    const p = plan(opts({ home: true, writeFake: "12%" }), facts(t));
    const merged = `${IMG}/dev/merged`;
    assert.ok(!find(p.ops, "tmpfs").some((x) => x.dst.endsWith("/home")), "no tmpfs hides the image's /home");
    assert.deepEqual(
      find(p.ops, "mkdir").map((m) => m.path),
      [`${IMG}/dev/upper`, `${IMG}/dev/work`, merged, `${merged}/home/alice`],
    );
    assert.ok(find(p.ops, "bind").some((b) => b.src === "/home/alice" && b.dst === `${merged}/home/alice`));
    assert.ok(find(p.ops, "exec")[0].env.includes("HOME=/home/alice"));
    // An image without /home gets one in the overlay; one with /home/alice keeps it as the mount point.
    const bare = image();
    delete bare[`${IMG}/home`];
    const made = plan(opts({ home: true, writeFake: "12%" }), facts(bare));
    assert.deepEqual(
      find(made.ops, "mkdir")
        .slice(3)
        .map((m) => m.path),
      [`${merged}/home`, `${merged}/home/alice`],
    );
    const has = plan(opts({ home: true, writeFake: "12%" }), facts(image({ "home/alice": { dir: true } })));
    assert.equal(find(has.ops, "mkdir").length, 3);
    assert.throws(() => plan(opts({ home: true }), facts(image(), { env: {} })), /--home failed: \$HOME not set/);
    assert.throws(() => plan(opts({ home: true }), facts(image())), /^Error: can't mkdir: \/var\/tmp\/img\/home\/alice$/);
  });

  it("binds the user's directories, following image symlinks inside the image", () => {
    const t = image({ data: { link: "/mnt/0" }, rel: { link: "../mnt/0" } });
    const p = plan(
      opts({
        binds: [
          { src: "x", dst: "/data" },
          { src: "/home/alice/x", dst: "/rel" },
        ],
      }),
      facts(t),
    );
    const b = find(p.ops, "bind").slice(-2);
    assert.deepEqual(
      b.map((x) => `${x.src}>${x.dst}`),
      [`/home/alice/x>${IMG}/mnt/0`, `/home/alice/x>${IMG}/mnt/0`],
    );
  });

  it("refuses binds Charliecloud refuses, in its words", () => {
    const f = facts(image());
    const msg = (o: Partial<RunOptions>, ff = f) => {
      try {
        plan(opts(o), ff);
      } catch (e) {
        return `${(e as ChError).message} [${(e as ChError).errno}]`;
      }
      return "no error";
    };
    assert.equal(msg({ binds: [{ src: "/nope", dst: "/mnt/0" }] }), "can't bind: source not found: /nope [2]");
    // Read-only image: mkdir(2) would say EROFS.
    assert.equal(msg({ binds: [{ src: "/tmp", dst: "/new/a" }] }), `can't mkdir: ${IMG}/new [30]`);
    assert.equal(
      msg({ write: true, binds: [{ src: "/tmp", dst: "/tmp/sub/x" }] }),
      `can't mkdir: ${IMG}/tmp/sub under existing bind-mount ${IMG}/tmp [0]`,
    );
    assert.equal(
      msg({ binds: [{ src: "/tmp", dst: "/proc/x" }] }),
      `can't mkdir: ${IMG}/proc/x under existing bind-mount ${IMG}/proc [0]`,
    );
    const w = plan(opts({ write: true, binds: [{ src: "/tmp", dst: "/a/b" }] }), f);
    assert.deepEqual(
      find(w.ops, "mkdir").map((m) => m.path),
      [`${IMG}/a`, `${IMG}/a/b`],
    );
    // In a tmpfs of ch-run's own (-t), a mount point can be made even in a read-only image.
    const t = plan(opts({ privateTmp: true, binds: [{ src: "/tmp", dst: "/tmp/x" }] }), f);
    assert.deepEqual(
      find(t.ops, "mkdir").map((m) => m.path),
      [`${IMG}/tmp/x`],
    );
  });

  it("fails on a broken image as Charliecloud does: a required destination missing, a wrong type at mount(2)", () => {
    for (const [path, dst] of [
      ["etc/passwd", "/etc/passwd"],
      ["etc/group", "/etc/group"],
      ["proc", "/proc"],
      ["sys", "/sys"],
      ["tmp", "/tmp"],
      ["dev", "/dev"],
    ]) {
      const t = image();
      delete t[`${IMG}/${path}`];
      assert.throws(
        () => plan(opts(), facts(t)),
        (e: unknown) => e instanceof ChError && e.message === `can't bind: destination not found: ${IMG}${dst}` && e.errno === 0,
        path,
      );
    }
    const noPasswd = image();
    delete noPasswd[`${IMG}/etc/passwd`];
    assert.doesNotThrow(() => plan(opts({ noPasswd: true }), facts(noPasswd)));
    // /dev a file: said before anything is mounted, as mount(2) would.
    assert.throws(
      () => plan(opts(), facts(image({ dev: "" }))),
      (e: ChError) => e.message === `can't bind /dev to ${IMG}/dev` && e.errno === 20,
    );
    // Other type mismatches are bound all the same, and fail at mount(2) with ENOTDIR: the
    // image's /etc/hosts a directory, its /tmp a file.
    const p = plan(opts(), facts(image({ "etc/hosts": { dir: true }, tmp: "" })));
    const bind = (dst: string) => find(p.ops, "bind").find((b) => b.dst === `${IMG}${dst}`);
    assert.equal(bind("/etc/hosts")?.what, `can't bind /etc/hosts to ${IMG}/etc/hosts`);
    assert.equal(bind("/tmp")?.what, `can't bind /scratch to ${IMG}/tmp`);
    const rec = new Recorder();
    execute(p.ops, rec);
    assert.ok(rec.calls.includes(`mount /etc/hosts ${IMG}/etc/hosts - MS_BIND|MS_REC`));
  });

  it("binds optional host files when both sides have them, following the host's symlinks", () => {
    const f = facts(image({ "etc/resolv.conf": "", "etc/machine-id": "" }), {
      fs: new MemFs({
        ...image({ "etc/resolv.conf": "", "etc/machine-id": "" }),
        "/dev/null": { other: true },
        "/proc/self": { dir: true },
        "/sys/kernel": { dir: true },
        "/scratch": { dir: true },
        "/home/alice/x": "",
        "/etc/hosts": "h",
        "/etc/resolv.conf": { link: "../run/resolv.conf" },
        "/run/resolv.conf": "nameserver 127.0.0.53",
        "/etc/machine-id": { link: "/nowhere" },
      }),
    });
    const srcs = find(plan(opts(), f).ops, "bind").map((b) => b.src);
    assert.ok(srcs.includes("/etc/resolv.conf"), "through the host's symlink");
    assert.ok(!srcs.includes("/etc/machine-id"), "a dangling host symlink is not there");
    assert.ok(srcs.includes("/etc/hosts"));
  });

  describe("PMIx's shared store (srun --mpi=pmix)", () => {
    const spool = "/var/lib/slurm/slurmd";
    const server = `${spool}/pmix.7.0`;
    const pmixEnv = { PATH: "/usr/bin", PMIX_SERVER_TMPDIR: `${server}/` };
    const hostTree: Record<string, MemNode> = { [`${server}/pmix_dstor_ds12_1`]: { dir: true } };
    const envOf = (p: ReturnType<typeof plan>) =>
      new Map(find(p.ops, "exec")[0].env.map((e) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)]));

    it("binds the spool where the image has that directory", () => {
      const p = plan(opts(), facts(image({ [`${IMG}${spool}`]: { dir: true }, ...hostTree }), { env: pmixEnv }));
      assert.ok(find(p.ops, "bind").some((b) => b.src === spool && b.dst === `${IMG}${spool}`));
      assert.equal(envOf(p).get("PMIX_MCA_gds"), undefined);
    });

    it("makes the directory in a writable image, and binds it", () => {
      const p = plan(opts({ write: true }), facts(image(hostTree), { env: pmixEnv }));
      assert.deepEqual(
        find(p.ops, "mkdir").map((m) => m.path),
        ["/var", "/var/lib", "/var/lib/slurm", spool].map((d) => `${IMG}${d}`),
      );
      assert.ok(find(p.ops, "bind").some((b) => b.src === spool));
    });

    it("falls back to PMIx's per-process store in a read-only image without it, unless the user chose one", () => {
      const p = plan(opts({ verbosity: 1 }), facts(image(hostTree), { env: pmixEnv }));
      assert.ok(!find(p.ops, "bind").some((b) => b.src === spool));
      assert.deepEqual(find(p.ops, "mkdir"), []);
      assert.equal(envOf(p).get("PMIX_MCA_gds"), "hash");
      assert.ok(p.log.some((l) => l.includes(`PMIx server directory ${server} not in the container`)));
      const mine = plan(opts(), facts(image(hostTree), { env: { ...pmixEnv, PMIX_MCA_gds: "ds21" } }));
      assert.equal(envOf(mine).get("PMIX_MCA_gds"), "ds21");
    });

    it("does nothing when the container sees the directory (mpirun's, under /tmp) or there is none", () => {
      const tmpEnv = { PATH: "/usr/bin", PMIX_SERVER_TMPDIR: "/tmp/prte.x" };
      const p = plan(opts(), facts(image({ "/tmp/prte.x": { dir: true } }), { env: tmpEnv }));
      assert.equal(envOf(p).get("PMIX_MCA_gds"), undefined);
      const gone = plan(opts(), facts(image(), { env: pmixEnv }));
      assert.equal(envOf(gone).get("PMIX_MCA_gds"), undefined);
      assert.equal(find(gone.ops, "bind").length, find(plan(opts(), facts(image())).ops, "bind").length);
    });
  });
});

describe("execute", () => {
  it("turns a plan into system calls", () => {
    const rec = new Recorder();
    execute(plan(opts({ cd: "work" }), facts(image())).ops, rec);
    assert.equal(rec.calls[0], "mount - / - MS_REC|MS_PRIVATE");
    assert.ok(rec.calls.includes(`mount /dev ${IMG}/dev - MS_BIND|MS_REC`));
    assert.ok(rec.calls.includes(`mount - ${IMG} - MS_RDONLY|MS_NOSUID|MS_NODEV|MS_REMOUNT|MS_BIND|MS_RELATIME`));
    const pivot = rec.calls.indexOf(`chdir ${IMG}`);
    assert.deepEqual(rec.calls.slice(pivot, pivot + 9), [
      `chdir ${IMG}`,
      "pivot_root . .",
      "umount . MNT_DETACH",
      "chdir /",
      "unshare CLONE_NEWUSER",
      'write /proc/self/setgroups "deny"',
      'write /proc/self/uid_map "1000 0 1\\n"',
      'write /proc/self/gid_map "1000 0 1\\n"',
      "chdir /work",
    ]);
    assert.match(rec.calls[rec.calls.length - 1], /^execve \/usr\/bin\/ls\|\/bin\/ls \["ls","-l"\]$/);
  });
});

describe("prefixed file system view", () => {
  it("reads paths under the root through the prefix, others as they are", () => {
    const fs = prefixedFs(new MemFs({ "/proc/7/root/mnt/etc/passwd": "p", "/etc/hosts": "h" }), "/mnt", "/proc/7/root");
    assert.equal(fs.readFile("/mnt/etc/passwd"), "p");
    assert.equal(fs.lstat("/mnt")?.type, "dir");
    assert.equal(fs.readFile("/etc/hosts"), "h");
    assert.equal(fs.lstat("/mntx"), null);
  });
});

describe("container view", () => {
  it("resolves paths through binds and symlinks without leaving the image", () => {
    const v = new ContainerView(IMG, new MemFs(image({ up: { link: "../../../.." }, "host/f": "", "/srv/data/y": "" })));
    assert.equal(v.resolve("/up/etc/passwd").path, "/etc/passwd");
    v.mounts.push({ dst: "/mnt/0", src: "/srv/data" });
    const r = v.resolve("/mnt/0/y");
    assert.equal(r.host, "/srv/data/y");
    assert.equal(r.under?.dst, "/mnt/0");
    const missing = v.resolve("/mnt/0/z/w");
    assert.equal(missing.missing, "/mnt/0/z");
    assert.equal(missing.type, null);
  });
});

describe("remembering file system view", () => {
  it("plans the same as the file system it wraps, looking each path up once", () => {
    const mem = new MemFs({ ...image(), "/dev/null": { other: true }, "/tmp": { dir: true }, "/scratch": { dir: true } });
    const asked = new Map<string, number>();
    const counting: HostFs = {
      lstat: (p) => {
        asked.set(`l ${p}`, (asked.get(`l ${p}`) ?? 0) + 1);
        return mem.lstat(p);
      },
      stat: (p) => {
        asked.set(`s ${p}`, (asked.get(`s ${p}`) ?? 0) + 1);
        return mem.stat(p);
      },
      readlink: (p) => mem.readlink(p),
      readFile: (p) => mem.readFile(p),
    };
    const o = opts({ binds: [{ src: "/scratch", dst: "/mnt/0" }] });
    const direct = plan(o, facts({}, { fs: mem }));
    const remembered = plan(o, facts({}, { fs: rememberingFs(counting) }));
    assert.deepEqual(remembered, direct);
    assert.ok(asked.size > 5);
    for (const [what, n] of asked) assert.equal(n, 1, what);
  });
});

describe("plan: an overlay of build layers as the image root (ch-image build's RUN)", () => {
  const L = (n: string) => `/s/cache/layers/${n}`;
  /** The base layer has the image; layer "run1" deleted /etc/hosts and replaced /home (opaque). */
  function layered(): HostFacts {
    const tree: Record<string, MemNode> = {
      "/dev/null": { other: true },
      "/proc/self": { dir: true },
      "/sys/kernel": { dir: true },
      "/etc/hosts": "h",
      "/etc/resolv.conf": "r",
      "/tmp": { dir: true },
      "/scratch": { dir: true },
      "/s/tmp/mnt": { dir: true },
      "/s/tmp/upper/new": "",
      "/s/tmp/work": { dir: true },
    };
    for (const d of ["dev", "proc", "sys", "tmp", "home/old", "root", "mnt/0", "bin"]) tree[`${L("base")}/${d}`] = { dir: true };
    tree[`${L("base")}/etc/hosts`] = "";
    tree[`${L("base")}/etc/resolv.conf`] = "";
    tree[`${L("run1")}/etc/hosts`] = { whiteout: true };
    tree[`${L("run1")}/home/new`] = { dir: true };
    tree[`${L("run1")}/etc/motd`] = "hi";
    const fs = new MemFs(tree);
    const lf = layeredFs(fs, "/s/tmp/mnt", ["/s/tmp/upper", L("run1"), L("base")], new Set([`${L("run1")}/home`]));
    return facts({}, { image: { root: "/s/tmp/mnt", mountFlags: 4096, readOnly: false }, fs: lf });
  }

  it("mounts the overlay at the image path instead of binding it; binds see the merged tree", () => {
    const o = opts({
      write: true,
      noPasswd: true,
      layers: { lower: [L("run1"), L("base")], upper: "/s/tmp/upper", work: "/s/tmp/work" },
    });
    const p = plan(o, layered());
    assert.deepEqual(p.ops[1], {
      op: "overlay",
      lower: `${L("run1")}:${L("base")}`,
      upper: "/s/tmp/upper",
      work: "/s/tmp/work",
      dst: "/s/tmp/mnt",
      what: "can't mount build layers at /s/tmp/mnt (overlayfs with userxattr needs Linux 5.11 or later)",
    });
    assert.equal(p.ops.filter((x) => x.op === "bind" && x.src === "/s/tmp/mnt").length, 0);
    const binds = p.ops.flatMap((x) => (x.op === "bind" ? [x.dst] : []));
    assert.ok(binds.includes("/s/tmp/mnt/etc/resolv.conf"), "a lower layer's file is seen");
    assert.ok(!binds.includes("/s/tmp/mnt/etc/hosts"), "a whiteout hides the lower layer's /etc/hosts");
    const r = new Recorder();
    execute(p.ops.slice(0, 2), r);
    assert.match(
      r.calls.join("\n"),
      /lowerdir=\/s\/cache\/layers\/run1:\/s\/cache\/layers\/base,upperdir=\/s\/tmp\/upper,workdir=\/s\/tmp\/work,userxattr/,
    );
  });

  it("layeredFs: top layer decides, whiteouts hide, opaque directories don't merge, links are read in their layer", () => {
    const f = layered().fs;
    assert.equal(f.lstat("/s/tmp/mnt/new")?.type, "file"); // the upper layer
    assert.equal(f.readFile("/s/tmp/mnt/etc/motd"), "hi");
    assert.equal(f.lstat("/s/tmp/mnt/etc/hosts"), null);
    assert.equal(f.lstat("/s/tmp/mnt/etc/resolv.conf")?.type, "file");
    assert.equal(f.lstat("/s/tmp/mnt/home/new")?.type, "dir");
    assert.equal(f.lstat("/s/tmp/mnt/home/old"), null, "opaque /home hides the base layer's");
    assert.equal(f.lstat("/s/tmp/mnt/nope"), null);
    assert.equal(f.lstat("/s/tmp/mnt")?.type, "dir");
    assert.equal(f.lstat("/etc/hosts")?.type, "file", "paths outside the image are the host's");
    const links = layeredFs(
      new MemFs({ "/u/x": { dir: true }, "/l/a": { link: "b" }, "/l/b": "B", "/m": { dir: true } }),
      "/m",
      ["/u", "/l"],
      new Set(),
    );
    assert.equal(links.readlink("/m/a"), "b");
    assert.equal(links.stat("/m/a")?.type, "file");
    assert.equal(links.readFile("/m/b"), "B");
    assert.throws(() => links.readlink("/m/zz"), /ENOENT/);
  });

  it("refuses layer paths overlayfs can't take, too many layers for one mount, and none", () => {
    const base = { upper: "/s/u", work: "/s/w" };
    for (const bad of ["/s/a,b", "/s/a:b", "/s/a\\b"])
      assert.throws(
        () => plan(opts({ write: true, layers: { ...base, lower: [bad] } }), layered()),
        /can't use as an overlay layer/,
      );
    const many = Array.from({ length: 60 }, (_, i) => `/storage/dlcache/build-cache/layers/${String(i).padStart(64, "0")}`);
    assert.throws(() => overlayOptions(many, "/s/u", "/s/w"), /too many overlay layers for one mount: 60/);
    assert.throws(() => plan(opts({ write: true, layers: { ...base, lower: [] } }), layered()), /no lower layer/);
  });
});
