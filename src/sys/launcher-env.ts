// The launcher executable's environment (native/exec.c): the command's, the plan's chunks and
// the syslog message; and whether execve(2) takes it. Small and apart from exec-launch.ts: a
// remembered launch (container/memo.ts) makes it without loading the rest.
import { readFileSync } from "node:fs";

/** Largest base64 chunk: MAX_ARG_STRLEN (32 pages) less the NUL and a name
 * ("CH_RUN_LAUNCH_P999="), a multiple of 4. */
const CHUNK = 131048;

/** The prefix of the launcher's own variables (exec.c), which the command never gets. */
export const LAUNCH_PREFIX = "CH_RUN_LAUNCH_";

/** The payload, base64, in chunks execve(2) takes, named CH_RUN_LAUNCH_P0, _P1... in order:
 * variables of the launcher's, not its arguments (every user may read those in
 * /proc/PID/cmdline). */
export function payloadEnv(payload: Uint8Array): Record<string, string> {
  const text = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString("base64");
  const out: Record<string, string> = {};
  for (let i = 0; i < text.length; i += CHUNK) out[`${LAUNCH_PREFIX}P${i / CHUNK}`] = text.slice(i, i + CHUNK);
  return out;
}

/** The longest syslog message sent (characters): one string of execve(2)'s takes 128 KiB at
 * most, and a datagram socket's messages are smaller (rsyslog takes 8 KiB by default). */
const LOG_MAX = 16384;

/** execve(2)'s limit for one argument or variable (MAX_ARG_STRLEN), its NUL included. */
const STRING_MAX = 131072;

/** The launcher's whole environment: the command's (less any variable named like the
 * launcher's own), the payload's chunks, and the syslog message (null: none; cut to LOG_MAX). */
export function launcherEnv(command: string[], payload: Record<string, string>, log: string | null): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of command) {
    const eq = kv.indexOf("=");
    const k = kv.slice(0, eq);
    if (eq > 0 && !k.startsWith(LAUNCH_PREFIX)) out[k] = kv.slice(eq + 1);
  }
  Object.assign(out, payload);
  if (log !== null) out[`${LAUNCH_PREFIX}LOG`] = log.length > LOG_MAX ? log.slice(0, LOG_MAX) : log;
  return out;
}

/** The least argLimit() can be. */
const ARG_FLOOR = (128 << 10) - 4096;

/** How many bytes of arguments execve(2) takes here: a quarter of the stack's soft limit, at
 * most 6 MiB, at least 128 KiB (the kernel's bprm_stack_limits()), less a margin. */
export function argLimit(limits = readLimits()): number {
  const m = /^Max stack size\s+(\S+)/m.exec(limits);
  const soft = m && m[1] !== "unlimited" ? Number(m[1]) : Number.POSITIVE_INFINITY;
  return Math.max(Math.min(soft / 4, 6 << 20), 128 << 10) - 4096;
}

function readLimits(): string {
  try {
    return readFileSync("/proc/self/limits", "utf8");
  } catch {
    return "";
  }
}

/** Why execve(2) would refuse these arguments and environment (E2BIG), or null. */
export function tooBig(file: string, args: string[], env: Record<string, string>): string | null {
  let size = Buffer.byteLength(file) + 1 + 16;
  let longest = 0;
  const count = (n: number) => {
    size += n + 8;
    if (n > longest) longest = n;
  };
  for (const a of args) count(Buffer.byteLength(a) + 1);
  for (const k in env) count(Buffer.byteLength(k) + Buffer.byteLength(env[k]) + 2);
  if (longest > STRING_MAX) return `a string too long for the launcher's arguments (${longest} bytes)`;
  // The limit is never below the kernel's floor: no need to read it for a plan within that.
  return size > ARG_FLOOR && size > argLimit() ? `plan too large for the launcher's arguments (${size} bytes)` : null;
}
