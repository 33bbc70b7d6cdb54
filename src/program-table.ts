// The programs of the executable, loaded only when called so that ch-run's start-up stays small.
// The executable also carries a second bundle for ch-run alone (build/build.mjs puts
// program-table-ch-run.ts in this file's place), which its loader (src/sea-main.cjs) runs when
// called as ch-run: a third of the size, so a third of the code cache to read at every start.

export type Main = (argv: string[]) => number | Promise<number>;

export const PROGRAMS: Record<string, () => Promise<{ main: Main }>> = {
  "ch-run": () => import("./programs/ch-run.ts"),
  "ch-image": () => import("./programs/ch-image.ts"),
  "ch-convert": () => import("./programs/ch-convert.ts"),
  "ch-tar2dir": () => import("./programs/ch-tar2dir.ts"),
  "ch-fromhost": () => import("./programs/ch-fromhost.ts"),
  "ch-checkns": () => import("./programs/ch-checkns.ts"),
};
