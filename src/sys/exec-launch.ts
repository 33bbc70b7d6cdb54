// ch-run's fast path: the whole container setup is planned here, then ch-run's Node process
// replaces itself (process.execve) with the launcher executable (native/exec.c), which creates
// its own user and mount namespaces, writes its own ID maps, runs the plan and execs the
// command: one process from start to end, as Charliecloud's C ch-run. No koffi, no clone, no
// waiter: ch-run's PID is the command's, and signals reach the command as they would reach any
// process.
import { readFileSync, realpathSync } from "node:fs";
import { dirname } from "node:path";
import { hostArch } from "./arch.ts";
import { formatError, programName } from "./errors.ts";
import { mountFlagsOf } from "./hostfacts.ts";
import { argLimit, launcherEnv, payloadEnv, tooBig } from "./launcher-env.ts";
import { blobs } from "./native/blobs.ts";
import { withPrivateFile, writeAtomically } from "./private-file.cjs";
import { ProgramBuilder } from "./program.ts";
import { siteLocation, sourceLocation } from "./sourcemap.ts";
import { CLONE_NEWNS, CLONE_NEWUSER } from "./syscalls.ts";

export interface ExecSpec {
  euid: number;
  egid: number;
  /** Descriptors to point at /dev/null for the command (ch-run -qq, -qqq). */
  nullFds: number[];
  /** A message for syslog, sent first (path of the socket, message). */
  syslog: [string, string] | null;
  /** The command's environment (NAME=VALUE): the launcher's, beside the plan (not in it). */
  env: string[];
  /** Adds the setup steps, then calls beforeExec(), then adds the execve(2) step. */
  build(b: ProgramBuilder, beforeExec: () => void): void;
  /** Written after an error line of the launcher's (the warnings ch-run reprints). */
  tail: string;
}

const MAGIC = 0x3230434558454843n; // "CHEXEC02"

/** sourceLocation() for many errors: their stacks are read as call sites (V8 formats no text),
 * each frame found by its position. */
function locator(): (at: Error) => string {
  return (at) => {
    const prepare = Error.prepareStackTrace;
    let sites: NodeJS.CallSite[] | string;
    Error.prepareStackTrace = (_e, s) => s;
    try {
      sites = at.stack as unknown as NodeJS.CallSite[] | string;
    } finally {
      Error.prepareStackTrace = prepare;
    }
    return Array.isArray(sites) ? siteLocation(sites) : sourceLocation(at); // a string: formatted before
  };
}

const ST_NOEXEC = 8;

export { argLimit, launcherEnv, payloadEnv, tooBig };

/** Whether the launcher at `file` can be executed here: null if so, else why ("noexec" where
 * another directory may do; not so under qemu-user without binfmt_misc, say). Tried once,
 * without a plan (it must say so and exit 31), and remembered beside it for the file as it is
 * now (its stamp, which changes whenever it is rewritten). */
function cantRun(file: string): string | null {
  const marker = `${file}.runs`;
  let id: string;
  try {
    id = readFileSync(`${file}.verified`, "utf8");
  } catch (e) {
    return `${file}.verified: ${(e as Error).message}`;
  }
  try {
    if (readFileSync(marker, "utf8") === id) return null;
  } catch {}
  // node:child_process only here, once per launcher file: loading it costs a start ~3 ms.
  const { spawnSync } = process.getBuiltinModule("node:child_process");
  const r = spawnSync(file, [], { encoding: "utf8", stdio: ["ignore", "ignore", "pipe"], env: {} });
  if ((r.error as { code?: string } | undefined)?.code === "EACCES") return "noexec";
  if (r.status !== 31 || !/launcher: no plan/.test(r.stderr ?? ""))
    return `${file} does not run here (${r.error?.message ?? `status ${r.status ?? r.signal}`})`;
  try {
    writeAtomically(marker, id);
  } catch {
    // only a note that saves the trial next time
  }
  return null;
}

