// ch-tar2dir: not built yet.
import { notBuilt } from "../cli/notbuilt.ts";

export function main(argv: string[]): number {
  return notBuilt("ch-tar2dir", argv);
}
