// Root emulation's seccomp filter, run through a classic-BPF interpreter written here (the
// kernel's semantics for the instructions a seccomp filter may use), for both architectures;
// its installation as ops of the launcher's program; --seccomp in the plan.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { execute } from "../../src/container/execute.ts";
import { MemFs } from "../../src/container/hostfs.ts";
import { parseRunArgs } from "../../src/container/options.ts";
import { defaultRunOptions, planJoin } from "../../src/container/plan.ts";
import { notifyKernel, SETXATTR, seccompFilter } from "../../src/container/seccomp.ts";
import { type Arch, AUDIT_ARCH, SYSCALLS } from "../../src/sys/arch.ts";
import { OP_SUPERVISE, ProgramBuilder } from "../../src/sys/program.ts";
import { Recorder } from "../../src/sys/syscalls.ts";

const ALLOW = 0x7fff0000;
const ERRNO = 0x00050000;
const KILL_PROCESS = 0x80000000;
const USER_NOTIF = 0x7fc00000;

/** struct seccomp_data: nr, arch, instruction_pointer, args[6] (little-endian). */
function data(nr: number, arch: number, args: number[] = []): DataView {
  const dv = new DataView(new ArrayBuffer(64));
  dv.setInt32(0, nr, true);
  dv.setUint32(4, arch, true);
  args.forEach((a, i) => {
    dv.setBigUint64(16 + 8 * i, BigInt(a), true);
  });
  return dv;
}

/** Runs a classic BPF program on seccomp_data: what the kernel's filter returns. */
function runBpf(prog: Uint8Array, d: DataView): number {
  assert.equal(prog.length % 8, 0);
  const n = prog.length / 8;
  assert.ok(n > 0 && n <= 4096, "BPF_MAXINSNS");
  const p = new DataView(prog.buffer, prog.byteOffset, prog.byteLength);
  let a = 0;
  let x = 0;
  let pc = 0;
  for (let steps = 0; steps < 10000; steps++) {
    assert.ok(pc < n, `pc ${pc} past the end`);
    const code = p.getUint16(8 * pc, true);
    const jt = p.getUint8(8 * pc + 2);
    const jf = p.getUint8(8 * pc + 3);
    const k = p.getUint32(8 * pc + 4, true);
    pc++;
    const cls = code & 7;
    const src = code & 8 ? x : k;
    switch (cls) {
      case 0: // LD
        assert.equal(code, 0x20, "only BPF_LD|BPF_W|BPF_ABS");
        assert.ok(k % 4 === 0 && k + 4 <= 64, `load offset ${k}`);
        a = d.getUint32(k, true);
        break;
      case 1: // LDX
        assert.equal(code, 0x01, "BPF_LDX|BPF_W|BPF_IMM");
        x = k;
        break;
      case 4: // ALU
        switch (code & 0xf0) {
          case 0x50:
            a = (a & src) >>> 0;
            break;
          case 0x40:
            a = (a | src) >>> 0;
            break;
          default:
            assert.fail(`ALU op ${code}`);
        }
        break;
      case 5: {
        // JMP
        const op = code & 0xf0;
        if (op === 0x00) {
          pc += k;
          break;
        }
        const cond =
          op === 0x10 ? a === src : op === 0x20 ? a > src : op === 0x30 ? a >= src : op === 0x40 ? (a & src) !== 0 : null;
        assert.ok(cond !== null, `jump op ${code}`);
        pc += cond ? jt : jf;
        break;
      }
      case 6: // RET
        assert.equal(code, 0x06, "BPF_RET|BPF_K");
        return k;
      default:
        assert.fail(`instruction class ${cls}`);
    }
  }
  assert.fail("no return");
}

const S_IFREG = 0o100000;
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFSOCK = 0o140000;

const FAKED_BOTH = [
  "fchown",
  "fchownat",
  "setuid",
  "setgid",
  "setreuid",
  "setregid",
  "setresuid",
  "setresgid",
  "setfsuid",
  "setfsgid",
  "setgroups",
  "capset",
  "kexec_load",
] as const;

