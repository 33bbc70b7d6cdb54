// Build step, run by the pinned Node: decodes dist/ch.cjs.map into the line table that the
// executable carries (src/sys/sourcemap.ts), so that printing an error parses no source map,
// and where each line of the script the executable runs (ch.js) starts, so that a call site's
// position finds its line.
//   node build/linetable.ts MAP OUT SCRIPT   (writes OUT.lines, OUT.sources.json, OUT.starts)
import { readFileSync, writeFileSync } from "node:fs";
import { lineStarts, lineTable, type RawMap } from "../src/sys/sourcemap.ts";

const [map, out, script] = process.argv.slice(2);
const t = lineTable(JSON.parse(readFileSync(map, "utf8")) as RawMap);
writeFileSync(`${out}.lines`, t.lines);
writeFileSync(`${out}.sources.json`, JSON.stringify(t.sources));
writeFileSync(`${out}.starts`, lineStarts(readFileSync(script, "utf8")));
