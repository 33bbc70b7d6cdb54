// Carrying out an injection plan without leaving a half-injected image: every file is first
// copied aside in its destination directory (.ch-fromhost.PID.N), then all are renamed into
// place, what they replace kept aside until the end. A failure anywhere, the image's ldconfig
// included, puts back what was there and removes what was added.
import {
  chmodSync,
  closeSync,
  constants,
  copyFileSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  renameSync,
  rmdirSync,
  statSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeSync,
} from "node:fs";
import { posix } from "node:path";
import { ChError, sysError, warn } from "../sys/errors.ts";
import type { Plan } from "./plan.ts";

interface Item {
  host: string;
  /** The new file, beside its destination. */
  tmp: string;
  /** What it replaces, once moved aside. */
  old: string | null;
  placed: boolean;
}

export class Injection {
  private readonly items: Item[] = [];
  private readonly made: string[] = [];
  /** Directories made writable for the copy: their modes, restored at the end. */
  private readonly unlocked = new Map<string, number>();
  private n = 0;
  private readonly plan: Plan;

  constructor(plan: Plan) {
    this.plan = plan;
  }

  private aside(host: string, what: string): string {
    return posix.join(posix.dirname(host), `.ch-fromhost-${what}.${process.pid}.${this.n++}`);
  }

  /** Makes a directory writable by its owner if it is not (images unpack with some like that). */
  private unlock(dir: string): void {
    if (this.unlocked.has(dir)) return;
    const st = statSync(dir);
    if (st.mode & 0o200) return;
    chmodSync(dir, (st.mode & 0o7777) | 0o200);
    this.unlocked.set(dir, st.mode & 0o7777);
  }

  /** Copies everything aside; nothing is in place yet. */
  stage(): void {
    for (const d of this.plan.mkdirs) {
      try {
        this.unlock(posix.dirname(d.host));
        mkdirSync(d.host, { mode: 0o755 });
      } catch (e) {
        throw sysError(`can't make directory in the image: ${d.path}`, e);
      }
      this.made.push(d.host);
    }
    for (const c of this.plan.copies) {
      const tmp = this.aside(c.host, "new");
      this.items.push({ host: c.host, tmp, old: null, placed: false });
      try {
        this.unlock(posix.dirname(c.host));
        if (c.link !== null) {
          symlinkSync(c.link, tmp);
          continue;
        }
        // COPYFILE_EXCL: never through a file or symlink already there.
        copyFileSync(c.src, tmp, constants.COPYFILE_EXCL);
        chmodSync(tmp, c.mode);
        const st = statSync(c.src);
        utimesSync(tmp, st.atime, st.mtime);
      } catch (e) {
        throw sysError(`can't copy ${c.src} to ${c.dst}`, e);
      }
    }
    for (const w of this.plan.writes) {
      const tmp = this.aside(w.host, "new");
      this.items.push({ host: w.host, tmp, old: null, placed: false });
      try {
        this.unlock(posix.dirname(w.host));
        const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
        try {
          writeSync(fd, w.content);
          if ((fstatSync(fd).mode & 0o777) !== 0o644) chmodSync(tmp, 0o644);
        } finally {
          closeSync(fd);
        }
      } catch (e) {
        throw sysError(`can't write ${w.dst}`, e);
      }
    }
  }

  /** Renames everything into place; what was there is kept aside until finish(). */
  place(): void {
    for (const it of this.items) {
      try {
        if (lstatSync(it.host, { throwIfNoEntry: false })) {
          const old = this.aside(it.host, "old");
          renameSync(it.host, old);
          it.old = old;
        }
        renameSync(it.tmp, it.host);
        it.placed = true;
      } catch (e) {
        throw sysError(`can't put ${it.host} in place`, e);
      }
    }
  }

  /** Puts the image back as it was. Returns the problems met doing so (files left behind). */
  rollback(): string[] {
    const left: string[] = [];
    const attempt = (f: () => void, what: string) => {
      try {
        f();
      } catch {
        left.push(what);
      }
    };
    for (const it of [...this.items].reverse()) {
      if (it.placed) attempt(() => unlinkSync(it.host), it.host);
      else attempt(() => lstatSync(it.tmp, { throwIfNoEntry: false }) && unlinkSync(it.tmp), it.tmp);
      const old = it.old;
      if (old) attempt(() => renameSync(old, it.host), old);
    }
    for (const d of [...this.made].reverse()) attempt(() => rmdirSync(d), d);
    this.relock();
    return left;
  }

  /** Done: removes what was replaced; the injected files stay whatever happens, and the
   * directories get their modes back. */
  finish(): void {
    const left: string[] = [];
    try {
      for (const it of this.items) {
        const old = it.old;
        if (!old) continue;
        try {
          unlinkSync(old);
        } catch {
          left.push(old);
        }
      }
    } finally {
      this.relock();
    }
    if (left.length) warn(`injected, but could not remove the files replaced; remove them by hand: ${left.join(", ")}`);
  }

  private relock(): void {
    for (const [dir, mode] of this.unlocked) {
      try {
        chmodSync(dir, mode);
      } catch {}
    }
    this.unlocked.clear();
  }
}

/** Injects: stage, place, then `after` (the image's ldconfig); rolls back if any fails. */
export function inject(plan: Plan, after: () => void): void {
  const inj = new Injection(plan);
  try {
    inj.stage();
    inj.place();
    after();
  } catch (e) {
    const left = inj.rollback();
    if (e instanceof ChError) {
      const state = left.length
        ? `nothing injected, but could not undo: ${left.join(", ")}`
        : "nothing injected, image unchanged";
      throw new ChError(`${state}: ${e.message}`, { errno: e.errno, exit: e.exit, at: e.at });
    }
    throw e;
  }
  inj.finish();
}
