// Recording a launch to remember (memo.ts): while ch-run reads its options, finds the image and
// plans, every path it looks at through node:fs and every environment variable it reads are
// noted; anything a remembered launch could not do again the same way (output, a write, koffi,
// a change to the environment, a /proc or /sys file other than the mount table) spoils the
// recording. At the exec into the launcher, an unspoiled one is written to its slot.
import * as fs from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import type { ReadyLaunch } from "../sys/exec-launch.ts";
import { helperLoadedFrom } from "../sys/keepfd.ts";
import { type EnvRecipe, HOST_ENTRIES } from "./env.ts";
import {
  type Fact,
  type FactKind,
  MEMO_VERSION,
  type Memo,
  type MemoContext,
  memoNote,
  observe,
  parseSlot,
  readOwn,
  withMemo,
} from "./memo.ts";

type Patchable = Record<string, unknown>;

/** Calls of node:fs that read a path (argument 0): what each shows of it. */
const READS: Record<string, FactKind> = {
  existsSync: "s",
  statSync: "s",
  accessSync: "s",
  readFileSync: "c",
  readdirSync: "c",
  opendirSync: "c",
  openSync: "c",
  lstatSync: "l",
  readlinkSync: "l",
  realpathSync: "r",
};

/** Calls that change something: a launch remembered would not make them again. */
const WRITES = [
  "writeFileSync",
  "appendFileSync",
  "mkdirSync",
  "mkdtempSync",
  "renameSync",
  "rmSync",
  "rmdirSync",
  "unlinkSync",
  "symlinkSync",
  "linkSync",
  "copyFileSync",
  "cpSync",
  "chmodSync",
  "chownSync",
  "lchownSync",
  "utimesSync",
  "truncateSync",
  "ftruncateSync",
  "writeSync",
  "writevSync",
];

const MOUNT_TABLE = "/proc/self/mountinfo";

/** Whether a stamp (memo.ts's observe(), of a file or symlink) may not show the next change: its
 * times are whole seconds (Lustre's, an ext4 with small inodes) and one of them is `since` or
 * later, so that a write of the same size within that second would leave it as it is. */
export function racy(stamp: string, since: bigint): boolean {
  if (!/^\d/.test(stamp)) return false; // none, an error, or a directory's (no times)
  const f = stamp.split(":");
  const [m, c] = [BigInt(f[7]), BigInt(f[8])];
  return m % 1_000_000_000n === 0n && c % 1_000_000_000n === 0n && (m >= since || c >= since);
}

/** Writes file whole (aside, then renamed), mode 0600. Not private-file.cjs's writeAtomically(),
 * whose names unique across hosts need node:crypto and node:os, milliseconds to load at a launch
 * that records: a name taken (another host's on a shared directory, by chance) only fails this
 * write ("wx"), and nothing is remembered. */
