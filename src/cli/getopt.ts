// GNU-style option parsing for the programs (getopt_long/argp semantics): short options cluster
// (-vvw), values attach (-W4m, --cd=/x) or follow (-c /x) when required, optional values only
// attach (--set-env=FILE, -W4m), options may follow positionals until "--", and every option
// is returned in command-line order so that order-dependent options (--set-env, --unset-env)
// keep it. cac's parser cannot express these, and Charliecloud's users rely on them.
import { usageError } from "../sys/errors.ts";
import { VERSION } from "../version.ts";

export type ArgKind = "none" | "required" | "optional";

export interface OptSpec {
  name: string;
  short?: string;
  arg: ArgKind;
  argName?: string;
  help: string;
}

export interface ParsedOpt {
  name: string;
  value: string | null;
}

export interface Parsed {
  opts: ParsedOpt[];
  positionals: string[];
  /** Everything after "--" (also included at the end of positionals). */
  afterDashes: string[] | null;
}

/** Parses argv. Option parsing ends at "--", or at positional number `stopAfter` + 1 (ch-run's
 * COMMAND after IMAGE), whichever comes first. */
export function parseArgs(argv: string[], specs: OptSpec[], stopAfter = Number.POSITIVE_INFINITY): Parsed {
  const byLong = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short as string, s]));
  const opts: ParsedOpt[] = [];
  const positionals: string[] = [];
  let afterDashes: string[] | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--") {
      afterDashes = argv.slice(i + 1);
      positionals.push(...afterDashes);
      break;
    }
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      let spec = byLong.get(name);
      if (!spec) {
        // Unambiguous prefixes, as getopt_long allows.
        const hits = specs.filter((s) => s.name.startsWith(name));
        if (hits.length === 1 && name.length > 0) spec = hits[0];
        else if (hits.length > 1) throw usageError(`option '--${name}' is ambiguous`);
      }
      if (!spec) throw usageError(`unrecognized option '--${name}'`);
      let value: string | null = eq < 0 ? null : a.slice(eq + 1);
      if (spec.arg === "none" && value !== null) throw usageError(`option '--${spec.name}' doesn't allow an argument`);
      if (spec.arg === "required" && value === null) {
        if (i + 1 >= argv.length) throw usageError(`option '--${spec.name}' requires an argument`);
        value = argv[++i];
      }
      opts.push({ name: spec.name, value });
      continue;
    }
    if (a.startsWith("-") && a.length > 1) {
      for (let k = 1; k < a.length; k++) {
        const spec = byShort.get(a[k]);
        if (!spec) throw usageError(`invalid option -- '${a[k]}'`);
        if (spec.arg === "none") {
          opts.push({ name: spec.name, value: null });
          continue;
        }
        let value: string | null = a.slice(k + 1);
        if (value === "") {
          value = null;
          if (spec.arg === "required") {
            if (i + 1 >= argv.length) throw usageError(`option requires an argument -- '${a[k]}'`);
            value = argv[++i];
          }
        }
        opts.push({ name: spec.name, value });
        break;
      }
      continue;
    }
    if (positionals.length >= stopAfter) {
      positionals.push(...argv.slice(i));
      break;
    }
    positionals.push(a);
  }
  return { opts, positionals, afterDashes };
}

/** GNU-style --help text. */
export function helpText(usage: string, summary: string, specs: OptSpec[], trailer = ""): string {
  const lines = [`Usage: ${usage}`, "", summary, ""];
  for (const s of specs) {
    let left = s.short ? `  -${s.short}, ` : "      ";
    left += `--${s.name}`;
    if (s.arg === "required") left += `=${s.argName ?? "ARG"}`;
    if (s.arg === "optional") left += `[=${s.argName ?? "ARG"}]`;
    lines.push(left.length >= 29 ? `${left}\n${" ".repeat(30)}${s.help}` : `${left.padEnd(30)}${s.help}`);
  }
  if (trailer) lines.push("", trailer);
  return `${lines.join("\n")}\n`;
}

/** Parses a non-negative decimal integer option value. */
export function parseId(opt: string, value: string): number {
  if (!/^\d+$/.test(value)) throw usageError(`--${opt}: not a non-negative integer: ${value}`);
  const n = Number(value);
  if (n > 0xfffffffe) throw usageError(`--${opt}: out of range: ${value}`);
  return n;
}

export function versionLine(program: string): string {
  return `${program} (Charliecloud) ${VERSION}\n`;
}

export interface ProgramInfo {
  name: string;
  usage: string;
  summary: string;
  specs: OptSpec[];
  trailer?: string;
}

/** --help and --version, the GNU way, whichever comes first: the exit status, or null if neither
 * was given. */
export function helpOrVersion(p: Parsed, info: ProgramInfo): number | null {
  const first = p.opts.find((o) => o.name === "help" || o.name === "version");
  if (!first) return null;
  process.stdout.write(
    first.name === "help"
      ? helpText(`${info.name} ${info.usage}`, info.summary, info.specs, info.trailer)
      : versionLine(info.name),
  );
  return 0;
}
