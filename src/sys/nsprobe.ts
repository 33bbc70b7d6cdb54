// Trying what ch-run does, without running a container: a clone(2) child in new user and mount
// namespaces (its ID maps written from outside, as launch.ts does) runs a list of steps given
// through the Syscalls interface, then reports and exits. The result says which step failed,
// and how: the raw material for ch-checkns's diagnoses.
import { writeFileSync } from "node:fs";
import { hostArch } from "./arch.ts";
import { mapProgram } from "./launch.ts";
import { LibcError, libc } from "./libc.ts";
import { ProgramBuilder } from "./program.ts";
import { CLONE_NEWNS, CLONE_NEWUSER, SIGCHLD, type Syscalls } from "./syscalls.ts";

const O_CLOEXEC = 0o2000000;

export type ProbeResult =
  | { ok: true }
  /** stage "clone": no namespaces at all; "maps": the ID maps could not be written; "step": the
   * step whose Why.what is `what` failed (errno 0: it ended some other way). */
  | { ok: false; stage: "clone" | "maps" | "step"; errno: number; what: string };

export function probeNamespaces(euid: number, egid: number, steps: (sys: Syscalls) => void): ProbeResult {
  const c = libc();
  const [syncR, syncW] = c.pipe2(O_CLOEXEC);
  const [repR, repW] = c.pipe2(O_CLOEXEC);
  const b = new ProgramBuilder(hostArch());
  const n = b.nr;
  b.reportFd = repW;
  b.op(n.prctl, [1 /* PR_SET_PDEATHSIG */, 9], { what: "prctl" });
  b.op(n.close, [syncW], { what: "close" });
  b.op(n.read, [syncR, { bytes: new Uint8Array(8) }, 1], { what: "go-ahead" }, { expect: 1 });
  steps(b);
  const done = new Uint8Array(new BigInt64Array([-1n, 0n]).buffer);
  b.op(n.write, [repW, { bytes: done }, 16], { what: "report" }, { expect: 16 });
  b.op(n.exit_group, [0], { what: "exit" });
  const m = mapProgram(b);
  let pid: number;
  try {
    pid = c.clone(m.entry, m.stackTop, CLONE_NEWUSER | CLONE_NEWNS | SIGCHLD, m.progAddr);
  } catch (e) {
    for (const fd of [syncR, syncW, repR, repW]) c.close(fd);
    if (e instanceof LibcError) return { ok: false, stage: "clone", errno: e.errno, what: "clone" };
    throw e;
  }
  c.close(syncR);
  c.close(repW);
  const fail = (what: string, errno: number): ProbeResult => {
    c.kill(pid, 9);
    c.close(syncW);
    c.close(repR);
    c.waitpid(pid);
    return { ok: false, stage: "maps", errno, what };
  };
  for (const [file, text] of [
    ["setgroups", "deny"],
    ["uid_map", `0 ${euid} 1\n`],
    ["gid_map", `0 ${egid} 1\n`],
  ]) {
    try {
      writeFileSync(`/proc/${pid}/${file}`, text);
    } catch (e) {
      return fail(file, Math.abs(Number((e as NodeJS.ErrnoException).errno ?? 0)));
    }
  }
  c.write(syncW, new Uint8Array([103]));
  c.close(syncW);
  const report = new Uint8Array(16);
  const got = c.read(repR, report);
  c.close(repR);
  c.waitpid(pid);
  if (got !== 16) return { ok: false, stage: "step", errno: 0, what: "ended without a report" };
  const dv = new DataView(report.buffer);
  const index = Number(dv.getBigInt64(0, true));
  if (index === -1) return { ok: true };
  return { ok: false, stage: "step", errno: Number(dv.getBigInt64(8, true)), what: b.ops[index]?.why.what ?? `step ${index}` };
}
