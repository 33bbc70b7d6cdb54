// Which program a name calls (argv[0] through a symlink or a copy, or charliecloud's first
// argument).

export const PROGRAM_NAMES = ["ch-run", "ch-image", "ch-convert", "ch-tar2dir", "ch-fromhost", "ch-checkns"] as const;

/** The program a name calls: the name itself, or a program's name followed by "." or "-" and
 * a suffix (ch-run.setgid, ch-run-0.39), the longest such program winning; null if none. */
export function programFor(name: string): string | null {
  let best: string | null = null;
  for (const p of PROGRAM_NAMES)
    if ((name === p || name.startsWith(`${p}.`) || name.startsWith(`${p}-`)) && (!best || p.length > best.length)) best = p;
  return best;
}
