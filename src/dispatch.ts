// Which program a name calls (argv[0] through a symlink or a copy, or charliecloud's first
// argument).

import { basename } from "node:path";

export const PROGRAM_NAMES = ["ch-run", "ch-image", "ch-convert", "ch-tar2dir", "ch-fromhost", "ch-checkns"] as const;

/** The program a name calls: the name itself, or a program's name followed by "." or "-" and
 * a suffix (ch-run.setgid, ch-run-0.39), the longest such program winning; null if none. */
export function programFor(name: string): string | null {
  let best: string | null = null;
  for (const p of PROGRAM_NAMES)
    if ((name === p || name.startsWith(`${p}.`) || name.startsWith(`${p}-`)) && (!best || p.length > best.length)) best = p;
  return best;
}

/** The name ch-run goes by, called as argv0 (for argp's messages and the syslog tag): its base
 * name if that calls ch-run (ch-run-0.39, say), else "ch-run" (charliecloud ch-run ...). */
export function runName(argv0: string): string {
  const name = basename(argv0 || "ch-run");
  return programFor(name) === "ch-run" ? name : "ch-run";
}
