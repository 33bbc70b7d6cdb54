// ch-run's command line, read as Charliecloud's ch-run (argp) reads it: options act in order as
// they come (--help, --version, --feature, --warnings and --test end ch-run on the spot), getopt's
// own complaints exit 64 with argp's hint, Charliecloud's messages for bad values. No I/O here
// but reading --set-env files; ch-run.ts acts on the result.
import { readFileSync } from "node:fs";
import { posix } from "node:path";
import { GetoptError, type OptSpec, parseId, scanArgs } from "../cli/getopt.ts";
import { ChError, sysError, usageError } from "../sys/errors.ts";
import { type Assignment, type EnvOp, parseAssignment, parseEnvFile } from "./env.ts";
import { type Bind, DEFAULT_WRITE_FAKE_SIZE, defaultRunOptions, type RunOptions } from "./plan.ts";

export const ARGS_DOC = "IMAGE -- COMMAND [ARG...]";
export const SUMMARY = "Run a command in a Charliecloud container.";
export const AFTER_OPTIONS =
  "Example:\n\n  $ ch-run /data/foo -- echo hello\n  hello\n\nYou cannot use this program to actually change your UID.\n";

/** Charliecloud's options and help texts. */
export const SPECS: OptSpec[] = [
  { name: "bind", short: "b", arg: "required", argName: "SRC[:DST]", help: "mount SRC at guest DST (default: same as SRC)" },
  { name: "cd", short: "c", arg: "required", argName: "DIR", help: "initial working directory in container" },
  { name: "env-no-expand", arg: "none", help: "don't expand $ in --set-env input" },
  { name: "feature", arg: "required", argName: "FEAT", help: "exit successfully if FEAT is enabled" },
  { name: "gid", short: "g", arg: "required", argName: "GID", help: "run as GID within container" },
  { name: "home", arg: "none", help: "mount host $HOME at guest /home/$USER" },
  { name: "join", short: "j", arg: "none", help: "use same container as peer ch-run" },
  { name: "join-pid", arg: "required", argName: "PID", help: "join a namespace using a PID" },
  { name: "join-ct", arg: "required", argName: "N", help: "number of join peers (implies --join)" },
  { name: "join-tag", arg: "required", argName: "TAG", help: "label for peer group (implies --join)" },
  { name: "test", arg: "required", argName: "TEST", help: "do test TEST" },
  { name: "mount", short: "m", arg: "required", argName: "DIR", help: "SquashFS mount point" },
  { name: "no-passwd", arg: "none", help: "don't bind-mount /etc/{passwd,group}" },
  { name: "private-tmp", short: "t", arg: "none", help: "use container-private /tmp" },
  { name: "quiet", short: "q", arg: "none", help: "print less output (can be repeated)" },
  { name: "seccomp", arg: "none", help: "fake success for some syscalls with seccomp(2)" },
  { name: "set-env", arg: "optional", argName: "ARG", help: "set env. variables per ARG (newline-delimited)" },
  { name: "set-env0", arg: "optional", argName: "ARG", help: "set env. variables per ARG (null-delimited)" },
  { name: "storage", short: "s", arg: "required", argName: "DIR", help: "set DIR as storage directory" },
  { name: "uid", short: "u", arg: "required", argName: "UID", help: "run as UID within container" },
  { name: "unsafe", arg: "none", help: "do unsafe things (internal use only)" },
  { name: "unset-env", arg: "required", argName: "GLOB", help: "unset environment variable(s)" },
  { name: "verbose", short: "v", arg: "none", help: "be more verbose (can be repeated)" },
  { name: "version", short: "V", arg: "none", help: "print version and exit" },
  { name: "warnings", arg: "required", argName: "NUM", help: "log NUM warnings and exit" },
  { name: "write", short: "w", arg: "none", help: "mount image read-write (avoid)" },
  { name: "write-fake", short: "W", arg: "optional", argName: "SIZE", help: "overlay read-write tmpfs on top of image" },
];

/** argp's own: -?/--help and --usage. */
const ARGP_SPECS: OptSpec[] = [
  { name: "help", short: "?", arg: "none", help: "give this help list" },
  { name: "usage", arg: "none", help: "give a short usage message" },
];

