// The sys layer's pure parts: option parsing, program layout, descriptors, error format.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { parseArgs, parseId } from "../../src/cli/getopt.ts";
import { programFor, runName } from "../../src/dispatch.ts";
import { hostArch, SYSCALLS } from "../../src/sys/arch.ts";
import { ChError, describe as describeError, formatError, setProgram, usageError } from "../../src/sys/errors.ts";
import { pickInherited } from "../../src/sys/fds.ts";
import { forwardedMask } from "../../src/sys/launch.ts";
import { blobs } from "../../src/sys/native/blobs.ts";
import { ProgramBuilder } from "../../src/sys/program.ts";
import { atSecure, privilegeProblem } from "../../src/sys/secure.ts";
import { lineAt, lineStarts, lineTable, mapPosition, siteLocation, tablePosition } from "../../src/sys/sourcemap.ts";

const SPECS = [
  { name: "bind", short: "b", arg: "required" as const, help: "" },
  { name: "verbose", short: "v", arg: "none" as const, help: "" },
  { name: "write-fake", short: "W", arg: "optional" as const, help: "" },
  { name: "set-env", arg: "optional" as const, help: "" },
];

describe("getopt", () => {
  it("parses GNU-style options in order", () => {
    const p = parseArgs(["-vvW4m", "--set-env", "-b", "/a:/b", "--set-env=X=1", "img", "--", "ls", "-l"], SPECS, 1);
    assert.deepEqual(p.opts, [
      { name: "verbose", value: null },
      { name: "verbose", value: null },
      { name: "write-fake", value: "4m" },
      { name: "set-env", value: null },
      { name: "bind", value: "/a:/b" },
      { name: "set-env", value: "X=1" },
    ]);
    assert.deepEqual(p.positionals, ["img", "ls", "-l"]);
  });

  it("ends options at the command after the image, and at --", () => {
    assert.deepEqual(parseArgs(["img", "ls", "-l"], SPECS, 1).positionals, ["img", "ls", "-l"]);
    assert.deepEqual(parseArgs(["img", "-v", "--", "x"], SPECS, 1).opts, [{ name: "verbose", value: null }]);
  });

  it("rejects bad options with the value named", () => {
    assert.throws(() => parseArgs(["--bogus"], SPECS), /unrecognized option '--bogus'/);
    assert.throws(() => parseArgs(["-x"], SPECS), /invalid option -- 'x'/);
    assert.throws(() => parseArgs(["-b"], SPECS), /option requires an argument -- 'b'/);
    assert.throws(() => parseArgs(["--verbose=3"], SPECS), /doesn't allow an argument/);
    assert.throws(() => parseId("uid", "-1"), /--uid: not a non-negative integer: -1/);
    assert.equal(parseId("gid", "5"), 5);
  });
});

describe("native launcher program", () => {
  it("lays out ops, strings and argument registers", () => {
    const b = new ProgramBuilder("x64");
    b.reportFd = 9;
    b.writeFile("/etc/x", "hi", 0o644, { what: "w" });
    b.execve(["/a/ls", "/b/ls"], ["ls"], ["A=1"], { what: "e", exit: 49 });
    const base = 0x10000n;
    const bytes = b.serialize(base);
    const w = new BigInt64Array(bytes.buffer, 0, 3 + 5 * 10);
    assert.equal(w[0], 5n);
    assert.equal(w[1], 9n);
    assert.equal(w[2], 0n, "index base of a first-stage program");
    const op = (i: number) => w.subarray(3 + i * 10, 13 + i * 10);
    assert.equal(op(0)[0], BigInt(SYSCALLS.x64.openat));
    assert.equal((op(0)[7] >> 24n) & 15n, 1n, "openat stores its result in register 0");
    assert.equal(op(1)[7] & 15n, 1n, "write takes the descriptor from register 0");
    assert.equal((op(1)[7] >> 28n) & 1n, 1n, "write must write every byte");
    assert.equal(op(1)[9], 2n);
    const path = Number(op(0)[2] - base);
    assert.equal(new TextDecoder().decode(bytes.subarray(path, path + 7)), "/etc/x\0");
    assert.equal((op(3)[7] >> 29n) & 1n, 1n, "earlier PATH candidates are soft");
    assert.equal((op(4)[7] >> 29n) & 1n, 0n, "the last one is reported");
    assert.equal((op(4)[7] >> 32n) & 255n, 49n);
    assert.equal(op(3)[2], op(4)[2], "argv laid out once");
    const argv = Number(op(4)[2] - base);
    const arg0 = Number(new DataView(bytes.buffer).getBigUint64(argv, true) - base);
    assert.equal(new TextDecoder().decode(bytes.subarray(arg0, arg0 + 3)), "ls\0", "pointers inside arrays relocated too");
  });

  it("sets no_new_privs before the command, as Charliecloud does", () => {
    const b = new ProgramBuilder("x64");
    b.beforeExec([15], [0, 1, 2], [], 7);
    const prctl = b.ops.findIndex((o) => o.nr === SYSCALLS.x64.prctl);
    assert.ok(prctl >= 0);
    assert.deepEqual(b.ops[prctl].args, [38, 1, 0, 0, 0], "PR_SET_NO_NEW_PRIVS, 1");
    assert.equal(b.ops[prctl].why.what, "can't set no_new_privs");
    assert.ok(b.ops[prctl].soft !== true, "a failure stops the command");
  });

  it("has launcher, waiter and join holder code for x86-64 and aarch64", () => {
    for (const a of ["x64", "arm64"] as const) {
      assert.ok(Buffer.from(blobs[a].launcher, "base64").length > 100);
      for (const w of [blobs[a].waiter, blobs[a].holder].map((b) => Buffer.from(b, "base64"))) {
        assert.equal(w.subarray(0, 4).toString("latin1"), "\x7fELF");
        assert.equal(w.readUInt16LE(18), a === "x64" ? 62 : 183, "ELF machine");
      }
    }
    assert.ok(["x64", "arm64"].includes(hostArch()));
  });

  it("forwards catchable signals and leaves faults alone", () => {
    const m = forwardedMask();
    for (const s of [1, 2, 3, 10, 12, 13, 14, 15, 18, 20, 28]) assert.ok(m & (1n << BigInt(s - 1)), `signal ${s}`);
    for (const s of [9, 11, 19]) assert.ok(!(m & (1n << BigInt(s - 1))), `signal ${s}`);
  });
});

describe("descriptors", () => {
  it("passes inherited descriptors and keeps Node's own", () => {
    const fds = pickInherited([
      { fd: 0, target: "/dev/pts/0", cloexec: true },
      { fd: 3, target: "anon_inode:[eventpoll]", cloexec: true },
      { fd: 5, target: "socket:[77]", cloexec: true },
      { fd: 6, target: "pipe:[9]", cloexec: true },
      { fd: 7, target: "pipe:[9]", cloexec: true },
      { fd: 8, target: "pipe:[10]", cloexec: true },
      { fd: 21, target: "/dev/null", cloexec: true },
      { fd: 30, target: "/dev/null", cloexec: false },
      { fd: 40, target: "anon_inode:[eventfd]", cloexec: false },
    ]);
    assert.deepEqual(fds, [5, 8, 30, 40]);
  });
});

describe("errors", () => {
  it("prints Charliecloud's format", () => {
    setProgram("ch-run");
    assert.match(
      formatError("can't find image: foo", 2, "ch-run.ts:10", 42),
      /^ch-run\[42\]: error: can't find image: foo: .+ \(ch-run\.ts:10 2\)$/,
    );
    assert.equal(formatError("bad", 0, "x.ts:1", 7), "ch-run[7]: error: bad (x.ts:1 0)");
    const line = describeError(new ChError("oops"));
    assert.match(line, /^ch-run\[\d+\]: error: oops \(sys\.test\.ts:\d+ 0\)$/);
  });

  it("tells usage errors without a source location", () => {
    setProgram("ch-run");
    assert.match(
      describeError(usageError("--uid: not a non-negative integer: x")),
      /^ch-run\[\d+\]: error: --uid: not a non-negative integer: x$/,
    );
    assert.throws(
      () => parseArgs(["-b"], [{ name: "bind", short: "b", arg: "required", help: "" }]),
      (e: ChError) => {
        assert.equal(e.usage, true);
        assert.doesNotMatch(describeError(e), /getopt\.ts/);
        return true;
      },
    );
  });

  it("maps bundle positions back to TypeScript lines", () => {
    // "AAAA" = (0,0,0,0); ";AACA" = next line maps to source line 2.
    const map = { sources: ["../src/a.ts", "../src/b.ts"], mappings: "AAAA;AACA;ACCA" };
    assert.equal(mapPosition(map, 1, 1), "a.ts:1");
    assert.equal(mapPosition(map, 2, 5), "a.ts:2");
    assert.equal(mapPosition(map, 3, 1), "b.ts:3");
    const t = lineTable(map);
    assert.equal(tablePosition(t, 1), "a.ts:1");
    assert.equal(tablePosition(t, 2), "a.ts:2");
    assert.equal(tablePosition(t, 3), "b.ts:3");
    assert.equal(tablePosition(t, 9), null);
  });

  it("finds a character position's line by the build's line starts", () => {
    const starts = lineStarts("ab\ncd\n\nef");
    assert.deepEqual([...starts], [0, 3, 6, 7]);
    assert.deepEqual(
      [0, 2, 3, 5, 6, 7, 9, 100].map((p) => lineAt(starts, p)),
      [1, 1, 2, 2, 3, 4, 4, 4],
    );
  });

  it("takes an error's location from the first call site outside the error plumbing", () => {
    const site = (file: string, line: number) => ({ getFileName: () => file, getLineNumber: () => line }) as NodeJS.CallSite;
    assert.equal(
      siteLocation([
        site("node:internal/x", 1),
        site("/s/sys/program.ts", 5),
        site("/s/container/execute.ts", 89),
        site("/s/a.ts", 2),
      ]),
      "execute.ts:89",
    );
    assert.equal(siteLocation([site("/s/sys/errors.ts", 1)]), "unknown:0");
  });
});

describe("privilege", () => {
  const ids = { uid: 1000, euid: 1000, gid: 1000, egid: 1000, secure: false };
  it("refuses setuid, setgid and AT_SECURE", () => {
    assert.equal(privilegeProblem(ids), null);
    assert.match(privilegeProblem({ ...ids, euid: 0 }) ?? "", /^setuid not allowed: real UID 1000, effective UID 0$/);
    assert.match(privilegeProblem({ ...ids, egid: 27 }) ?? "", /^setgid not allowed: real GID 1000, effective GID 27$/);
    assert.match(privilegeProblem({ ...ids, secure: true }) ?? "", /AT_SECURE/);
  });

  it("reads AT_SECURE from an auxiliary vector", () => {
    const auxv = (pairs: [number, number][]) => {
      const b = Buffer.alloc(pairs.length * 16);
      pairs.forEach(([t, v], i) => {
        b.writeBigUInt64LE(BigInt(t), i * 16);
        b.writeBigUInt64LE(BigInt(v), i * 16 + 8);
      });
      return b;
    };
    assert.equal(
      atSecure(
        auxv([
          [6, 4096],
          [23, 1],
          [0, 0],
        ]),
      ),
      true,
    );
    assert.equal(
      atSecure(
        auxv([
          [6, 4096],
          [23, 0],
          [0, 0],
        ]),
      ),
      false,
    );
    assert.equal(
      atSecure(
        auxv([
          [6, 4096],
          [0, 0],
          [23, 1],
        ]),
      ),
      null,
    ); // after AT_NULL: not read
    assert.equal(atSecure(readFileSync("/proc/self/auxv")), false);
  });
});

describe("program names", () => {
  it("picks a program by its name, or its name and a suffix", () => {
    assert.equal(programFor("ch-run"), "ch-run");
    assert.equal(programFor("ch-run.setgid"), "ch-run");
    assert.equal(programFor("ch-run-0.39"), "ch-run");
    assert.equal(programFor("ch-image-2"), "ch-image");
    assert.equal(programFor("ch-tar2dir.old"), "ch-tar2dir");
    assert.equal(programFor("ch-runner"), null);
    assert.equal(programFor("charliecloud"), null);
    assert.equal(programFor("ch"), null);
  });

  it("names ch-run as it was called, for argp and syslog: its base name if that calls ch-run", () => {
    assert.equal(runName("/opt/cc/bin/ch-run-0.39"), "ch-run-0.39");
    assert.equal(runName("ch-run"), "ch-run");
    assert.equal(runName("/usr/bin/charliecloud"), "ch-run");
    assert.equal(runName(""), "ch-run");
  });
});
