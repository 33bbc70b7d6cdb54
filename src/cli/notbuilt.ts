// Programs whose issue is still open say so plainly, and still answer --help and --version.
import { VERSION } from "../version.ts";
import { versionLine } from "./getopt.ts";

export function notBuilt(name: string, argv: string[]): number {
  if (argv.includes("--version") || argv.includes("-V")) {
    process.stdout.write(versionLine(name));
    return 0;
  }
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(`Usage: ${name} [OPTION...]\n\n${name} is not built yet in this version of Charliecloud.\n`);
    return 0;
  }
  process.stderr.write(`${name}[${process.pid}]: error: ${name} is not built yet in this version (${VERSION})\n`);
  return 1;
}
