// Points an error at our TypeScript source. In the single executable, stack frames name the
// bundle; the build decodes its source map into a line table (one source line per bundle line)
// and the offset where each bundle line starts, which travel as SEA assets, so that a lookup
// costs no parsing at run time, and a call site's character position (V8's CallSite
// getPosition()) finds its line without V8 computing the bundle's line ends (about 1.5 ms).
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { getAsset, getRawAsset, isSea } from "node:sea";
import { loaderInfo } from "./self.ts";

export interface RawMap {
  sources: string[];
  mappings: string;
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Decodes one VLQ segment list; returns [genCol, src, srcLine, srcCol] tuples. */
function decodeLine(line: string, state: number[]): number[][] {
  const out: number[][] = [];
  state[0] = 0; // generated column restarts on each line
  for (const seg of line.split(",")) {
    if (!seg) continue;
    const vals: number[] = [];
    let shift = 0;
    let value = 0;
    for (const ch of seg) {
      const d = B64.indexOf(ch);
      value += (d & 31) << shift;
      if (d & 32) shift += 5;
      else {
        vals.push(value & 1 ? -(value >>> 1) : value >>> 1);
        value = 0;
        shift = 0;
      }
    }
    for (let i = 0; i < vals.length && i < 4; i++) state[i] += vals[i];
    if (vals.length >= 4) out.push([state[0], state[1], state[2], state[3]]);
  }
  return out;
}

/** Maps a 1-based generated line and column to "source.ts:LINE". */
export function mapPosition(map: RawMap, line: number, column: number): string | null {
  const lines = map.mappings.split(";");
  const state = [0, 0, 0, 0];
  let best: number[] | null = null;
  for (let i = 0; i < line && i < lines.length; i++) {
    const segs = decodeLine(lines[i], state);
    if (i === line - 1) {
      for (const s of segs) if (s[0] <= column - 1) best = s;
      if (!best && segs.length) best = segs[0];
    }
  }
  if (!best) return null;
  return `${basename(map.sources[best[1]])}:${best[2] + 1}`;
}

export interface LineTable {
  sources: string[];
  /** Per bundle line (0-based) i: [2i] source index (0xffffffff: none), [2i+1] source line. */
  lines: Uint32Array;
  /** Per bundle line (0-based): the offset of its first character in the script V8 runs. */
  starts?: Uint32Array;
}

/** Offsets of the lines of a script's text, as V8 counts them (UTF-16 units, "\n" ends a line). */
export function lineStarts(text: string): Uint32Array {
  const out = [0];
  for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) out.push(i + 1);
  return Uint32Array.from(out);
}

/** The 1-based line of a character position, by a line-starts table. */
export function lineAt(starts: Uint32Array, pos: number): number {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= pos) lo = mid;
    else hi = mid - 1;
  }
  return lo + 1;
}

/** The build's decoding of a source map: each bundle line's first mapped source line. */
export function lineTable(map: RawMap): LineTable {
  const text = map.mappings.split(";");
  const lines = new Uint32Array(text.length * 2).fill(0xffffffff);
  const state = [0, 0, 0, 0];
  text.forEach((l, i) => {
    const segs = decodeLine(l, state);
    if (segs.length) {
      lines[2 * i] = segs[0][1];
      lines[2 * i + 1] = segs[0][2] + 1;
    }
  });
  return { sources: map.sources.map((s) => basename(s)), lines };
}

/** Looks a 1-based bundle line up in a line table. */
export function tablePosition(t: LineTable, line: number): string | null {
  const src = t.lines[2 * (line - 1)];
  return src === undefined || src === 0xffffffff ? null : `${t.sources[src]}:${t.lines[2 * (line - 1) + 1]}`;
}

type Locate = (line: number, column: number) => string | null;
let cachedLocate: Locate | null | undefined;
/** The line table's starts, when the bundle has them (the single executable). */
let cachedStarts: Uint32Array | null = null;

