// GNU-style option parsing for the programs (getopt_long/argp semantics): short options cluster
// (-vvw), values attach (-W4m, --cd=/x) or follow (-c /x) when required, optional values only
// attach (--set-env=FILE, -W4m), options may follow positionals until "--", and every option
// is returned in command-line order so that order-dependent options (--set-env, --unset-env)
// keep it. cac's parser cannot express these, and Charliecloud's users rely on them.
import { ChError, usageError } from "../sys/errors.ts";
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
}

/** An option getopt_long(3) itself refuses (unknown, ambiguous, missing or extra argument), with
 * getopt's own words. */
export class GetoptError extends ChError {
  constructor(message: string) {
    super(message, { usage: true });
  }
}

export type ArgItem = { kind: "opt"; name: string; value: string | null } | { kind: "pos"; value: string };

/** Scans argv one item at a time, options and positionals in command-line order, so that a
 * caller can act on an option (--help, --feature) before a later bad one is reached, as argp
 * does. Option parsing ends at "--" (the rest are positionals), or at positional number
 * `stopAfter` + 1 (ch-run's COMMAND after IMAGE), whichever comes first. Throws GetoptError. */
export function* scanArgs(argv: string[], specs: OptSpec[], stopAfter = Number.POSITIVE_INFINITY): Generator<ArgItem> {
  const byLong = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short as string, s]));
  let positionals = 0;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--") {
      for (const rest of argv.slice(i + 1)) yield { kind: "pos", value: rest };
      return;
    }
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      let spec = byLong.get(name);
      if (!spec) {
        // Unambiguous prefixes, as getopt_long allows.
        const hits = specs.filter((s) => s.name.startsWith(name));
        if (hits.length === 1 && name.length > 0) spec = hits[0];
        else if (hits.length > 1)
          throw new GetoptError(`option '--${name}' is ambiguous; possibilities:${hits.map((h) => ` '--${h.name}'`).join("")}`);
      }
      if (!spec) throw new GetoptError(`unrecognized option '${a}'`);
      let value: string | null = eq < 0 ? null : a.slice(eq + 1);
      if (spec.arg === "none" && value !== null) throw new GetoptError(`option '--${spec.name}' doesn't allow an argument`);
      if (spec.arg === "required" && value === null) {
        if (i + 1 >= argv.length) throw new GetoptError(`option '--${spec.name}' requires an argument`);
        value = argv[++i];
      }
      yield { kind: "opt", name: spec.name, value };
      continue;
    }
    if (a.startsWith("-") && a.length > 1) {
      for (let k = 1; k < a.length; k++) {
        const spec = byShort.get(a[k]);
        if (!spec) throw new GetoptError(`invalid option -- '${a[k]}'`);
        if (spec.arg === "none") {
          yield { kind: "opt", name: spec.name, value: null };
          continue;
        }
        let value: string | null = a.slice(k + 1);
        if (value === "") {
          value = null;
          if (spec.arg === "required") {
            if (i + 1 >= argv.length) throw new GetoptError(`option requires an argument -- '${a[k]}'`);
            value = argv[++i];
          }
        }
        yield { kind: "opt", name: spec.name, value };
        break;
      }
      continue;
    }
    if (positionals >= stopAfter) {
      for (const rest of argv.slice(i)) yield { kind: "pos", value: rest };
      return;
    }
    positionals++;
    yield { kind: "pos", value: a };
  }
}

/** Parses argv all at once (see scanArgs()). */
export function parseArgs(argv: string[], specs: OptSpec[], stopAfter = Number.POSITIVE_INFINITY): Parsed {
  const opts: ParsedOpt[] = [];
  const positionals: string[] = [];
  for (const item of scanArgs(argv, specs, stopAfter)) {
    if (item.kind === "opt") opts.push({ name: item.name, value: item.value });
    else positionals.push(item.value);
  }
  return { opts, positionals };
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
