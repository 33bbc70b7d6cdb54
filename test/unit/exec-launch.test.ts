// ch-run's fast path without privilege: the launcher's plan and payload, the host facts read
// from files, and the launcher executable itself running plans that need no namespace.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  closeSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { hostArch, SYSCALLS } from "../../src/sys/arch.ts";
import { ChError, setProgram } from "../../src/sys/errors.ts";
import { argLimit, execPayload, execProgram, launcherEnv, payloadEnv, tooBig } from "../../src/sys/exec-launch.ts";
import type { FdEntry } from "../../src/sys/fds.ts";
import { groupEntry, mountInfoFlags, passwdEntry } from "../../src/sys/hostfacts.ts";
import { helperLoadedFrom, keepOnExec, loadHelper } from "../../src/sys/keepfd.ts";
import { blobs } from "../../src/sys/native/blobs.ts";
import { keepfdBlobs } from "../../src/sys/native/keepfd-blob.ts";
import { identity } from "../../src/sys/private-file.cjs";
import { ProgramBuilder } from "../../src/sys/program.ts";

const nr = SYSCALLS[hostArch()];

describe("host facts from files", () => {
  const info = [
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
    "30 22 0:5 / /srv/ro\\040dir ro,nosuid,nodev,noatime shared:2 - ext4 /dev/sdb1 rw",
    "31 22 0:6 / /srv/img rw,nosuid shared:3 - squashfs /dev/loop0 ro",
    "32 22 0:7 / /srv/over rw,noexec - tmpfs tmpfs rw",
    "33 22 0:8 / /srv/over rw,nodev - tmpfs tmpfs rw",
  ].join("\n");

  it("reads statvfs(3)'s flags from /proc/self/mountinfo", () => {
    assert.equal(mountInfoFlags(info, "/home/u/img"), 4096); // ST_RELATIME
    assert.equal(mountInfoFlags(info, "/srv/ro dir/img"), 1 | 2 | 4 | 1024); // octal escapes
    assert.equal(mountInfoFlags(info, "/srv/img/x"), 1 | 2); // read-only super block
    assert.equal(mountInfoFlags(info, "/srv/over/x"), 4); // the later of two mounts on one point
    assert.equal(mountInfoFlags(info, "/srv/imgx"), 4096); // not under /srv/img
    assert.equal(mountInfoFlags("", "/"), null);
  });

  it("finds users and groups in passwd(5) and group(5) texts", () => {
    const pw = "root:x:0:0:root:/root:/bin/sh\n+nis::::::\nalice:x:1001:1002:Alice A.:/home/alice:/bin/bash\n";
    assert.deepEqual(passwdEntry(pw, 1001), {
      name: "alice",
      uid: 1001,
      gid: 1002,
      gecos: "Alice A.",
      dir: "/home/alice",
      shell: "/bin/bash",
    });
    assert.equal(passwdEntry(pw, 4242), null);
    assert.deepEqual(groupEntry("root:x:0:\nstaff:x:1002:alice,bob\n", 1002), { name: "staff", gid: 1002 });
    assert.equal(groupEntry("root:x:0:\n", 5), null);
  });
});

