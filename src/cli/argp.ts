// Help texts laid out as glibc's argp lays them out (ch-run's --help, -? and --usage): options
// sorted by name, documentation from column 27, lines wrapped at column 79.
import type { OptSpec } from "./getopt.ts";

const DOC_COL = 27;
const RMARGIN = 79;
const USAGE_INDENT = 12;

/** argp's order: by the option's first name (its short letter if it has one), case aside,
 * a lower-case letter before its capital, a shorter name before a longer one. */
function sortKey(s: OptSpec): string {
  return s.short ?? s.name;
}

function compare(a: OptSpec, b: OptSpec): number {
  const ka = sortKey(a);
  const kb = sortKey(b);
  const la = ka.toLowerCase();
  const lb = kb.toLowerCase();
  if (la !== lb) {
    if (lb.startsWith(la)) return -1;
    if (la.startsWith(lb)) return 1;
    return la < lb ? -1 : 1;
  }
  if (ka === kb) return 0;
  return ka === la ? -1 : 1; // lower case first
}

function wrap(words: string[], first: string, indent: number): string[] {
  const lines: string[] = [];
  let line = first;
  for (const w of words) {
    if (line.length + 1 + w.length > RMARGIN && line.trim() !== "") {
      lines.push(line);
      line = " ".repeat(indent) + w;
    } else line += (line.endsWith(" ") || line === "" ? "" : " ") + w;
  }
  lines.push(line);
  return lines;
}

function optionLine(s: OptSpec): string {
  let left = s.short ? `  -${s.short}, ` : "      ";
  left += `--${s.name}`;
  if (s.arg === "required") left += `=${s.argName ?? "ARG"}`;
  if (s.arg === "optional") left += `[=${s.argName ?? "ARG"}]`;
  const words = s.help.split(" ");
  if (left.length + 1 > DOC_COL) return [left, ...wrap(words, " ".repeat(DOC_COL), DOC_COL)].join("\n");
  return wrap(words, left.padEnd(DOC_COL), DOC_COL).join("\n");
}

/** --help and -?: usage, summary, every option, then the text after them. */
export function argpHelp(name: string, argsDoc: string, summary: string, specs: OptSpec[], after: string): string {
  const sorted = [...specs].sort(compare);
  const lines = [`Usage: ${name} [OPTION...] ${argsDoc}`, summary, ""];
  for (const s of sorted) lines.push(optionLine(s));
  lines.push(`${"  -?, --help".padEnd(DOC_COL)}give this help list`);
  lines.push(`${"      --usage".padEnd(DOC_COL)}give a short usage message`);
  return `${lines.join("\n")}\n\n${after}`;
}

/** --usage: every option in brackets, flags first, wrapped. */
export function argpUsage(name: string, argsDoc: string, specs: OptSpec[]): string {
  const sorted = [...specs].sort(compare);
  const flags = sorted
    .filter((s) => s.short && s.arg === "none")
    .map((s) => s.short)
    .join("");
  const items = [`[-${flags}?]`];
  for (const s of sorted.filter((x) => x.short && x.arg !== "none"))
    items.push(s.arg === "required" ? `[-${s.short} ${s.argName ?? "ARG"}]` : `[-${s.short}[${s.argName ?? "ARG"}]]`);
  for (const s of sorted) {
    if (s.arg === "none") items.push(`[--${s.name}]`);
    else if (s.arg === "required") items.push(`[--${s.name}=${s.argName ?? "ARG"}]`);
    else items.push(`[--${s.name}[=${s.argName ?? "ARG"}]]`);
  }
  items.push("[--help]", "[--usage]", ...argsDoc.split(" "));
  return `${wrap(items, `Usage: ${name}`, USAGE_INDENT).join("\n")}\n`;
}
