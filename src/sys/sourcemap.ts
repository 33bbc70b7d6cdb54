// Points an error at our TypeScript source. In the single executable, stack frames name the
// bundle; its source map travels as an SEA asset and is decoded only when an error is printed.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { getAsset, isSea } from "node:sea";

interface RawMap {
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

let cachedMap: RawMap | null | undefined;

function bundleMap(): RawMap | null {
  if (cachedMap !== undefined) return cachedMap;
  cachedMap = null;
  try {
    const text = isSea() ? getAsset("ch.cjs.map", "utf8") : readFileSync(`${process.argv[1]}.map`, "utf8");
    cachedMap = JSON.parse(text) as RawMap;
  } catch {}
  return cachedMap;
}

const FRAME = /\(?([^\s()]+):(\d+):(\d+)\)?$/;

/** "file.ts:LINE" of the first stack frame outside the sys/errors plumbing. */
export function sourceLocation(at: Error): string {
  const frames = (at.stack ?? "").split("\n").slice(1);
  for (const f of frames) {
    const m = FRAME.exec(f.trim());
    if (!m) continue;
    const [, file, line, col] = m;
    if (/\/(errors|sourcemap|strerror|program)\.ts$/.test(file)) continue;
    if (file.endsWith(".ts")) return `${basename(file)}:${line}`;
    if (file.startsWith("node:")) continue;
    const map = bundleMap();
    const pos = map && mapPosition(map, Number(line), Number(col));
    if (pos && !/(errors|sourcemap|strerror|program)\.ts:/.test(pos)) return pos;
    if (pos) continue;
    return `${basename(file)}:${line}`;
  }
  return "unknown:0";
}
