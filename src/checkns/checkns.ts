// ch-checkns: tries what ch-run needs (user and mount namespaces, a bind mount and read-only
// re-mount on the storage directory's file system, pivot_root, the command's own user
// namespace, overlayfs) and looks at what SquashFS images need; says "ok", or one line per
// problem naming what blocks it and the fix.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { lockedMountFlags } from "../container/plan.ts";
import { findProgram } from "../fromhost/host.ts";
import { programName } from "../sys/errors.ts";
import { libc } from "../sys/libc.ts";
import { probeNamespaces } from "../sys/nsprobe.ts";
import { type Check, diagnose, type Facts, type Probes, privileged, problemLine } from "./diagnose.ts";
import { readFacts } from "./facts.ts";
import { containerSteps, overlaySteps } from "./steps.ts";

/** Runs the probes in a scratch directory on the storage file system (elsewhere if that is not
 * writable), removed afterwards. */
export function runProbes(f: Facts): Probes {
  if (privileged(f)) return { container: null, overlay: null };
  const base = f.storage.writable ? tmpdir() : f.storage.probed;
  const dir = mkdtempSync(join(base, ".ch-checkns."));
  try {
    for (const d of ["proc", "lower", "ovl"]) mkdirSync(join(dir, d));
    writeFileSync(join(dir, "lower/file"), "");
    const locked = lockedMountFlags(libc().mountFlags(dir));
    return {
      container: probeNamespaces(f.euid, f.egid, (sys) => containerSteps(sys, dir, locked, f.euid, f.egid)),
      overlay: probeNamespaces(f.euid, f.egid, (sys) => overlaySteps(sys, join(dir, "lower"), join(dir, "ovl"))),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Prints the checks; returns the exit status. */
export function report(checks: Check[], verbose: boolean): number {
  const problems = checks.filter((c) => c.status === "problem");
  if (verbose)
    for (const c of checks)
      process.stdout.write(
        `${c.title}: ${c.status === "problem" ? "PROBLEM" : c.status}: ${c.detail}${c.fix ? `; fix: ${c.fix}` : ""}\n`,
      );
  for (const c of problems) process.stderr.write(`${programName()}[${process.pid}]: ${problemLine(c)}\n`);
  if (problems.length) return 1;
  process.stdout.write("ok\n");
  return 0;
}

export function checkns(storage: string, verbose: boolean): number {
  const facts = readFacts(storage, findProgram("squashfuse"));
  return report(diagnose(facts, runProbes(facts)), verbose);
}
