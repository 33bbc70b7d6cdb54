// One executable, many programs: argv[0] (through a symlink) picks the program, and
// `charliecloud PROGRAM ...` works too.
import { basename } from "node:path";
import { programFor } from "./dispatch.ts";
import { PROGRAMS } from "./program-table.ts";
import { ChError, debugStacksOn, describe, EXIT_ERR, errorOut, setProgram, sysError } from "./sys/errors.ts";
import { loadLibc } from "./sys/libc.ts";
import { currentIds, privilegeProblem } from "./sys/secure.ts";
import { stackTrace } from "./sys/sourcemap.ts";
import { VERSION } from "./version.ts";

/** Exit status of a program's own failures: ch-run's is distinct from any command's. */
function errorExit(program: string): number {
  return program === "ch-run" ? EXIT_ERR : 1;
}

function usage(): string {
  return `Usage: charliecloud PROGRAM [ARG...]\n\nCharliecloud ${VERSION}: unprivileged containers for HPC.\n\nPrograms:\n${Object.keys(
    PROGRAMS,
  )
    .map((p) => `  ${p}`)
    .join("\n")}\n\nEach program is also this executable called by that name (a symlink).\n`;
}

async function run(): Promise<number> {
  const called = basename(process.argv0 || process.argv[1] || "charliecloud");
  let name = programFor(called) ?? called;
  let args = process.argv.slice(2);
  // First of all, before anything is loaded from a path the caller controls.
  const problem = privilegeProblem(currentIds());
  if (problem) {
    setProgram(name in PROGRAMS ? name : "charliecloud");
    process.stderr.write(`${name}[${process.pid}]: error: ${problem}\n`);
    return EXIT_ERR;
  }
  if (!(name in PROGRAMS)) {
    // Called as charliecloud (or node bundle.cjs): the program is the first argument.
    const first = process.argv[1] && !process.argv[1].startsWith("-") && !(process.argv[1] in PROGRAMS) ? 2 : 1;
    const [prog, ...rest] = process.argv.slice(first);
    if (prog === "--version" || prog === "-V") {
      process.stdout.write(`charliecloud ${VERSION}\n`);
      return 0;
    }
    if (!prog || prog === "--help" || prog === "-h") {
      process.stdout.write(usage());
      return prog ? 0 : 1;
    }
    const picked = programFor(prog);
    if (!picked) {
      process.stderr.write(`charliecloud: unknown program: ${prog}\n${usage()}`);
      return 1;
    }
    name = picked;
    args = rest;
  }
  setProgram(name);
  try {
    const mod = await PROGRAMS[name]();
    return await mod.main(args);
  } catch (e) {
    if (e instanceof ChError) {
      await loadLibc().catch(() => {}); // for strerror(3)
      errorOut(`${describe(e)}\n`);
      // ch-image --debug, $CH_IMAGE_DEBUG: where it came from.
      if (debugStacksOn()) errorOut(`${stackTrace(e.at).join("\n")}\n`);
      return e.exit ?? errorExit(name);
    }
    // A system error that no code of ours caught and explained (EACCES on a file the user
    // gave, say) is still the user's to fix: one line, with the call and path it names.
    if (isSystemError(e)) {
      await loadLibc().catch(() => {});
      const what = [e.syscall ? `can't ${e.syscall}` : "system error", e.path, e.dest].filter(Boolean).join(": ");
      errorOut(`${describe(sysError(what, e))}\n`);
      if (debugStacksOn()) errorOut(`${stackTrace(e).join("\n")}\n`);
      return errorExit(name);
    }
    throw e;
  }
}

function isSystemError(e: unknown): e is NodeJS.ErrnoException & { dest?: string } {
  return e instanceof Error && typeof (e as NodeJS.ErrnoException).errno === "number" && !!(e as NodeJS.ErrnoException).code;
}

run().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`${basename(process.argv0)}[${process.pid}]: internal error: ${(e as Error)?.stack ?? e}\n`);
    process.exitCode = 70;
  },
);
