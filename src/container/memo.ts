// Remembered launches: ch-run's fast path, made again without planning.
//
// A launch of a directory image (no --join) is a function of its command line, working
// directory and IDs, of the few environment variables and files that ch-run looked at while
// planning, and of the host environment it copies into the command's. The first launch records
// all of that (memo-record.ts) beside the launcher in ch-run's private directory: the
// launcher's payload, which holds neither the command's environment nor the syslog message nor
// a PID (exec.c takes those from its own environment), every variable it read with its value,
// every path it looked at with what it saw there (stat(2)'s identity: inode, mode, owner, size,
// modification and change times; a symlink's own; a realpath; the text of
// /proc/self/mountinfo), and how the command's environment is made (plan.ts's EnvRecipe).
//
// A later ch-run with the same command line, directory and IDs (the executable's loader runs
// replay() before it compiles the rest of ch-run) checks each of those again, makes the
// command's environment from its own, keeps its inherited descriptors, and execs the launcher
// with the remembered payload: the same container, without the ~15 ms of planning. Anything that
// differs (a variable, a file changed, created or removed, a launcher rewritten, another
// build), or anything this can't check, is a miss: ch-run plans as always and records again.
// Nothing is remembered from a launch that printed anything, wrote anything, used koffi, or
// changed its environment (ch-image build's RUN, -v, warnings, -w on an image in storage).
//
// Where: the launcher's private directory (private-file.cjs), whose checks (ours alone, no one
// else can write or swap it) hold for these files too; 256 slots named by a hash of the key, a
// slot holding the key it is for (no unbounded growth; a collision is a miss).
import { closeSync, constants, fstatSync, lstatSync, openSync, readFileSync, readSync, realpathSync, statSync } from "node:fs";
import { join } from "node:path";
import { runName } from "../dispatch.ts";
import { launcherEnv, tooBig } from "../sys/launcher-env.ts";
import { candidates, identity, type PrivateFileAt, usableDir } from "../sys/private-file.cjs";
import { currentIds, type Ids, privilegeProblem } from "../sys/secure.ts";
import { commandEnv, type EnvRecipe } from "./env.ts";
import { SYSLOG_ENABLED, syslogMessage } from "./syslog.ts";

export const MEMO_VERSION = 2;

/** What a path showed: stat(2) (s), lstat(2) (l), its content's identity (c: a file read or a
 * directory listed), its real path (r), its text (t, for /proc/self/mountinfo), or the kernel's
 * release (k, path ""). A directory only looked at (s, l) shows its inode, mode and owner, not
 * its times or size, which change with every entry made in it (/tmp's, all the time). */
export type FactKind = "s" | "l" | "c" | "r" | "t" | "k";
export type Fact = [FactKind, string, string];

export interface Memo {
  v: number;
  key: string;
  /** Each variable read while planning, and its value (null: unset). */
  env: [string, string | null][];
  facts: Fact[];
  recipe: EnvRecipe;
  /** $PATH in the command's environment (the command's candidates depend on it). */
  path: string | null;
  /** The launcher file and its stamp (private-file.cjs's identity()). */
  launcher: { file: string; ident: string };
  /** Where the descriptor helper was loaded from, and its stamp (loaded from there again if
   * still so, without looking for it). */
  helper: PrivateFileAt | null;
  args: string[];
  /** The payload's variables (exec-launch.ts's payloadEnv()). */
  payload: Record<string, string>;
  /** Whether the launcher sends a syslog message (made at each launch: it holds the time). */
  syslog: boolean;
}

/** What a remembered launch is looked up by: made by the loader for the launch that records. */
export interface MemoContext {
  key: string;
  slot: string;
}

/** The key: this build, the command line, the working directory, the IDs, the supplementary
 * groups (what ch-run may read can depend on them) and the machine's architecture (the bundle is
 * the same for every one, but the payload's system calls and the launcher are not: a private
 * directory in a home shared by nodes of two kinds holds both). */