for (const arch of ["x64", "arm64"] as Arch[]) {
  describe(`seccomp filter (${arch})`, () => {
    const f = seccompFilter(arch);
    const nr = SYSCALLS[arch];
    const me = AUDIT_ARCH[arch];
    const run = (n: number, args: number[] = [], a = me) => runBpf(f, data(n, a, args));

    it("fakes the chown and set*id families, setgroups, capset and kexec_load (return 0)", () => {
      for (const name of FAKED_BOTH) assert.equal(run(nr[name], [0, 1234, 1234]), ERRNO | 0, name);
      if (arch === "x64") {
        for (const name of ["chown", "lchown", "mknod"] as const) assert.ok(nr[name] !== undefined, name);
        assert.equal(run(92), ERRNO | 0, "chown");
        assert.equal(run(94), ERRNO | 0, "lchown");
      } else for (const name of ["chown", "lchown", "mknod"] as const) assert.equal(nr[name], undefined, name);
    });

    it("fakes mknod(at) of a device only", () => {
      const at = (mode: number) => run(nr.mknodat, [-100, 0x1000, mode, 0x103]);
      assert.equal(at(S_IFCHR | 0o666), ERRNO | 0);
      assert.equal(at(S_IFBLK | 0o600), ERRNO | 0);
      assert.equal(at(S_IFREG | 0o644), ALLOW, "regular file passes through");
      assert.equal(at(S_IFIFO | 0o644), ALLOW, "FIFO passes through");
      assert.equal(at(S_IFSOCK | 0o644), ALLOW, "socket passes through (S_IFSOCK shares S_IFCHR's bit)");
      assert.equal(at(0o644), ALLOW, "mode 0: a regular file");
      // The mode is the third argument of mknodat, not the second (the path pointer).
      assert.equal(run(nr.mknodat, [-100, S_IFCHR, S_IFREG, 0]), ALLOW);
      if (arch === "x64") {
        const mknod = nr.mknod as number;
        assert.equal(run(mknod, [0x1000, S_IFCHR | 0o666, 0x103]), ERRNO | 0);
        assert.equal(run(mknod, [0x1000, S_IFIFO | 0o666, 0]), ALLOW);
        assert.equal(run(mknod, [0x1000, S_IFREG, S_IFCHR]), ALLOW, "mode is mknod's second argument");
      }
    });

    it("allows everything else", () => {
      for (const n of [nr.read, nr.write, nr.openat, nr.execve, nr.mount, nr.setxattr, nr.mkdirat, nr.prctl, nr.seccomp])
        assert.equal(run(n), ALLOW, `nr ${n}`);
      for (const n of [0, 1, 500, 1023, 0x3fffffff]) {
        const faked = [...FAKED_BOTH.map((k) => nr[k]), nr.chown, nr.lchown, nr.mknod, nr.mknodat];
        if (!faked.includes(n)) assert.equal(run(n), ALLOW, `nr ${n}`);
      }
    });

    it("lets another ABI's calls through unfiltered (as without emulation)", () => {
      const other = arch === "x64" ? 0x40000003 /* AUDIT_ARCH_I386 */ : 0x40000028; /* AUDIT_ARCH_ARM */
      assert.equal(run(nr.setuid, [0], other), ALLOW);
      assert.equal(run(nr.fchown, [0], other), ALLOW);
      assert.equal(run(nr.setuid, [0], arch === "x64" ? AUDIT_ARCH.arm64 : AUDIT_ARCH.x64), ALLOW);
    });

    if (arch === "x64")
      it("refuses x32 calls (EPERM): no way around the filter through __X32_SYSCALL_BIT", () => {
        const X32 = 0x40000000;
        assert.equal(run(X32 | 92), ERRNO | 1, "x32 chown");
        assert.equal(run(X32 | 105), ERRNO | 1, "x32 setuid");
        assert.equal(run(X32 | 0), ERRNO | 1, "any x32 call");
        assert.notEqual(run(X32 | 92), KILL_PROCESS);
      });
    else
      it("has no x32 case on aarch64 (nr with bit 30 is just an unknown call)", () => {
        assert.equal(run(0x40000000 | nr.setuid), ALLOW);
      });

    describe("with the supervisor (POSIX ACLs)", () => {
      const g = seccompFilter(arch, true);
      const runN = (n: number, args: number[] = [], a = me) => runBpf(g, data(n, a, args));

      it("sends the setxattr family, and nothing else, to the supervisor", () => {
        const numbers = SETXATTR.map((k) => nr[k]);
        assert.deepEqual(numbers, arch === "x64" ? [188, 189, 190, 463] : [5, 6, 7, 463]);
        for (const n of numbers) {
          assert.equal(runN(n, [0x1000, 0x2000, 0x3000, 28, 0]), USER_NOTIF, `nr ${n}`);
          assert.equal(run(n, [0x1000, 0x2000, 0x3000, 28, 0]), ALLOW, `nr ${n} without the supervisor`);
        }
        for (const k of ["getxattr", "removexattr"] as const) {
          const n = { x64: { getxattr: 191, removexattr: 197 }, arm64: { getxattr: 8, removexattr: 14 } }[arch][k];
          assert.equal(runN(n), ALLOW, k);
        }
        for (let n = 0; n < 600; n++)
          if (!numbers.includes(n)) assert.equal(runN(n, [0, S_IFCHR, S_IFCHR]), run(n, [0, S_IFCHR, S_IFCHR]), `nr ${n}`);
      });

      it("still fakes what the filter without it fakes", () => {
        for (const name of FAKED_BOTH) assert.equal(runN(nr[name], [0, 1234, 1234]), ERRNO | 0, name);
        assert.equal(runN(nr.mknodat, [-100, 0x1000, S_IFCHR | 0o666, 0x103]), ERRNO | 0);
        assert.equal(runN(nr.mknodat, [-100, 0x1000, S_IFIFO | 0o666, 0]), ALLOW);
      });

      it("lets another ABI's setxattr through; refuses x32's (EPERM) on x86-64", () => {
        const other = arch === "x64" ? 0x40000003 : 0x40000028;
        assert.equal(runN(nr.setxattr, [0, 0], other), ALLOW);
        if (arch === "x64") {
          assert.equal(runN(0x40000000 | nr.setxattr), ERRNO | 1);
          assert.equal(runN(0x40000000 | nr.fsetxattr), ERRNO | 1);
        }
      });
    });
  });
}