describe("launcher plan", () => {
  it("makes its own namespaces and maps, runs the setup, sets no_new_privs, then execs", () => {
    const b = execProgram({
      euid: 1001,
      egid: 1002,
      nullFds: [1],
      syslog: ["/dev/log", "<14>ch-run: hello"],
      tail: "",
      env: ["A=1"],
      build(b, beforeExec) {
        b.chdir("/srv", { what: "can't cd" });
        beforeExec();
        b.execve(["/bin/true"], ["true"], [], { what: "can't execve(2): true", exit: 49 });
      },
    });
    const ops = b.ops;
    const firstHard = ops.findIndex((o) => !o.soft);
    assert.ok(
      ops.slice(0, firstHard).some((o) => o.nr === nr.sendto),
      "syslog first, and nothing of it can fail",
    );
    assert.equal(ops[firstHard].nr, nr.unshare);
    assert.equal(ops[firstHard].args[0], 0x10000000 | 0x20000);
    const written = ops
      .filter((o) => o.nr === nr.write)
      .map((o) => new TextDecoder().decode((o.args[1] as { bytes: Uint8Array }).bytes));
    assert.deepEqual(written, ["deny", "0 1001 1\n", "0 1002 1\n"]);
    const seq = ops.map((o) => o.nr);
    const nnp = ops.findIndex((o) => o.nr === nr.prctl && o.args[0] === 38);
    assert.ok(seq.indexOf(nr.chdir) < nnp && nnp < seq.indexOf(nr.dup3) && seq.indexOf(nr.dup3) < seq.indexOf(nr.execve));
    assert.ok(!seq.includes(nr.read), "no gate: nothing waits for a parent");
  });

  it("lays out a payload: header, relocations, program, one message per step that can fail", () => {
    setProgram("ch-run");
    const b = new ProgramBuilder(hostArch());
    b.execMessages = false;
    b.chdir("/nowhere", { what: "can't cd to /nowhere" });
    b.op(nr.close, [99], { what: "x" }, { soft: true });
    const p = execPayload(b, "TAIL\n");
    const w = new BigInt64Array(p.buffer, p.byteOffset, 8 + 1);
    assert.equal(Buffer.from(p.subarray(0, 8)).toString(), "CHEXEC02");
    assert.equal(w[1], 1n); // the chdir path's pointer
    const msgs = Number(w[3]);
    const table = new BigInt64Array(p.buffer.slice(p.byteOffset + msgs, p.byteOffset + msgs + 64));
    const text = (off: bigint, len: bigint) => Buffer.from(p.subarray(Number(off), Number(off + len))).toString();
    // No PID in the plan: the launcher prints NAME[ITS PID] before each message.
    assert.equal(text(w[6], w[7]), "ch-run");
    assert.equal(text(table[0], table[1]), ": error: can't cd to /nowhere");
    assert.match(text(table[2], table[3]), /^exec-launch\.test\.ts:\d+$/);
    assert.deepEqual([...table.slice(4)], [0n, 0n, 0n, 0n]); // soft: never reported
    assert.equal(text(w[4], w[5]), "TAIL\n");
  });
});