function writeAside(file: string, data: string): void {
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    fs.writeFileSync(tmp, data, { mode: 0o600, flag: "wx" });
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

export class Recorder {
  /** Why this launch can't be remembered (the first reason), or null. */
  spoiled: string | null = null;
  /** Each path looked at, with what it showed just before ch-run looked (so that a change while
   * planning makes the memo stale, never wrong). */
  private readonly seen = new Map<string, Fact>();
  private readonly vars = new Map<string, string | null>();
  private readonly undo: (() => void)[] = [];
  private readonly rawEnv: NodeJS.ProcessEnv;
  private stopped = false;
  /** Inside observe(), whose own calls of node:fs are no reads of ch-run's. */
  private observing = false;
  readonly ctx: MemoContext;
  private readonly cwd: string;
  /** A time (ns) two seconds before this launch started: see racy(). */
  private readonly since = BigInt(Date.now() - 2000) * 1_000_000n;

  constructor(ctx: MemoContext, cwd: string) {
    this.ctx = ctx;
    this.cwd = cwd;
    this.rawEnv = process.env;
  }

  spoil(why: string): void {
    this.spoiled ??= why;
  }

  /** The kernel's release was read (--seccomp's plan). */
  kernel(): void {
    if (!this.stopped && !this.seen.has("k")) this.seen.set("k", ["k", "", this.observe("k", "")]);
  }

  private observe(kind: FactKind, p: string): string {
    this.observing = true;
    try {
      return observe(kind, p);
    } finally {
      this.observing = false;
    }
  }

  private path(kind: FactKind, p: unknown): void {
    if (this.stopped || this.observing) return;
    if (typeof p !== "string") {
      if (p instanceof URL || Buffer.isBuffer(p)) this.spoil("a path not a string");
      return; // a descriptor: its path was noted when it was opened
    }
    // As given, only made absolute: the kernel resolves ".." after a symlink from the link's
    // target, not lexically as path.resolve() would (which would check another path).
    const abs = isAbsolute(p) ? p : this.cwd.endsWith("/") ? `${this.cwd}${p}` : `${this.cwd}/${p}`;
    const plain = resolve(abs);
    if (plain === MOUNT_TABLE) kind = "t";
    else if (/^\/(proc|sys)(\/|$)/.test(plain)) {
      this.spoil(`reads ${plain}`);
      return;
    }
    const key = `${kind} ${abs}`;
    if (this.seen.has(key)) return;
    const now = this.observe(kind, abs);
    this.seen.set(key, [kind, abs, now]);
    // What is read from a pipe, a terminal or a device (--set-env=/dev/stdin, a FIFO) is no
    // content that its stat(2) identifies: a replay would use what this launch read.
    const type = kind === "c" && /^\d/.test(now) ? Number(now.split(":")[1]) & 0o170000 : 0o100000;
    if (type !== 0o100000 && type !== 0o040000) this.spoil(`reads ${abs}, not a regular file`);
    if ((kind === "s" || kind === "c" || kind === "l") && racy(now, this.since))
      this.spoil(`${abs} changed this second (times in whole seconds: another change now wouldn't show)`);
  }

  /** Starts watching node:fs, process.env, and standard output and error. */
  start(): this {
    // node:fs's exports as the bundle reads them (esbuild's namespace object) may be frozen; the
    // module object itself, which the bundle's calls go through, is not.
    const target = process.getBuiltinModule("node:fs") as unknown as Patchable;
    const patch = (name: string, wrap: (orig: (...a: unknown[]) => unknown) => (...a: unknown[]) => unknown) => {
      const orig = target[name];
      if (typeof orig !== "function") return;
      const w = Object.assign(wrap(orig as (...a: unknown[]) => unknown), orig);
      target[name] = w;
      this.undo.push(() => {
        target[name] = orig;
      });
    };
    for (const [name, kind] of Object.entries(READS))
      patch(name, (orig) => (...a) => {
        if (name === "openSync" && typeof a[1] !== "undefined" && a[1] !== "r" && a[1] !== fs.constants.O_RDONLY)
          this.spoil(`opens ${String(a[0])} to write`);
        this.path(kind, a[0]);
        return orig(...a);
      });
    const real = target.realpathSync as { native?: (...a: unknown[]) => unknown };
    if (real.native) {
      const orig = real.native;
      real.native = (...a: unknown[]) => {
        this.path("r", a[0]);
        return orig(...a);
      };
      this.undo.push(() => {
        real.native = orig;
      });
    }
    for (const name of WRITES)
      patch(name, (orig) => (...a) => {
        if (!this.stopped) this.spoil(name === "writeSync" && (a[0] === 1 || a[0] === 2) ? "output" : `writes (${name})`);
        return orig(...a);
      });
    for (const stream of [process.stdout, process.stderr]) {
      const orig = stream.write;
      stream.write = ((...a: Parameters<typeof orig>) => {
        if (!this.stopped) this.spoil("output");
        return orig.apply(stream, a);
      }) as typeof orig;
      this.undo.push(() => {
        stream.write = orig;
      });
    }
    const raw = this.rawEnv;
    const note = (k: string | symbol) => {
      if (typeof k === "string" && !this.stopped) this.vars.set(k, raw[k] ?? null);
    };
    process.env = new Proxy(raw, {
      get: (t, k) => {
        if (k === HOST_ENTRIES) return () => Object.entries(t);
        note(k);
        return Reflect.get(t, k);
      },
      has: (t, k) => {
        note(k);
        return Reflect.has(t, k);
      },
      getOwnPropertyDescriptor: (t, k) => {
        note(k);
        return Reflect.getOwnPropertyDescriptor(t, k);
      },
      ownKeys: (t) => {
        if (!this.stopped) this.spoil("lists the environment");
        return Reflect.ownKeys(t);
      },
      set: (t, k, v) => {
        if (!this.stopped) this.spoil(`sets $${String(k)}`);
        return Reflect.set(t, k, v);
      },
      deleteProperty: (t, k) => {
        if (!this.stopped) this.spoil(`unsets $${String(k)}`);
        return Reflect.deleteProperty(t, k);
      },
    }) as NodeJS.ProcessEnv;
    this.undo.push(() => {
      process.env = raw;
    });
    return this;
  }

  /** Stops watching (what is read from now on is the launch's own business: the launcher file,
   * the descriptors). Idempotent. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const u of this.undo.reverse()) u();
    this.undo.length = 0;
  }

  /** What was seen. */
  facts(): Fact[] {
    return [...this.seen.values()];
  }

  /** Writes the memo for this launch beside its launcher, unless spoiled; never throws (a
   * launch that can't be remembered is launched all the same). */
  save(launch: ReadyLaunch, recipe: EnvRecipe | undefined, path: string | null, syslog: boolean): void {
    this.stop();
    const env = this.rawEnv;
    if (!recipe) this.spoil("no environment recipe");
    if (launch.holdsPid) this.spoil("the plan holds this process's PID");
    if (this.spoiled) {
      memoNote(env, `not recorded: ${this.spoiled}`);
      return;
    }
    try {
      const m: Memo = {
        v: MEMO_VERSION,
        key: this.ctx.key,
        env: [...this.vars],
        facts: this.facts(),
        recipe: recipe as EnvRecipe,
        path,
        launcher: { file: launch.file, ident: fs.readFileSync(`${launch.file}.verified`, "utf8") },
        helper: helperLoadedFrom(),
        args: launch.args,
        payload: launch.payload,
        syslog,
      };
      const file = join(launch.file, "..", this.ctx.slot);
      let slot: Memo[] = [];
      try {
        slot = parseSlot(readOwn(file, process.geteuid?.() ?? 0)) ?? [];
      } catch {
        // none yet, or not one to keep
      }
      writeAside(file, JSON.stringify(withMemo(slot, m)));
      memoNote(env, "recorded");
    } catch (e) {
      memoNote(env, `not recorded: ${(e as Error).message}`);
    }
  }
}