describe("seccomp supervisor: kernel and plan", () => {
  it("needs Linux 5.9 (CONTINUE and the listener's EPOLLHUP)", () => {
    for (const r of ["5.9.0", "5.10.0-28-amd64", "5.14.0-427.el9.x86_64", "6.1.0-18-arm64", "6.18.44-fc-v657", "10.0"])
      assert.equal(notifyKernel(r), true, r);
    for (const r of ["5.8.18", "5.4.0-150-generic", "4.18.0-553.el8_10.x86_64", "3.10.0-1160.el7.x86_64", "", "x"])
      assert.equal(notifyKernel(r), false, r);
  });

  it("--seccomp plans the supervisor on a recent kernel or an unknown one; else the filter alone, with a warning", () => {
    const opts = { ...defaultRunOptions(["true"]), seccomp: true };
    const plan = (kernel: string | undefined, o = opts) =>
      planJoin(o, { env: { PATH: "/bin" }, user: "u", fs: new MemFs({}), kernel }, "/proc/1/root");
    for (const k of ["6.1.0", "5.9.0", undefined]) {
      const p = plan(k);
      assert.deepEqual(
        p.ops.find((o) => o.op === "seccomp"),
        { op: "seccomp", notify: true, warn: true },
      );
      assert.deepEqual(p.warnings, []);
    }
    const old = plan("5.4.0-150-generic");
    assert.deepEqual(
      old.ops.find((o) => o.op === "seccomp"),
      { op: "seccomp", notify: false, warn: true },
    );
    assert.deepEqual(old.warnings, [
      "--seccomp: Linux 5.4.0-150-generic can't fake POSIX ACLs (needs 5.9 or later): setting them fails as without --seccomp",
    ]);
    // -qq: no warning from the launcher either (ch-run prints none at that level).
    assert.deepEqual(
      plan("6.1.0", { ...opts, verbosity: -2 }).ops.find((o) => o.op === "seccomp"),
      { op: "seccomp", notify: true, warn: false },
    );
    assert.equal(plan("6.1.0", { ...opts, verbosity: -1 }).ops.find((o) => o.op === "seccomp")?.op, "seccomp");
  });

  it("executes as seccompNotify(filter with the supervisor, filter without it, warning)", () => {
    const r = new Recorder();
    const n = seccompFilter("x64", true).length / 8;
    const m = seccompFilter("x64").length / 8;
    execute([{ op: "seccomp", notify: true, warn: true }], r, "x64");
    execute([{ op: "seccomp", notify: true, warn: false }], r, "x64");
    execute([{ op: "seccomp", notify: false, warn: true }], r, "x64");
    assert.deepEqual(r.calls, [
      `seccomp ${n} instructions, supervised (else ${m}, warning)`,
      `seccomp ${n} instructions, supervised (else ${m})`,
      `seccomp ${m} instructions`,
    ]);
    assert.equal(n, m + SETXATTR.length + 1, "one jump per call and one return");
  });
});