export interface RunArgs {
  opts: RunOptions;
  image: string;
  storage: string | null;
  unsafe: boolean;
  mount: string | null;
  join: { count: number | null; tag: string | null } | null;
  joinPid: number | null;
  /** Warnings found while reading the options (printed once the verbosity is known). */
  warnings: string[];
}

export type Parsed =
  | { kind: "run"; args: RunArgs }
  | { kind: "help" }
  | { kind: "usage" }
  | { kind: "version" }
  | { kind: "feature"; name: string }
  | { kind: "warnings"; count: number; verbosity: number }
  | { kind: "test"; test: "log" | "log-fail"; verbosity: number }
  /** getopt refused an option: argp's message and hint, exit 64. */
  | { kind: "getopt-error"; message: string }
  /** No IMAGE. */
  | { kind: "missing" };

/** strtol(3) as Charliecloud's parse_int() uses it, with its messages (and the value). */
export function parseIntArg(s: string, extraOk: boolean, tag: string): number {
  const m = /^[ \t\n\v\f\r]*[+-]?[0-9]+/.exec(s);
  if (!m) throw usageError(`${tag}: no digits found: ${s}`);
  const n = Number(m[0].trim());
  if (n < -2147483648 || n > 2147483647) throw usageError(`${tag}: out of range: ${s}`);
  if (!extraOk && m[0].length !== s.length) throw usageError(`${tag}: extra characters after digits: ${s}`);
  return n;
}

function parseIdOption(name: string, v: string): number {
  const n = parseIntArg(v, false, `--${name}`);
  if (n < 0) throw usageError(`--${name}: must be non-negative: ${v}`);
  return n;
}

/** tmpfs's size= syntax, as the kernel reads it (memparse(), then an optional %): a number in
 * C's notation (decimal, 0x hex, 0 octal), then k, m, g, t, p or e (either case). */
const TMPFS_SIZE = /^(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([kKmMgGtTpPeE]?)(%?)$/;

/** Checks a --write-fake SIZE before anything is mounted, naming it: the kernel's own refusal
 * says only "Invalid argument", and size=0 (or 0%) would mean a tmpfs with no limit at all. The
 * message keeps the words of Charliecloud's, which fails at the mount. */
export function checkTmpfsSize(v: string): string {
  const m = TMPFS_SIZE.exec(v);
  const why = !m ? "want e.g. 4G, 512m or 50% of memory" : /^0[xX]?0*$/.test(m[1]) ? "0 would be no limit at all" : null;
  if (why !== null)
    throw new ChError(`invalid --write-fake size: ${v} (${why}), so cannot mount tmpfs for overlay`, { errno: 22, usage: true });
  return v;
}

function parseBind(spec: string): Bind {
  const i = spec.indexOf(":");
  const src = i < 0 ? spec : spec.slice(0, i);
  const dst = i < 0 ? spec : spec.slice(i + 1);
  if (!src) throw usageError(`--bind: no source provided: ${spec}`);
  if (!dst) throw usageError(`--bind: no destination provided: ${spec}`);
  if (posix.normalize(dst) === "/") throw usageError(`--bind: destination can't be /: ${spec}`);
  if (!dst.startsWith("/")) throw usageError(`--bind: destination must be absolute: ${dst}`);
  return { src, dst: posix.normalize(dst) };
}

function readEnvFile(path: string, nul: boolean): Assignment[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw sysError(`can't open: ${path}`, e);
  }
  return parseEnvFile(text, path, nul);
}

