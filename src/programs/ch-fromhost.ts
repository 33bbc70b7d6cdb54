// ch-fromhost: not built yet.
import { notBuilt } from "../cli/notbuilt.ts";

export function main(argv: string[]): number {
  return notBuilt("ch-fromhost", argv);
}