/** Lays the program out for the launcher: see exec.c for the format. */
export function execPayload(b: ProgramBuilder, tail: string): Buffer {
  const { bytes, relocs } = b.layout();
  const enc = new TextEncoder();
  const strings: Uint8Array[] = [];
  let stringsLen = 0;
  const seen = new Map<string, number>();
  const headerLen = (8 + relocs.length) * 8;
  const prog = headerLen;
  const msgs = prog + Math.ceil(bytes.length / 8) * 8;
  const text0 = msgs + b.ops.length * 32;
  const place = (s: string): [number, number] => {
    const e = enc.encode(s);
    let off = seen.get(s);
    if (off === undefined) {
      off = text0 + stringsLen;
      seen.set(s, off);
      strings.push(e);
      stringsLen += e.length;
    }
    return [off, e.length];
  };
  const table = new BigInt64Array(b.ops.length * 4);
  const where = locator();
  // Each message without its "NAME[PID]", which the launcher prints (its PID is ch-run's, and
  // a remembered plan serves later ch-runs: container/memo.ts).
  const [name, nameLen] = place(programName());
  const own = `${programName()}[0]`;
  b.ops.forEach((op, i) => {
    if (op.soft) return;
    const [h, hl] = place(formatError(op.why.what, 0, null, 0).slice(own.length));
    const [w, wl] = place(where(op.at));
    table.set([BigInt(h), BigInt(hl), BigInt(w), BigInt(wl)], 4 * i);
  });
  const [t, tl] = tail ? place(tail) : [0, 0];
  const out = Buffer.alloc(text0 + stringsLen);
  const header = new BigInt64Array([
    MAGIC,
    BigInt(relocs.length),
    BigInt(prog),
    BigInt(msgs),
    BigInt(t),
    BigInt(tl),
    BigInt(name),
    BigInt(nameLen),
  ]);
  out.set(new Uint8Array(header.buffer), 0);
  out.set(new Uint8Array(new BigInt64Array(relocs.map(BigInt)).buffer), 64);
  out.set(bytes, prog);
  out.set(new Uint8Array(table.buffer), msgs);
  let off = text0;
  for (const s of strings) {
    out.set(s, off);
    off += s.length;
  }
  return out;
}

/** The program ch-run's launcher runs: syslog, its own namespaces and ID maps, the plan. */
export function execProgram(spec: ExecSpec): ProgramBuilder {
  const b = new ProgramBuilder(hostArch());
  b.execMessages = false; // the launcher prints every failure itself
  b.launcherInputs = true; // the command's environment and the syslog message: the launcher's
  if (spec.syslog) b.sendLog(spec.syslog[0], null);
  b.unshare(CLONE_NEWUSER | CLONE_NEWNS, {
    what: "can't create the container's user namespace (ch-checkns says what blocks it)",
  });
  const maps = { what: "can't write ID maps for the container's user namespace (are unprivileged user namespaces enabled?)" };
  b.writeExisting("/proc/self/setgroups", "deny", maps);
  b.writeExisting("/proc/self/uid_map", `0 ${spec.euid} 1\n`, maps);
  b.writeExisting("/proc/self/gid_map", `0 ${spec.egid} 1\n`, maps);
  spec.build(b, () => b.beforeExecHere(spec.nullFds));
  return b;
}

/** A launch about to happen: the launcher file, its arguments, and the payload's variables. */
export interface ReadyLaunch {
  file: string;
  args: string[];
  payload: Record<string, string>;
  /** Whether the payload holds this process's PID (ProgramBuilder's holdsPid). */
  holdsPid: boolean;
}

/** Replaces this process with the launcher running the container; returns only if no launcher
 * can be executed (no private directory for it, only noexec file systems, a launcher that
 * doesn't run here, a plan too large for the arguments), with why: the caller then takes the
 * clone path. */
export function execLaunch(spec: ExecSpec, before?: (launch: ReadyLaunch) => void): string {
  const execve = process.execve;
  if (!execve) return "this Node has no process.execve()";
  const args = [process.argv0 || "ch-run"];
  const program = execProgram(spec);
  const payload = payloadEnv(execPayload(program, spec.tail));
  const env = launcherEnv(spec.env, payload, spec.syslog?.[1] ?? null);
  const native = blobs[hostArch()];
  try {
    return withPrivateFile(
      {
        what: "launcher",
        name: `ch-run-exec-${process.arch}-${native.execSha256.slice(0, 16)}`,
        sha256: native.execSha256,
        bytes: () => Buffer.from(native.exec, "base64"),
        mode: 0o700,
      },
      (file, why) => {
        // This Node's process.execve() aborts the process when execve(2) fails: everything
        // that could make it fail is checked first.
        const big = tooBig(file, args, env);
        if (big) return big;
        if ((mountFlagsOf(realpathSync(dirname(file))) ?? 0) & ST_NOEXEC) {
          why.push(`${dirname(file)}: mounted noexec`);
          return undefined;
        }
        const cant = cantRun(file);
        if (cant === "noexec") {
          why.push(`${dirname(file)}: not executable there`);
          return undefined;
        }
        if (cant) return cant; // the same in any directory
        before?.({ file, args, payload, holdsPid: program.holdsPid });
        execve.call(process, file, args, env);
        return "process.execve() returned";
      },
    );
  } catch (e) {
    return (e as Error).message;
  }
}