export function memoKey(
  build: string,
  argv0: string,
  args: string[],
  cwd: string,
  ids: Pick<Ids, "uid" | "gid">,
  groups: number[] = process.getgroups?.() ?? [],
  arch: string = process.arch,
): string {
  return JSON.stringify([MEMO_VERSION, build, arch, argv0, args, cwd, ids.uid, ids.gid, groups]);
}

/** The slot's file name: one of 256, by FNV-1a of the key. */
export function slotName(key: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  return `ch-run-memo-${(h & 0xff).toString(16).padStart(2, "0")}`;
}

type BigStat = {
  ino: bigint;
  mode: bigint;
  nlink: bigint;
  uid: bigint;
  gid: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  rdev: bigint;
  isDirectory(): boolean;
};

function stamp(st: BigStat | undefined, content: boolean): string {
  if (!st) return "-";
  // No device number: an NFS mount's differs from node to node (as private-file.cjs's stamps).
  if (!content && st.isDirectory()) return `d:${st.ino}:${st.mode}:${st.uid}:${st.gid}`;
  return `${st.ino}:${st.mode}:${st.nlink}:${st.uid}:${st.gid}:${st.size}:${st.rdev}:${st.mtimeNs}:${st.ctimeNs}`;
}

function code(e: unknown): string {
  return `E${(e as { code?: string }).code ?? "?"}`;
}

/** What the path shows now, as a fact of that kind records it. */
export function observe(kind: FactKind, path: string): string {
  try {
    switch (kind) {
      case "s":
      case "c":
        return stamp(statSync(path, { bigint: true, throwIfNoEntry: false }), kind === "c");
      case "l":
        return stamp(lstatSync(path, { bigint: true, throwIfNoEntry: false }), false);
      case "r":
        return realpathSync.native(path);
      case "t":
        return readFileSync(path, "latin1");
      case "k":
        return process.getBuiltinModule("node:os").release(); // node:os only here: loading it costs a start ~0.4 ms
    }
  } catch (e) {
    return code(e);
  }
}

/** The first fact that no longer holds, described; null if all do. */
export function staleFact(facts: Fact[]): string | null {
  for (const [kind, path, value] of facts) if (observe(kind, path) !== value) return `${kind} ${path}`;
  return null;
}

/** The first variable whose value differs, described; null if none. */
export function staleEnv(env: [string, string | null][], now: Record<string, string | undefined>): string | null {
  for (const [k, v] of env) if ((now[k] ?? null) !== v) return `$${k}`;
  return null;
}

/** How many variants of one launch a slot keeps: ranks of one job may differ in a variable the
 * plan reads (Slurm sets $TMPDIR for some tasks and not others, say). */
export const VARIANTS = 4;

/** A slot's memos, newest first; null if it isn't one. */
export function parseSlot(text: string): Memo[] | null {
  try {
    const j = JSON.parse(text) as unknown;
    return Array.isArray(j) ? (j as Memo[]) : null;
  } catch {
    return null;
  }
}

/** The slot with memo m added: first, in place of a variant read with the same variables
 * (older facts), other launches' dropped (a collision), at most VARIANTS. */
export function withMemo(slot: Memo[], m: Memo): Memo[] {
  const vars = JSON.stringify(m.env);
  const others = slot.filter((o) => o.v === m.v && o.key === m.key && JSON.stringify(o.env) !== vars);
  return [m, ...others].slice(0, VARIANTS);
}

/** The file's text if it is a regular file of ours that others can't write (no symlink
 * followed); throws otherwise (ENOENT if there is none). */
export function readOwn(file: string, euid: number): string {
  const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== euid || st.mode & 0o022) throw new Error(`${file}: not a private file of ours`);
    const buf = Buffer.allocUnsafe(st.size);
    let n = 0;
    while (n < st.size) {
      const r = readSync(fd, buf, n, st.size - n, null);
      if (r === 0) break;
      n += r;
    }
    return buf.toString("utf8", 0, n);
  } finally {
    closeSync(fd);
  }
}