function bundleLocate(): Locate | null {
  if (cachedLocate !== undefined) return cachedLocate;
  cachedLocate = null;
  try {
    if (isSea()) {
      const bundle = loaderInfo()?.bundle ?? "ch";
      const t = {
        sources: JSON.parse(getAsset(`${bundle}.sources.json`, "utf8")) as string[],
        lines: new Uint32Array(getRawAsset(`${bundle}.lines`)),
      };
      cachedLocate = (line) => tablePosition(t, line);
      cachedStarts = new Uint32Array(getRawAsset(`${bundle}.starts`));
    } else {
      const map = JSON.parse(readFileSync(`${process.argv[1]}.map`, "utf8")) as RawMap;
      cachedLocate = (line, column) => mapPosition(map, line, column);
    }
  } catch {}
  return cachedLocate;
}

const FRAME = /\(?([^\s()]+):(\d+):(\d+)\)?$/;
const PLUMBING_FILE = /\/(errors|sourcemap|strerror|program)\.ts$/;
const PLUMBING_POS = /^(errors|sourcemap|strerror|program)\.ts:/;

/** Bundle positions looked up so far: many errors come from few places. */
const positions = new Map<number, string | null | undefined>();

/** A stack frame, from a V8 call site or a line of stack text; read only as far as needed. */
interface Frame {
  file: string;
  line(): number;
  column(): number;
  /** Its character position in the script (a call site's only). */
  position?(): number;
}

/** "file.ts:LINE" of the first frame outside Node and the sys/errors plumbing. In the single
 * executable a call site's bundle line comes from its character position. */
function firstLocation(frames: Iterable<Frame>): string {
  for (const f of frames) {
    const { file } = f;
    if (!file || file.startsWith("node:") || PLUMBING_FILE.test(file)) continue;
    if (file.endsWith(".ts")) return `${basename(file)}:${f.line()}`;
    const locate = bundleLocate();
    let pos: string | null | undefined;
    let line: number;
    if (cachedStarts && f.position) {
      const at = f.position();
      pos = positions.get(at);
      line = lineAt(cachedStarts, at);
      if (pos === undefined) {
        pos = locate?.(line, 1);
        positions.set(at, pos);
      }
    } else {
      line = f.line();
      pos = locate?.(line, f.column());
    }
    if (pos && !PLUMBING_POS.test(pos)) return pos;
    if (pos) continue;
    return `${basename(file)}:${line}`;
  }
  return "unknown:0";
}

/** sourceLocation() from V8's call sites (Error.prepareStackTrace), formatting no stack text. */
export function siteLocation(sites: NodeJS.CallSite[]): string {
  return firstLocation(
    sites.map((c) => ({
      file: c.getFileName() ?? "",
      line: () => c.getLineNumber() ?? 0,
      column: () => c.getColumnNumber() ?? 0,
      position: () => c.getPosition(),
    })),
  );
}

/** "file.ts:LINE" of the first stack frame outside the sys/errors plumbing. */
export function sourceLocation(at: Error): string {
  const frames: Frame[] = [];
  for (const l of (at.stack ?? "").split("\n").slice(1)) {
    const m = FRAME.exec(l.trim());
    if (m) frames.push({ file: m[1], line: () => Number(m[2]), column: () => Number(m[3]) });
  }
  return firstLocation(frames);
}

/** The stack of at, one "  at FUNCTION (file.ts:LINE)" line a frame, our TypeScript source
 * where the bundle's map says it (ch-image --debug). */
export function stackTrace(at: Error): string[] {
  const out: string[] = [];
  for (const f of (at.stack ?? "").split("\n").slice(1)) {
    const t = f.trim();
    const m = FRAME.exec(t);
    if (!m) continue;
    const [, file, line, col] = m;
    const fn = /^at (.+?) \(/.exec(t)?.[1] ?? "<anonymous>";
    let where = `${basename(file)}:${line}`;
    if (!file.endsWith(".ts") && !file.startsWith("node:")) where = bundleLocate()?.(Number(line), Number(col)) ?? where;
    out.push(`  at ${fn} (${where})`);
  }
  return out;
}
