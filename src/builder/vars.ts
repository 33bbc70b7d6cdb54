// Build arguments and the variables each instruction sees, by the rules of Docker's builder
// (BuildKit):
// - An ARG before the first FROM is global: usable in FROM lines only, unless a stage declares
//   it again (`ARG NAME` without a value takes the global value).
// - In a stage, an ARG is in scope from its line to the end of the stage (and of stages built
//   FROM that stage). Its value: --build-arg, else its default (substituted), else the global one.
// - ENV and ARG values are assigned in order: the later one wins for substitution and RUN; only
//   ENV is stored in the image.
// - Substituted: ADD COPY ENV EXPOSE LABEL STOPSIGNAL USER VOLUME WORKDIR, ARG defaults, the
//   --chown --chmod --from --checksum flags, RUN --mount options, COPY heredocs with an unquoted
//   delimiter; FROM with global ARGs only. Not substituted: RUN CMD ENTRYPOINT SHELL HEALTHCHECK
//   MAINTAINER ONBUILD (the shell or a later build does that).
// - The proxy variables (HTTP_PROXY etc.) need no ARG: they come from --build-arg or, as in
//   Charliecloud, from the environment, reach RUN, and are never stored in the image.
// - The platform ARGs (TARGETPLATFORM, BUILDARCH...) are global, for the host.
import { ChError, usageError } from "../sys/errors.ts";
import { type FlagValue, type Heredoc, type Instruction, isHeredoc } from "./dockerfile.ts";
import { expandWord, expandWords, SubstitutionError, type Vars } from "./shell.ts";

export const PROXY_ARGS = [
  "HTTP_PROXY",
  "http_proxy",
  "HTTPS_PROXY",
  "https_proxy",
  "FTP_PROXY",
  "ftp_proxy",
  "NO_PROXY",
  "no_proxy",
  "ALL_PROXY",
  "all_proxy",
];

/** Docker's automatic global ARGs for the platform: we build for the host only. */
export function platformArgs(nodeArch: string = process.arch): Map<string, string> {
  const [arch, variant = ""] = (
    { x64: "amd64", arm64: "arm64", arm: "arm/v7", ia32: "386", ppc64: "ppc64le" } as Record<string, string>
  )[nodeArch]?.split("/") ?? [nodeArch];
  const platform = `linux/${arch}${variant ? `/${variant}` : ""}`;
  const m = new Map<string, string>();
  for (const p of ["TARGET", "BUILD"]) {
    m.set(`${p}PLATFORM`, platform);
    m.set(`${p}OS`, "linux");
    m.set(`${p}ARCH`, arch);
    m.set(`${p}VARIANT`, variant);
  }
  return m;
}

/** --build-arg values. */
export class BuildArgs {
  private readonly values: Map<string, string>;
  private readonly host: Record<string, string | undefined>;

  /** `specs`: KEY=VALUE, or KEY for the value of environment variable KEY. */
  constructor(specs: string[] = [], host: Record<string, string | undefined> = {}) {
    this.host = host;
    this.values = new Map();
    for (const s of specs) {
      const eq = s.indexOf("=");
      const key = eq < 0 ? s : s.slice(0, eq);
      if (!/^[^\s=]+$/.test(key)) throw usageError(`--build-arg: invalid name: ${JSON.stringify(s)}`);
      const value: string | undefined = eq < 0 ? host[key] : s.slice(eq + 1);
      if (value === undefined) throw usageError(`--build-arg: ${key}: no value and not in environment`);
      this.values.set(key, value);
    }
  }

  /** The value given for an ARG; a proxy variable also from the environment. */
  get(key: string): string | undefined {
    if (this.values.has(key)) return this.values.get(key);
    return PROXY_ARGS.includes(key) ? this.host[key] : undefined;
  }

  /** The proxy variables for RUN: from --build-arg, else from the environment. */
  proxies(): Map<string, string> {
    const m = new Map<string, string>();
    for (const k of PROXY_ARGS) {
      const v = this.values.get(k) ?? this.host[k];
      if (v !== undefined) m.set(k, v);
    }
    return m;
  }

  /** Build args not among `declared` ARG names (Docker warns about these). */
  unused(declared: ReadonlySet<string>): string[] {
    return [...this.values.keys()].filter((k) => !declared.has(k) && !PROXY_ARGS.includes(k));
  }
}

/** The global scope: platform ARGs, then the ARGs before the first FROM. */
export function globalArgs(meta: Instruction[], args: BuildArgs, platform = platformArgs()): Map<string, string> {
  const g = new Map(platform);
  for (const inst of meta)
    for (const [key, dflt] of inst.kv ?? []) {
      const given = args.get(key);
      if (given !== undefined) g.set(key, given);
      else if (dflt !== null)
        g.set(
          key,
          substitute(inst, () => expandWord(dflt, g, { escape: inst.escape })),
        );
    }
  return g;
}

/** Runs a substitution, turning its failure into FILE:LINE: message. */
export function substitute<T>(inst: Instruction, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof SubstitutionError) throw new ChError(`${inst.file}:${inst.line}: ${e.message}`);
    throw e;
  }
}

