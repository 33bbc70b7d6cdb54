// program-table.ts for the ch-run bundle (build/build.mjs): ch-run alone.
import type { Main } from "./program-table.ts";

export const PROGRAMS: Record<string, () => Promise<{ main: Main }>> = {
  "ch-run": () => import("./programs/ch-run.ts"),
};
