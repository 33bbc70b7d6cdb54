// Progress of long conversions on a terminal: one line on stderr, redrawn in place (\r), at
// most ten times a second and only once the work has taken more than a moment; cleared at the
// end so that only the result stays. Nothing at all unless stderr is a terminal and not -q.
import { verbosity } from "./log.ts";

/** Delay before the first line: quick jobs show nothing. */
const FIRST_MS = 200;
/** Time between redraws. */
const EVERY_MS = 100;

const UNITS = ["B", "kB", "MB", "GB", "TB"];

/** A byte count for people: 12.3 MB. */
export function humanBytes(n: number): string {
  let u = 0;
  while (n >= 1000 && u < UNITS.length - 1) {
    n /= 1000;
    u++;
  }
  return u === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)} ${UNITS[u]}`;
}

/** The progress line: what, bytes done (of total, percent), entries, rate. */
export function progressLine(label: string, bytes: number, total: number | null, entries: number, seconds: number): string {
  const parts = [`${label}: ${humanBytes(bytes)}`];
  if (total !== null && total > 0) parts[0] += ` of ${humanBytes(total)} (${Math.min(100, Math.floor((bytes * 100) / total))}%)`;
  parts.push(`${entries.toLocaleString("en-US")} ${entries === 1 ? "entry" : "entries"}`);
  if (seconds > 0) parts.push(`${humanBytes(Math.round(bytes / seconds))}/s`);
  return parts.join(", ");
}

export interface Progress {
  /** Reports the totals so far; cheap, redraws only when it's time. */
  update(bytes: number, entries: number): void;
  /** Clears the line; later updates do nothing. */
  end(): void;
}

const NONE: Progress = { update() {}, end() {} };

interface Out {
  isTTY?: boolean;
  columns?: number;
  write(s: string): unknown;
}

/** Progress for a job called label, of total bytes if known; a no-op unless stderr is a
 * terminal and not -q. */
export function startProgress(label: string, total: number | null = null, out: Out = process.stderr): Progress {
  if (!out.isTTY || verbosity() < 0) return NONE;
  const t0 = performance.now();
  let next = t0 + FIRST_MS;
  let shown = false;
  let done = false;
  return {
    update(bytes, entries) {
      if (done) return;
      const now = performance.now();
      if (now < next) return;
      next = now + EVERY_MS;
      let line = progressLine(label, bytes, total, entries, (now - t0) / 1000);
      const width = out.columns || 80; // 0 where the terminal has no size
      if (line.length >= width) line = line.slice(0, Math.max(0, width - 1));
      out.write(`\r${line}\x1b[K`);
      shown = true;
    },
    end() {
      if (done) return;
      done = true;
      if (shown) out.write("\r\x1b[K");
    },
  };
}

// ---- Several transfers at once (layer downloads): one line each, redrawn in place. ----

/** A transfer's line: what, bytes done of total (percent), rate. */
export function transferLine(label: string, bytes: number, total: number | null, seconds: number): string {
  let s = `${label}: ${humanBytes(bytes)}`;
  if (total !== null && total > 0) s += ` of ${humanBytes(total)} (${Math.min(100, Math.floor((bytes * 100) / total))}%)`;
  if (seconds > 0 && bytes > 0) s += `, ${humanBytes(Math.round(bytes / seconds))}/s`;
  return s;
}

export interface Bar {
  update(bytes: number): void;
  /** The transfer finished (its line goes away). */
  done(): void;
}

export interface Bars {
  add(label: string, total: number | null): Bar;
  /** One more line, for a job that reports bytes and entries (unpacking), ended by its end(). */
  progress(label: string, total: number | null): Progress;
  /** Clears every line; later updates do nothing. */
  end(): void;
}

/** At most this many transfer lines at once; the rest are summed up in one line. */
const MAX_BARS = 8;

interface Line {
  text: (now: number) => string;
  finished: boolean;
}

/** Progress lines for concurrent jobs (downloads, unpacking); nothing unless out is a terminal
 * and not -q. While they are shown, whatever else is written to out (log messages) goes above
 * them: the lines are cleared first and drawn again after. */
export function startBars(out: Out = process.stderr): Bars {
  if (!out.isTTY || verbosity() < 0) return { add: () => ({ update() {}, done() {} }), progress: () => NONE, end() {} };
  const t0 = performance.now();
  const lines: Line[] = [];
  let shown = 0;
  let next = t0 + FIRST_MS;
  let ended = false;
  const own = Object.hasOwn(out, "write");
  const original = out.write;
  const raw = (s: string) => original.call(out, s);
  const clear = () => {
    if (shown > 0) raw(`\x1b[${shown}A\r\x1b[J`);
    shown = 0;
  };
  const draw = (force: boolean) => {
    if (ended) return;
    const now = performance.now();
    if (!force && now < next) return;
    next = now + EVERY_MS;
    const width = out.columns || 80;
    const active = lines.filter((b) => !b.finished);
    const texts = active.slice(0, MAX_BARS).map((b) => b.text(now));
    if (active.length > MAX_BARS) texts.push(`... and ${active.length - MAX_BARS} more`);
    let s = shown > 0 ? `\x1b[${shown}A\r` : "\r";
    for (const l of texts) s += `${l.length >= width ? l.slice(0, width - 1) : l}\x1b[K\n`;
    s += "\x1b[J";
    raw(s);
    shown = texts.length;
  };
  out.write = (...args: unknown[]) => {
    if (ended || shown === 0) return original.apply(out, args as [string]);
    clear();
    const r = original.apply(out, args as [string]);
    const s = args[0];
    if ((typeof s === "string" && s.endsWith("\n")) || (Buffer.isBuffer(s) && s[s.length - 1] === 10)) draw(true);
    return r;
  };
  const finish = (l: Line) => {
    if (l.finished) return;
    l.finished = true;
    if (shown > 0) draw(true);
  };
  return {
    add(label, total) {
      const start = performance.now();
      let bytes = 0;
      const l: Line = { text: (now) => transferLine(label, bytes, total, (now - start) / 1000), finished: false };
      lines.push(l);
      return {
        update(n) {
          bytes = n;
          draw(false);
        },
        done: () => finish(l),
      };
    },
    progress(label, total) {
      const start = performance.now();
      let bytes = 0;
      let entries = 0;
      const l: Line = { text: (now) => progressLine(label, bytes, total, entries, (now - start) / 1000), finished: false };
      lines.push(l);
      return {
        update(b, e) {
          bytes = b;
          entries = e;
          draw(false);
        },
        end: () => finish(l),
      };
    },
    end() {
      if (ended) return;
      clear();
      ended = true;
      if (own) out.write = original;
      else delete (out as { write?: unknown }).write;
    },
  };
}