/** The variables of one stage as its instructions are built. */
export class StageScope {
  /** ENV of the image: the base image's, then ENV instructions. What the image stores. */
  readonly imageEnv: Map<string, string>;
  /** All variables in scope, for substitution and RUN: ENV and ARG, the later one winning. */
  readonly vars: Map<string, string>;
  /** ARG names declared in this stage (and in the stage it is built FROM). */
  readonly declared: Set<string>;
  private readonly globals: ReadonlyMap<string, string>;
  private readonly args: BuildArgs;

  constructor(
    globals: ReadonlyMap<string, string>,
    args: BuildArgs,
    baseEnv: Iterable<[string, string]> = [],
    inherited?: StageScope,
  ) {
    this.globals = globals;
    this.args = args;
    this.imageEnv = new Map(inherited?.imageEnv ?? baseEnv);
    this.vars = new Map(inherited?.vars ?? this.imageEnv);
    this.declared = new Set(inherited?.declared ?? []);
  }

  /** A stage built FROM this one starts with everything in scope here (as BuildKit does). */
  child(): StageScope {
    return new StageScope(this.globals, this.args, [], this);
  }

  /** Environment for RUN: the variables in scope, and the proxy variables. */
  runEnv(): Map<string, string> {
    const env = new Map(this.vars);
    for (const [k, v] of this.args.proxies()) if (!env.has(k)) env.set(k, v);
    return env;
  }

  /** Substitutes an instruction's arguments (those Docker substitutes) in the current scope, then
   * applies ENV and ARG to the scope. */
  apply(inst: Instruction): Expanded {
    const e = expandInstruction(inst, this.vars);
    if (inst.keyword === "env")
      for (const [k, v] of e.kv ?? []) {
        this.imageEnv.set(k, v ?? "");
        this.vars.set(k, v ?? "");
      }
    else if (inst.keyword === "arg") {
      e.kv = (inst.kv ?? []).map(([key, dflt]) => {
        this.declared.add(key);
        let value = this.args.get(key);
        if (value === undefined && dflt !== null)
          value = substitute(inst, () => expandWord(dflt, this.vars, { escape: inst.escape }));
        if (value === undefined) value = this.globals.get(key);
        if (value !== undefined) this.vars.set(key, value);
        return [key, value ?? null];
      });
    }
    return e;
  }
}

/** An instruction with its variables substituted. */
export interface Expanded {
  inst: Instruction;
  args: string[];
  /** ENV, LABEL: substituted names and values; ARG: the values it took (null: none). */
  kv: [string, string | null][] | null;
  flags: Record<string, FlagValue>;
  heredocs: Heredoc[];
}

const SUBSTITUTED_ARGS = new Set(["user", "workdir", "stopsignal", "volume", "add", "copy"]);

/** Substitutes variables where Docker does (see the top of this file); FROM is planStages'. */
export function expandInstruction(inst: Instruction, vars: Vars): Expanded {
  return substitute(inst, () => {
    const word = (w: string) => expandWord(w, vars, { escape: inst.escape });
    const e: Expanded = { inst, args: inst.args, kv: inst.kv, flags: { ...inst.flags }, heredocs: inst.heredocs };
    if (SUBSTITUTED_ARGS.has(inst.keyword)) {
      // Heredoc sources of COPY and ADD are names, not paths.
      const last = inst.args.length - 1;
      e.args = inst.args.map((a, i) => (inst.heredocs.length && i < last && isHeredoc(a) ? a : word(a)));
      for (const f of ["chown", "chmod", "from", "checksum"])
        if (typeof e.flags[f] === "string") e.flags[f] = word(e.flags[f] as string);
      e.heredocs = inst.heredocs.map((h) =>
        h.expand ? { ...h, content: expandWord(h.content, vars, { skipQuotes: true }) } : h,
      );
    } else if (inst.keyword === "expose") e.args = inst.args.flatMap((a) => expandWords(a, vars, { escape: inst.escape }));
    else if (inst.keyword === "env" || inst.keyword === "label") e.kv = (inst.kv ?? []).map(([k, v]) => [word(k), word(v ?? "")]);
    else if (inst.keyword === "run" && Array.isArray(inst.flags.mount))
      e.flags.mount = inst.flags.mount.map((m) => joinMountFields(mountFields(m).map(([k, v]) => [k, v === null ? v : word(v)])));
    return e;
  });
}

/** The key=value fields of a RUN --mount option: CSV, where double quotes protect commas and
 * "" inside them is a quote. Keys are case-insensitive. */
export function mountFields(spec: string): [string, string | null][] {
  const fields: string[] = [];
  let cur = "";
  let quoted = false;
  for (let i = 0; i < spec.length; i++) {
    const c = spec[i];
    if (c === '"') {
      if (quoted && spec[i + 1] === '"') {
        cur += '"';
        i++;
      } else quoted = !quoted;
    } else if (c === "," && !quoted) {
      fields.push(cur);
      cur = "";
    } else cur += c;
  }
  fields.push(cur);
  return fields
    .filter((f) => f !== "")
    .map((f) => {
      const eq = f.indexOf("=");
      return eq < 0 ? [f.toLowerCase(), null] : [f.slice(0, eq).toLowerCase(), f.slice(eq + 1)];
    });
}

/** The inverse of mountFields: fields with a comma or quote are quoted. */
export function joinMountFields(fields: [string, string | null][]): string {
  return fields
    .map(([k, v]) => {
      const f = v === null ? k : `${k}=${v}`;
      return /[",]/.test(f) ? `"${f.replaceAll('"', '""')}"` : f;
    })
    .join(",");
}