describe("launcher environment", () => {
  it("is the command's, less variables named like the launcher's, with the plan and the syslog message", () => {
    const env = launcherEnv(
      ["A=1", "B=x=y", "CH_RUN_LAUNCH_P0=forged", "CH_RUN_LAUNCH_LOG=forged"],
      { CH_RUN_LAUNCH_P0: "AAAA" },
      "msg",
    );
    assert.deepEqual(env, { A: "1", B: "x=y", CH_RUN_LAUNCH_P0: "AAAA", CH_RUN_LAUNCH_LOG: "msg" });
    assert.equal(launcherEnv([], {}, null).CH_RUN_LAUNCH_LOG, undefined);
    // A command line of any length: the message is cut, not the launch refused.
    assert.equal(launcherEnv([], {}, "m".repeat(1_000_000)).CH_RUN_LAUNCH_LOG.length, 16384);
  });

  it("is refused before execve(2) when too large, or with a string longer than execve(2) takes", () => {
    assert.equal(tooBig("/l", ["ch-run"], { A: "x".repeat(100_000) }), null);
    assert.match(
      tooBig("/l", ["ch-run"], { A: "x".repeat(131_071) }) ?? "",
      /^a string too long for the launcher's arguments \(131074 bytes\)$/,
    );
    const big = Object.fromEntries(Array.from({ length: 70 }, (_, i) => [`V${i}`, "x".repeat(100_000)]));
    assert.match(tooBig("/l", ["ch-run"], big) ?? "", /^plan too large for the launcher's arguments \(\d+ bytes\)$/);
  });
});

describe("launcher executable", () => {
  let dir: string;
  let exe: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "ch-exec-"));
    exe = join(dir, "launcher");
    writeFileSync(exe, Buffer.from(blobs[hostArch()].exec, "base64"));
    chmodSync(exe, 0o700);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const launch = (b: ProgramBuilder, tail = "") =>
    spawnSync(exe, [], { encoding: "utf8", argv0: "ch-run", env: payloadEnv(execPayload(b, tail)) });

  it("prints a failed step in Charliecloud's format, then the tail, and exits with its status", () => {
    setProgram("ch-run");
    const b = new ProgramBuilder(hostArch());
    b.execMessages = false;
    b.chdir("/", { what: "can't cd to /" });
    b.chdir("/no/such/dir", { what: "can't cd to /no/such/dir", exit: 42 });
    const r = launch(b, "ch-run[1]: warning: reprinting first 1 warning(s)\nch-run[1]: warning: w\n");
    assert.equal(r.status, 42);
    // The PID in the message is the planning process's: in ch-run, the launcher's own.
    assert.match(
      r.stderr,
      /^ch-run\[\d+\]: error: can't cd to \/no\/such\/dir: No such file or directory \(exec-launch\.test\.ts:\d+ 2\)\nch-run\[1\]: warning: reprinting first 1 warning\(s\)\nch-run\[1\]: warning: w\n$/,
    );
  });

  it("execs the command in its own process, with a plan larger than one argument, signals at their defaults", () => {
    const b = new ProgramBuilder(hostArch());
    b.execMessages = false;
    const big = ["A", "B", "C"].map((v) => `${v}=${"x".repeat(100_000)}`); // three base64 arguments
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the shell's
    const script = 'echo "$$ $((${#A} + ${#B} + ${#C}))"; grep -E "^Sig(Ign|Blk)" /proc/self/status';
    b.execve(["/bin/sh"], ["sh", "-c", script], big, { what: "can't execve(2)", exit: 49 });
    // The plan in the environment, which the shell passes on with a variable of its own or two.
    const r = spawnSync("sh", ["-c", 'trap "" PIPE; exec "$0" & echo "$!"; wait', exe], {
      env: { ...payloadEnv(execPayload(b, "")), PATH: "/usr/bin:/bin" },
      encoding: "utf8",
    });
    const lines = r.stdout.trim().split("\n");
    const pid = lines.find((l) => /^\d+$/.test(l)); // the shell's $!: in any order with the rest
    const [line, ...sigs] = lines.filter((l) => l !== pid);
    assert.equal(line, `${pid} 300000`, r.stderr);
    assert.deepEqual(sigs, ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"]);
  });

  it("refuses to run without a plan, or with a damaged one", () => {
    const r = spawnSync(exe, ["plan?"], { encoding: "utf8", env: { PATH: "/bin" } });
    assert.equal(r.status, 31);
    assert.match(r.stderr, /launcher: no plan/);
    const bad = spawnSync(exe, [], { encoding: "utf8", env: { CH_RUN_LAUNCH_P0: "A".repeat(100) } });
    assert.equal(bad.status, 31);
    assert.match(bad.stderr, /launcher: bad plan/);
  });
});

