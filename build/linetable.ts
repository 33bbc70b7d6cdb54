// Build step, run by the pinned Node: decodes dist/ch.cjs.map into the line table that the
// executable carries (src/sys/sourcemap.ts), so that printing an error parses no source map.
import { readFileSync, writeFileSync } from "node:fs";
import { lineTable, type RawMap } from "../src/sys/sourcemap.ts";

const [map, out] = process.argv.slice(2);
const t = lineTable(JSON.parse(readFileSync(map, "utf8")) as RawMap);
writeFileSync(`${out}.lines`, t.lines);
writeFileSync(`${out}.sources.json`, JSON.stringify(t.sources));