/** $CH_TEST_MEMO_LOG (tests): a file where hits, misses and recordings are told, a line each. */
export function memoNote(env: Record<string, string | undefined>, line: string): void {
  const f = env.CH_TEST_MEMO_LOG;
  if (!f) return;
  try {
    process.getBuiltinModule("node:fs").appendFileSync(f, `${line}\n`);
  } catch {
    // a test's file: nothing to say if it can't be written
  }
}

/** What the launch of memo m would do here and now: the launcher's environment, or why not
 * (stale). Pure but for the checks it makes. */
export function replayEnv(
  m: Memo,
  env: Record<string, string | undefined>,
  ids: Ids,
  argv0: string,
  args: string[],
): Record<string, string> | string {
  const e = staleEnv(m.env, env);
  if (e) return `changed: ${e}`;
  const f = staleFact(m.facts);
  if (f) return `changed: ${f}`;
  const sha = m.launcher.ident.split(" ")[0];
  if (identity(m.launcher.file, sha) !== m.launcher.ident) return `changed: ${m.launcher.file}`;
  const made = commandEnv(m.recipe, env, (p) => {
    try {
      return readFileSync(p, "utf8");
    } catch {
      return null;
    }
  });
  if (made.warnings.length) return "the environment gets a warning";
  if ((made.env.get("PATH") ?? null) !== m.path) return "changed: the command's $PATH";
  const envp: string[] = [];
  for (const [k, v] of made.env) envp.push(`${k}=${v}`);
  const log = m.syslog && SYSLOG_ENABLED ? syslogMessage(runName(argv0 || "ch-run"), ids.uid, [argv0, ...args]) : null;
  const out = launcherEnv(envp, m.payload, log);
  return tooBig(m.launcher.file, m.args, out) ?? out;
}

/** The loader's first step when called as ch-run: a remembered launch of this very command, if
 * one holds, run now (this never returns then); else the context for the launch that records
 * one. `keep` keeps the inherited descriptors across the exec (the descriptor helper's, loaded
 * from where the memo says if it is still there as it was). */
export function replay(build: string, keep: (m: Memo) => void): MemoContext | null {
  const env = process.env;
  const ids = currentIds();
  if (privilegeProblem(ids)) return null; // ch-run refuses, later, with the message
  const argv0 = process.argv0;
  const args = process.argv.slice(2);
  let cwd: string;
  try {
    cwd = process.cwd();
  } catch {
    return null; // a working directory removed: ch-run says so
  }
  const key = memoKey(build, argv0, args, cwd, ids);
  const slot = slotName(key);
  const ctx = { key, slot };
  for (const [dir] of candidates()) {
    let text: string;
    try {
      if (usableDir(dir) !== null) continue;
      text = readOwn(join(dir, slot), ids.euid);
    } catch {
      continue;
    }
    const slotted = parseSlot(text);
    if (slotted === null) {
      memoNote(env, "miss: unreadable");
      return ctx;
    }
    const mine = slotted.filter((m) => m.v === MEMO_VERSION && m.key === key);
    if (mine.length === 0) {
      memoNote(env, "miss: another launch in the slot");
      return ctx;
    }
    // Each variant of this launch (the variables it read had other values) in turn.
    let why = "";
    for (const m of mine) {
      const launch = replayEnv(m, env, ids, argv0, args);
      if (typeof launch === "string") {
        why ||= launch;
        continue;
      }
      keep(m);
      memoNote(env, "hit");
      process.execve?.(m.launcher.file, m.args, launch);
      return ctx;
    }
    memoNote(env, `miss: ${why}`);
    return ctx;
  }
  memoNote(env, "miss: none");
  return ctx;
}
