// `ch-image build`: its options (Charliecloud's names), the Dockerfile and context it reads, the
// image name it infers, --parse-only and --dry-run; building itself is build.ts's (its cache:
// --cache, --no-cache, --rebuild and $CH_IMAGE_CACHE, as Charliecloud's).
import { readFileSync, realpathSync, statSync } from "node:fs";
import { basename, resolve } from "node:path";
import type { OptSpec, ParsedOpt } from "../cli/getopt.ts";
import { info } from "../cli/log.ts";
import { type Storage, validImageName } from "../image/storage.ts";
import type { ClientOptions } from "../registry/pull.ts";
import { ChError, sysError, usageError, warn } from "../sys/errors.ts";
import { Builder } from "./build.ts";
import { type Dockerfile, type Instruction, parseDockerfile } from "./dockerfile.ts";
import { planStages } from "./stages.ts";
import { BuildArgs } from "./vars.ts";

export const BUILD_SPECS: OptSpec[] = [
  {
    name: "build-arg",
    arg: "required",
    argName: "KEY[=VALUE]",
    help: "build: set ARG KEY (to environment variable KEY if no VALUE)",
  },
  { name: "cache", arg: "none", help: "build: use the build cache (default)" },
  { name: "dry-run", short: "n", arg: "none", help: "build: don't execute any instruction" },
  {
    name: "file",
    short: "f",
    arg: "required",
    argName: "DOCKERFILE",
    help: "build: Dockerfile to use (default CONTEXT/Dockerfile; - for standard input)",
  },
  {
    name: "force",
    arg: "optional",
    argName: "MODE",
    help: "build: root emulation MODE: seccomp (default) or none",
  },
  {
    name: "force-cmd",
    arg: "required",
    argName: "CMD,ARG1[,ARG2...]",
    help: "build: add ARGs to command CMD in RUN (repeatable; implies --force=seccomp)",
  },
  { name: "no-cache", arg: "none", help: "build: don't use the build cache (nothing read from it or kept)" },
  { name: "parse-only", arg: "none", help: "build: parse the Dockerfile, print its instructions (JSON lines), stop" },
  { name: "rebuild", arg: "none", help: "build: re-execute every instruction but FROM, updating the cache" },
  { name: "tag", short: "t", arg: "required", argName: "TAG", help: "build: name of the image (default: inferred)" },
  {
    name: "target",
    arg: "required",
    argName: "STAGE",
    help: "build: build stage STAGE (and only the stages it needs) as the image (default: the last)",
  },
];

const BUILD_NAMES = new Set(BUILD_SPECS.map((s) => s.name));

/** Whether a parsed option is one of build's. */
export function isBuildOption(name: string): boolean {
  return BUILD_NAMES.has(name);
}

export type CacheMode = "enabled" | "disabled" | "rebuild";

export interface ForceCmd {
  cmd: string;
  args: string[];
}

export interface BuildOptions {
  tag: string | null;
  file: string | null;
  buildArgs: string[];
  force: "seccomp" | "none";
  /** Replaces the default list when given. */
  forceCmds: ForceCmd[] | null;
  cache: CacheMode;
  parseOnly: boolean;
  dryRun: boolean;
  /** --target: a stage name; null for the last stage. */
  target: string | null;
}

/** --force-cmd=CMD,ARG1[,ARG2...]: commas split, a backslash makes the next character literal. */
export function parseForceCmd(spec: string): ForceCmd {
  const parts: string[] = [];
  let cur = "";
  for (let i = 0; i < spec.length; i++) {
    if (spec[i] === "\\" && i + 1 < spec.length) cur += spec[++i];
    else if (spec[i] === ",") {
      parts.push(cur);
      cur = "";
    } else cur += spec[i];
  }
  parts.push(cur);
  if (parts.length < 2 || parts[0] === "") throw usageError(`--force-cmd: expected CMD,ARG1[,ARG2...]: ${spec}`);
  return { cmd: parts[0], args: parts.slice(1) };
}

/** Build options from the command line (in order) and the environment ($CH_IMAGE_CACHE). */
export function buildOptions(opts: ParsedOpt[], env: Record<string, string | undefined>): BuildOptions {
  const o: BuildOptions = {
    tag: null,
    file: null,
    buildArgs: [],
    force: "seccomp",
    forceCmds: null,
    cache: "enabled",
    parseOnly: false,
    dryRun: false,
    target: null,
  };
  const e = env.CH_IMAGE_CACHE;
  if (e !== undefined && e !== "") {
    if (e !== "enabled" && e !== "disabled" && e !== "rebuild")
      throw usageError(`$CH_IMAGE_CACHE: invalid value: ${e} (expected enabled, disabled or rebuild)`);
    o.cache = e;
  }
  for (const { name, value } of opts) {
    const v = value ?? "";
    switch (name) {
      case "tag":
        o.tag = v;
        break;
      case "file":
        o.file = v;
        break;
      case "build-arg":
        o.buildArgs.push(v);
        break;
      case "force":
        if (value === null || value === "seccomp") o.force = "seccomp";
        else if (value === "none") o.force = "none";
        else throw usageError(`--force: invalid mode: ${value} (expected seccomp or none)`);
        break;
      case "force-cmd":
        o.forceCmds = [...(o.forceCmds ?? []), parseForceCmd(v)];
        o.force = "seccomp"; // --force-cmd implies --force=seccomp
        break;
      case "cache":
        o.cache = "enabled";
        break;
      case "no-cache":
        o.cache = "disabled";
        break;
      case "rebuild":
        o.cache = "rebuild";
        break;
      case "parse-only":
        o.parseOnly = true;
        break;
      case "dry-run":
        o.dryRun = true;
        break;
      case "target":
        if (v === "") throw usageError("--target: a stage name is needed");
        o.target = v;
        break;
    }
  }
  return o;
}

