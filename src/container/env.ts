// The command's environment, as Charliecloud builds it: the host's, then HOME, PATH (with /bin
// when missing), no TMPDIR, the user's --set-env and --unset-env (extended globs, as with
// FNM_EXTMATCH) in command-line order, and CH_RUNNING last.
import { ChError } from "../sys/errors.ts";
import { fnmatch } from "./fnmatch.ts";

export interface Assignment {
  name: string;
  value: string;
  /** Where it came from, for messages: "FILE:LINE" or the argument itself. */
  origin: string;
}

export type EnvOp =
  | { kind: "set"; vars: Assignment[] }
  /** --set-env with no argument: the image's /ch/environment, read when planning. */
  | { kind: "image-file"; path: string; nul: boolean }
  | { kind: "unset"; glob: string };

/** Parses one NAME=VALUE; strips one pair of single quotes around the value. */
export function parseAssignment(text: string, origin: string): Assignment {
  const eq = text.indexOf("=");
  if (eq < 0) throw new ChError(`can't parse variable: no delimiter: ${origin}`);
  const name = text.slice(0, eq);
  if (!name) throw new ChError(`can't parse variable: empty name: ${origin}`);
  let value = text.slice(eq + 1);
  if (value.length >= 2 && value.startsWith("'") && value.endsWith("'")) value = value.slice(1, -1);
  return { name, value, origin };
}

/** Parses a --set-env file: one assignment per line (or per NUL-terminated record with
 * --set-env0); empty records are skipped; line numbers count from 1. */
export function parseEnvFile(text: string, path: string, nul: boolean): Assignment[] {
  const records = text.split(nul ? "\0" : "\n");
  const out: Assignment[] = [];
  records.forEach((r, i) => {
    const rec = nul && r.endsWith("\n") ? r.slice(0, -1) : r;
    if (rec === "") return;
    out.push(parseAssignment(rec, `${path}:${i + 1}`));
  });
  return out;
}

/** Expands $NAME and ${NAME} items of a colon-separated value; an item naming an unset or
 * empty variable is dropped with its separator. */
export function expand(value: string, env: Map<string, string>): string {
  const items = value.split(":");
  const out: string[] = [];
  for (const item of items) {
    const m = /^\$(?:\{([^}]+)\}|(.+))$/.exec(item);
    if (!m) {
      out.push(item);
      continue;
    }
    const v = env.get(m[1] ?? m[2]);
    if (v) out.push(v);
  }
  return out.join(":");
}

export interface EnvInput {
  host: Record<string, string | undefined>;
  home: string;
  ops: EnvOp[];
  expand: boolean;
  /** Reads the image's environment file (container path); null if missing. */
  readImageFile(path: string): string | null;
}

export interface EnvResult {
  env: Map<string, string>;
  warnings: string[];
  /** Verbose lines: each change made. */
  log: string[];
}

export function hasBin(path: string): boolean {
  return path.split(":").some((d) => d === "/bin" || d === "/bin/");
}

/** A host environment may answer this with its entries, read without being watched: the
 * recording view of memo-record.ts, where the copy of the whole environment that buildEnv()
 * makes is no dependency of the plan (a remembered plan makes it again from the environment of
 * its day: memo.ts). */
export const HOST_ENTRIES: unique symbol = Symbol("host environment entries");

function entriesOf(host: Record<string, string | undefined>): [string, string | undefined][] {
  const own = (host as { [HOST_ENTRIES]?: () => [string, string | undefined][] })[HOST_ENTRIES];
  return typeof own === "function" ? own() : Object.entries(host);
}

export function buildEnv(input: EnvInput): EnvResult {
  const env = new Map<string, string>();
  for (const [k, v] of entriesOf(input.host)) if (v !== undefined) env.set(k, v);
  const warnings: string[] = [];
  const log: string[] = [];
  env.set("HOME", input.home);
  const path = env.get("PATH");
  if (path === undefined) warnings.push("$PATH not set");
  else if (!hasBin(path)) {
    env.set("PATH", `${path}:/bin`);
    log.push(`new $PATH: ${env.get("PATH")}`);
  }
  env.delete("TMPDIR");
  const set = (vars: Assignment[]) => {
    for (const a of vars) {
      const value = input.expand ? expand(a.value, env) : a.value;
      env.set(a.name, value);
      log.push(`environment: ${a.name}=${value}`);
    }
  };
  for (const op of input.ops) {
    if (op.kind === "set") set(op.vars);
    else if (op.kind === "image-file") {
      const text = input.readImageFile(op.path);
      if (text === null) throw new ChError(`can't open: ${op.path}`, { errno: 2 });
      set(parseEnvFile(text, op.path, op.nul));
    } else {
      for (const k of [...env.keys()])
        if (fnmatch(op.glob, k)) {
          env.delete(k);
          log.push(`environment: unset ${k}`);
        }
    }
  }
  env.set("CH_RUNNING", "Weird Al Yankovic");
  return { env, warnings, log };
}

/** How the command's environment is made from the host's: everything of the host's that it
 * depends on is in the host environment passed to commandEnv() (a remembered plan, memo.ts, is
 * run again with another environment). */
export interface EnvRecipe {
  home: string;
  ops: EnvOp[];
  expand: boolean;
  /** PMIx keeps its data per process (pmix.ts's "hash" step). */
  pmixHash: boolean;
  /** The host file of each --set-env FILE in the image (container path), null if none. */
  files: [string, string | null][];
}

/** The command's environment: buildEnv() with the recipe, then PMIx's change; the change's
 * text in `pmix` (null: none or not asked for). */
export function commandEnv(
  r: EnvRecipe,
  host: Record<string, string | undefined>,
  readFile: (hostPath: string) => string | null,
): EnvResult & { pmix: string | null } {
  const files = new Map(r.files);
  const env = buildEnv({
    host,
    home: r.home,
    ops: r.ops,
    expand: r.expand,
    readImageFile: (p) => {
      const f = files.get(p);
      return f ? readFile(f) : null;
    },
  });
  return { ...env, pmix: r.pmixHash ? pmixHashEnv(env.env) : null };
}

/** PMIx's change for its per-process store (pmix.ts's "hash" step), unless the user chose a
 * store already: its text, or null. */
export function pmixHashEnv(env: Map<string, string>): string | null {
  if (env.has("PMIX_MCA_gds")) return null;
  env.set("PMIX_MCA_gds", "hash");
  return "PMIX_MCA_gds=hash";
}