describe("descriptor helper", () => {
  let priv: string;
  let saved: string | undefined;
  before(() => {
    priv = mkdtempSync(join(tmpdir(), "ch-keepfd-"));
    saved = process.env.XDG_RUNTIME_DIR;
    process.env.XDG_RUNTIME_DIR = priv;
  });
  after(() => {
    if (saved === undefined) delete process.env.XDG_RUNTIME_DIR;
    else process.env.XDG_RUNTIME_DIR = saved;
    rmSync(priv, { recursive: true, force: true });
  });

  const cloexec = (fd: number) =>
    (Number.parseInt(/^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))?.[1] ?? "0", 8) & 0o2000000) !==
    0;

  it("clears close-on-exec, from a verified private copy of the Node-API module", () => {
    const fd = openSync(join(priv, "f"), "w"); // Node opens close-on-exec
    try {
      assert.ok(cloexec(fd));
      keepOnExec([fd]);
      assert.ok(!cloexec(fd));
      const b = keepfdBlobs[hostArch()];
      const dir = join(priv, "charliecloud");
      const [mod] = readdirSync(dir).filter((f) => f.endsWith(".node"));
      assert.match(mod, /^ch-run-keepfd-/);
      assert.equal(
        createHash("sha256")
          .update(readFileSync(join(dir, mod)))
          .digest("hex"),
        b.sha256,
      );
    } finally {
      closeSync(fd);
    }
  });

  it("says where it was loaded from, and loads from there first only while it is as it was", () => {
    assert.equal(typeof loadHelper(), "object");
    const at = helperLoadedFrom();
    assert.ok(at);
    assert.match(at.file, new RegExp(`^${priv}/charliecloud/ch-run-keepfd-`));
    assert.equal(typeof loadHelper(at), "object"); // as it was: from there
    // Changed since (a new change time), or gone: looked for as without, and found again.
    for (const stale of [
      { ...at, stamp: "not its stamp" },
      { file: join(priv, "gone.node"), stamp: at.stamp },
    ]) {
      const h = loadHelper(stale);
      assert.equal(typeof h, "object", String(h));
      assert.deepEqual(helperLoadedFrom(), at);
    }
    // As it was, but in a directory others can write (one could swap it before it is loaded):
    // not loaded from there.
    const open = join(priv, "open");
    mkdirSync(open);
    chmodSync(open, 0o777);
    const there = join(open, "helper.node");
    copyFileSync(at.file, there);
    const h = loadHelper({ file: there, stamp: identity(there, keepfdBlobs[hostArch()].sha256) });
    assert.equal(typeof h, "object", String(h));
    assert.equal(helperLoadedFrom()?.file, at.file);
  });

  // A Node process (bash's exec) that inherited descriptors of every kind, run as code: what
  // fds.ts's JavaScript listing picks, what the helper's own listing picks and keeps, and which
  // descriptors are without close-on-exec afterwards. 5 and 6: both ends of one pipe (like
  // Node's own pairs: left); 7: the single end of another (kept); 8: a regular file and 9:
  // /dev/null, both close-on-exec (Node marks 0 to 16 so at start-up); 40: a regular file and
  // 41: /dev/null, neither close-on-exec. (A pipe opened through /proc/self/fd/0 read-write is
  // the same pipe, and the open doesn't wait for a writer.)
  const fdsTs = new URL("../../src/sys/fds.ts", import.meta.url).href;
  const keepfdTs = new URL("../../src/sys/keepfd.ts", import.meta.url).href;
  const child = (
    code: string,
    redirects: string,
    env: NodeJS.ProcessEnv = { PATH: "/usr/bin:/bin", XDG_RUNTIME_DIR: priv },
    pipes = true,
  ) => {
    const exec = `exec "$0" --input-type=module -e "$1" ${redirects}`;
    const script = pipes
      ? `true | { exec 5<>/proc/self/fd/0 6<&5 0</dev/null; true | { exec 7<>/proc/self/fd/0 0</dev/null; ${exec}; }; }`
      : exec;
    const src = `import { listFds, pickInherited } from ${JSON.stringify(fdsTs)};
import { keepInheritedFds } from ${JSON.stringify(keepfdTs)};
${code}`;
    const r = spawnSync("bash", ["-c", script, process.execPath, src], { encoding: "utf8", env });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const every = "8</etc/passwd 9>/dev/null 40</etc/passwd 41>/dev/null";

  it("finds the inherited descriptors as fds.ts's listing does, and keeps them", () => {
    const r: { before: FdEntry[]; want: number[]; got: number[]; open: number[] } = child(
      `const before = listFds();
const want = pickInherited(before);
const got = keepInheritedFds();
const open = listFds().filter((e) => !e.cloexec).map((e) => e.fd);
console.log(JSON.stringify({ before, want, got, open }));`,
      every,
    );
    assert.deepEqual(r.got, r.want);
    assert.deepEqual(r.got, [7, 8, 40, 41]);
    const at = (fd: number) => r.before.find((e) => e.fd === fd);
    assert.match(at(5)?.target ?? "", /^pipe:/);
    assert.equal(at(6)?.target, at(5)?.target);
    assert.match(at(7)?.target ?? "", /^pipe:/);
    assert.deepEqual(
      [7, 8, 9, 40, 41].map((fd) => at(fd)?.cloexec),
      [true, true, true, false, false],
    );
    // Kept: close-on-exec cleared on each; on nothing else above 2.
    assert.deepEqual(
      r.open.filter((fd) => fd > 2).sort((a, b) => a - b),
      [7, 8, 40, 41],
    );
  });

  it("lists them from JavaScript where it can't be loaded: no matter without one, an error with one", () => {
    // No private directory: each place is a file.
    const none = join(priv, "no-helper");
    mkdirSync(join(none, ".cache"), { recursive: true, mode: 0o700 });
    chmodSync(none, 0o700);
    writeFileSync(join(none, `.charliecloud-${process.geteuid?.()}`), "");
    writeFileSync(join(none, ".cache", "charliecloud"), "");
    const env = { PATH: "/usr/bin:/bin", TMPDIR: none, HOME: none };
    const code = `try {
  console.log(JSON.stringify(keepInheritedFds()));
} catch (e) {
  console.log(JSON.stringify(e.message));
}`;
    // Nothing beyond stdio and Node's own: nothing to keep.
    assert.deepEqual(child(code, "", env, false), []);
    assert.match(
      child(code, every, env),
      /^can't load the descriptor helper: no private directory for the descriptor helper \(.*no-helper\/\.charliecloud-\d+: not a directory.*\)/,
    );
    // It can't be loaded: no file was written.
    assert.deepEqual(readdirSync(join(none, ".cache")), ["charliecloud"]);
  });

  it("says so when it can't list /proc/self/fd", () => {
    // A user and mount namespace of its own, /proc covered by an empty tmpfs.
    const src = `import { keepInheritedFds } from ${JSON.stringify(keepfdTs)};
import { describe as describeError } from ${JSON.stringify(new URL("../../src/sys/errors.ts", import.meta.url).href)};
try {
  console.log(keepInheritedFds());
} catch (e) {
  console.log(describeError(e));
}`;
    const r = spawnSync(
      "unshare",
      [
        "-Urm",
        "sh",
        "-c",
        'mount -t tmpfs tmpfs /proc && exec "$0" --input-type=module -e "$1" 8</etc/passwd',
        process.execPath,
        src,
      ],
      { encoding: "utf8", env: { PATH: "/usr/bin:/bin", XDG_RUNTIME_DIR: priv } },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stdout,
      /error: can't list the inherited descriptors: \/proc\/self\/fd: No such file or directory \(keepfd\.ts:\d+ 2\)\n$/,
    );
  });

  it("says which descriptor it couldn't keep, and why", () => {
    setProgram("ch-run");
    assert.throws(
      () => keepOnExec([1_000_000]),
      (e: unknown) =>
        e instanceof ChError && e.errno === 9 && /can't keep descriptor 1000000 open for the command/.test(e.message),
    );
  });
});

describe("launcher arguments", () => {
  it("takes a quarter of the stack limit, at most 6 MiB, never less than the kernel's floor", () => {
    const limits = (soft: string) =>
      `Limit                     Soft Limit           Hard Limit           Units\nMax stack size            ${soft}              unlimited            bytes\n`;
    assert.equal(argLimit(limits("8388608")), (2 << 20) - 4096);
    assert.equal(argLimit(limits("unlimited")), (6 << 20) - 4096);
    // What ch-run assumes without reading /proc/self/limits for a small plan.
    assert.equal(argLimit(limits("16384")), (128 << 10) - 4096);
  });
});