/** Charliecloud's rule for the image name when -t is absent: Dockerfile.NAME gives NAME;
 * NAME.dockerfile and NAME.df give NAME; else the context directory's name ("root" for /);
 * lower case, characters other than a-z 0-9 _ . - dropped. Unlike Charliecloud we don't add
 * ":latest": an image is stored under the name as written (ch-run NAME finds it). */
export function inferTag(dockerfile: string | null, context: string): string {
  const file = dockerfile === null || dockerfile === "-" ? "" : basename(dockerfile);
  const dot = file.indexOf(".");
  const last = file.lastIndexOf(".");
  let raw: string;
  let from: string;
  if (dot > 0 && file.slice(0, dot) === "Dockerfile") {
    raw = file.slice(dot + 1);
    from = "Dockerfile extension";
  } else if (last > 0 && ["df", "dockerfile"].includes(file.slice(last + 1))) {
    raw = file.slice(0, last);
    from = "Dockerfile basename";
  } else {
    const abs = resolve(context);
    raw = abs === "/" ? "root" : basename(abs);
    from = "context directory";
  }
  const tag = raw.toLowerCase().replace(/[^a-z0-9_.-]/g, "");
  if (!validImageName(tag)) throw usageError(`can't infer an image name from the ${from} (${raw}); use -t`);
  return tag;
}

/** One instruction as --parse-only prints it. */
export function instructionJson(inst: Instruction): string {
  const o: Record<string, unknown> = {
    line: inst.line,
    keyword: inst.keyword,
    flags: inst.flags,
    args: inst.kv ? inst.kv.flat() : inst.args,
    json: inst.json,
  };
  if (inst.heredocs.length) o.heredocs = inst.heredocs;
  if (inst.trigger) o.trigger = inst.trigger;
  return JSON.stringify(o);
}

function readDockerfile(path: string): string {
  try {
    return readFileSync(path === "-" ? 0 : path, "utf8");
  } catch (e) {
    throw sysError(`can't read Dockerfile: ${path === "-" ? "standard input" : path}`, e);
  }
}

/** ch-image build [-t TAG] [-f DOCKERFILE] [...] CONTEXT */
export async function build(
  args: string[],
  o: BuildOptions,
  env: Record<string, string | undefined>,
  storage: Storage,
  client: ClientOptions,
): Promise<number> {
  if (args.length !== 1) throw usageError("usage: ch-image build [-t TAG] [-f DOCKERFILE] [...] CONTEXT");
  const context = args[0];
  if (context === "-") {
    if (o.file !== null) throw usageError("build: --file not allowed when CONTEXT is - (the Dockerfile is standard input)");
  } else {
    let dir = false;
    try {
      dir = statSync(context).isDirectory();
    } catch (e) {
      throw sysError(`build: context directory: ${context}`, e);
    }
    if (!dir) throw new ChError(`build: context is not a directory: ${context}`);
  }
  if (o.tag !== null && !validImageName(o.tag)) throw usageError(`invalid image name: ${o.tag}`);
  const buildArgs = new BuildArgs(o.buildArgs, env); // checked now: a bad one is a usage error
  const path = context === "-" ? "-" : (o.file ?? `${context}/Dockerfile`);
  const df: Dockerfile = parseDockerfile(readDockerfile(path), path === "-" ? "<stdin>" : path);
  const plan = planStages(df, buildArgs, o.target);
  // With CONTEXT -, there is no directory to name the image after (building will need -t).
  const tag = o.tag ?? (context === "-" ? null : inferTag(o.file, context));
  if (o.tag === null && tag !== null) info(`inferred image name: ${tag}`);
  for (const w of [...df.warnings, ...plan.warnings]) warn(w);
  if (o.parseOnly) {
    process.stdout.write(df.instructions.map((i) => `${instructionJson(i)}\n`).join(""));
    return 0;
  }
  if (tag === null) throw usageError("build: -t TAG needed when CONTEXT is - (no directory to name the image after)");
  if (o.dryRun) {
    for (const i of plan.order)
      for (const inst of [plan.stages[i].from, ...plan.stages[i].instructions]) info(`${inst.file}:${inst.line}: ${inst.text}`);
    info(`dry run: nothing executed, no image written: ${tag}`);
    return 0;
  }
  const builder = new Builder(plan, buildArgs, {
    storage,
    client,
    context: context === "-" ? null : realpathSync(resolve(context)),
    force: o.force,
    forceCmds: o.forceCmds,
    cache: o.cache,
  });
  await builder.build(tag);
  return 0;
}