/** Reads ch-run's arguments (after argv[0]). `exists` says whether a path exists (for -s). */
export function parseRunArgs(argv: string[], exists: (path: string) => boolean = () => true): Parsed {
  const o: RunOptions = defaultRunOptions();
  const positionals: string[] = [];
  const warnings: string[] = [];
  let storage: string | null = null;
  let mount: string | null = null;
  let join = null as RunArgs["join"];
  let joinPid: number | null = null;
  let unsafe = false;
  let verbosity = 0;
  try {
    for (const item of scanArgs(argv, [...SPECS, ...ARGP_SPECS], 1)) {
      if (item.kind === "pos") {
        positionals.push(item.value);
        continue;
      }
      const { name, value } = item;
      const v = value ?? "";
      switch (name) {
        case "help":
          return { kind: "help" };
        case "usage":
          return { kind: "usage" };
        case "version":
          return { kind: "version" };
        case "feature":
          return { kind: "feature", name: v };
        case "warnings":
          return { kind: "warnings", count: parseIntArg(v, false, "--warnings"), verbosity };
        case "test":
          if (v !== "log" && v !== "log-fail") throw usageError(`invalid --test argument: ${v}; see source code`);
          return { kind: "test", test: v, verbosity };
        case "bind":
          o.binds.push(parseBind(v));
          break;
        case "cd":
          o.cd = v;
          break;
        case "env-no-expand":
          o.envNoExpand = true;
          break;
        case "gid":
          o.gid = parseIdOption("gid", v);
          break;
        case "uid":
          o.uid = parseIdOption("uid", v);
          break;
        case "home":
          o.home = true;
          // As Charliecloud's: --home implies --write-fake, so that /home/$USER can be made.
          o.writeFake ??= DEFAULT_WRITE_FAKE_SIZE;
          break;
        case "mount":
          if (!v) throw usageError("--mount: mount point can't be empty string");
          mount = v;
          break;
        case "no-passwd":
          o.noPasswd = true;
          break;
        case "private-tmp":
          o.privateTmp = true;
          break;
        case "seccomp":
          o.seccomp = true;
          break;
        case "quiet":
          if (verbosity > 0) throw usageError("--quiet incompatible with --verbose");
          if (--verbosity < -3) throw usageError("--quiet can be specified at most thrice");
          break;
        case "verbose":
          if (verbosity < 0) throw usageError("--verbose incompatible with --quiet");
          if (++verbosity > 3) throw usageError("--verbose can be specified at most thrice");
          break;
        case "set-env":
        case "set-env0": {
          const nul = name === "set-env0";
          let op: EnvOp;
          if (value === "") throw usageError("environment options: argument must have non-zero length");
          if (value === null) op = { kind: "image-file", path: "/ch/environment", nul };
          else if (v.includes("=")) op = { kind: "set", vars: [parseAssignment(v, v)] };
          else op = { kind: "set", vars: readEnvFile(v, nul) };
          o.env.push(op);
          break;
        }
        case "unset-env":
          if (!v) throw usageError("--unset-env: GLOB must have non-zero length");
          o.env.push({ kind: "unset", glob: v });
          break;
        case "storage":
          storage = v;
          if (!exists(v)) warnings.push(`storage directory not found: ${v}`);
          break;
        case "unsafe":
          unsafe = true;
          break;
        case "write":
          o.write = true;
          break;
        case "write-fake":
          // A size given wins; a bare -W keeps one given before (--home's default aside).
          if (value !== null) o.writeFake = checkTmpfsSize(value);
          else o.writeFake ??= DEFAULT_WRITE_FAKE_SIZE;
          break;
        case "join":
          join ??= { count: null, tag: null };
          break;
        case "join-ct":
          join = { count: parseId("join-ct", v), tag: join?.tag ?? null };
          if (join.count === 0) throw usageError("--join-ct: must be at least 1: 0");
          break;
        case "join-tag":
          join = { count: join?.count ?? null, tag: v };
          break;
        case "join-pid":
          joinPid = parseId("join-pid", v);
          break;
      }
    }
  } catch (e) {
    if (e instanceof GetoptError) return { kind: "getopt-error", message: e.message };
    throw e;
  }
  o.verbosity = verbosity;
  // IMAGE alone: the image's ENTRYPOINT and CMD, if it has them (ch-run.ts; argv stays empty).
  if (positionals.length < 1) return { kind: "missing" };
  const [image, ...cmd] = positionals;
  o.argv = cmd;
  if (join && joinPid !== null) throw usageError("--join-pid and --join are mutually exclusive");
  return { kind: "run", args: { opts: o, image, storage, unsafe, mount, join, joinPid, warnings } };
}