describe("seccomp filter installation", () => {
  it("is prctl(PR_SET_NO_NEW_PRIVS) then seccomp(SECCOMP_SET_MODE_FILTER, 0, &sock_fprog), relocated", () => {
    for (const arch of ["x64", "arm64"] as Arch[]) {
      const b = new ProgramBuilder(arch);
      const filter = seccompFilter(arch);
      b.seccomp(filter, { what: "can't install seccomp(2) filter" });
      assert.deepEqual(
        b.ops.map((o) => o.nr),
        [SYSCALLS[arch].prctl, SYSCALLS[arch].seccomp],
      );
      assert.deepEqual(b.ops[0].args, [38, 1, 0, 0, 0]);
      const base = 0x7000_0000n;
      const bytes = b.serialize(base);
      const dv = new DataView(bytes.buffer);
      const op1 = 3 + 10;
      assert.equal(dv.getBigInt64(8 * (op1 + 1), true), 1n, "SECCOMP_SET_MODE_FILTER");
      assert.equal(dv.getBigInt64(8 * (op1 + 2), true), 0n);
      const fprog = Number(dv.getBigUint64(8 * (op1 + 3), true) - base);
      assert.equal(dv.getUint16(fprog, true), filter.length / 8, "sock_fprog.len: instructions");
      const at = Number(dv.getBigUint64(fprog + 8, true) - base);
      assert.ok(at > 0 && at + filter.length <= bytes.length, "sock_fprog.filter relocated into the program");
      assert.deepEqual(bytes.subarray(at, at + filter.length), filter);
    }
  });

  it("with the supervisor: prctl, then OP_SUPERVISE(&fprog, &fallback, warning, length, mapping, size)", () => {
    for (const arch of ["x64", "arm64"] as Arch[]) {
      const b = new ProgramBuilder(arch);
      const filter = seccompFilter(arch, true);
      const fallback = seccompFilter(arch);
      b.seccompNotify(filter, fallback, "no listener", { what: "can't install" });
      b.seccompNotify(filter, fallback, null, { what: "can't install" });
      assert.deepEqual(
        b.ops.map((o) => o.nr),
        [SYSCALLS[arch].prctl, OP_SUPERVISE, SYSCALLS[arch].prctl, OP_SUPERVISE],
      );
      const base = 0x7000_0000n;
      const word = (bytes: Uint8Array, op: number, arg: number) =>
        new DataView(bytes.buffer).getBigInt64(8 * (3 + 10 * op + 1 + arg), true);
      const fprog = (bytes: Uint8Array, at: bigint) => {
        const dv = new DataView(bytes.buffer);
        const off = Number(at - base);
        const f = Number(dv.getBigUint64(off + 8, true) - base);
        return bytes.subarray(f, f + dv.getUint16(off, true) * 8);
      };
      let bytes = b.serialize(base);
      assert.deepEqual(fprog(bytes, word(bytes, 1, 0)), filter);
      assert.deepEqual(fprog(bytes, word(bytes, 1, 1)), fallback);
      const text = `charliecloud[${process.pid}]: warning: no listener\n`;
      const at = Number(word(bytes, 1, 2) - base);
      assert.equal(word(bytes, 1, 3), BigInt(text.length));
      assert.equal(new TextDecoder().decode(bytes.subarray(at, at + text.length)), text);
      assert.deepEqual([word(bytes, 1, 4), word(bytes, 1, 5)], [0n, 0n], "exec.c: no mapping to keep");
      assert.deepEqual([word(bytes, 3, 2), word(bytes, 3, 3)], [0n, 0n], "no warning");
      // On the clone path, the mapping of the launcher's code and stack, known only once mapped.
      b.ownMapping = { address: 0x7f00_1234_5000n, size: 0x13000 };
      bytes = b.serialize(base);
      assert.deepEqual([word(bytes, 1, 4), word(bytes, 1, 5)], [0x7f00_1234_5000n, 0x13000n], "not relocated");
    }
  });

  it("--seccomp: a seccomp op just before the exec, in a joining peer's plan too", () => {
    const p = parseRunArgs(["--seccomp", "/img", "--", "true"]);
    assert.equal(p.kind, "run");
    if (p.kind !== "run") return;
    assert.equal(p.args.opts.seccomp, true);
    assert.equal(defaultRunOptions().seccomp, false);
    const ops = planJoin({ ...p.args.opts, cd: "/w" }, { env: {}, user: "u", fs: new MemFs({}) }, "/proc/1/root").ops;
    assert.deepEqual(
      ops.map((o) => o.op),
      ["chdir", "seccomp", "exec"],
    );
    const none = planJoin(defaultRunOptions(["true"]), { env: {}, user: "u", fs: new MemFs({}) }, "/proc/1/root").ops;
    assert.ok(!none.some((o) => o.op === "seccomp"));
  });
});
