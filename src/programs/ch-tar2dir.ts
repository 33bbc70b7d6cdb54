// ch-tar2dir: unpack an image tarball into DIR/NAME, NAME being the tarball's name without
// its extensions. Superseded by ch-convert, kept for scripts that use it.
import { basename, join } from "node:path";
import { helpOrVersion, helpText, type OptSpec, type ProgramInfo, parseArgs } from "../cli/getopt.ts";
import { info, setVerbosity } from "../cli/log.ts";
import { unpackImage } from "../image/unpack.ts";
import { ChError } from "../sys/errors.ts";

const SPECS: OptSpec[] = [
  { name: "quiet", short: "q", arg: "none", help: "be quieter" },
  { name: "verbose", short: "v", arg: "none", help: "be more verbose" },
  { name: "xattrs", arg: "none", help: "keep extended attributes (user.* when unprivileged)" },
  { name: "help", short: "h", arg: "none", help: "give this help list" },
  { name: "version", short: "V", arg: "none", help: "print version and exit" },
];

/** Image name of a tarball: its basename without .tar, .tar.gz, .tgz and the like. */
export function tarballImageName(tarball: string): string {
  return basename(tarball).replace(/\.(tar(\.[a-z0-9]+)?|t[a-z0-9]z2?|tzst)$/i, "");
}

const PROGRAM: ProgramInfo = {
  name: "ch-tar2dir",
  usage: "[OPTION...] TARBALL DIR",
  summary: "Unpack image TARBALL into directory DIR/NAME (NAME: TARBALL's name without extensions).",
  specs: SPECS,
};

export async function main(argv: string[]): Promise<number> {
  const p = parseArgs(argv, SPECS);
  let verbosity = 0;
  let xattrs = false;
  const hv = helpOrVersion(p, PROGRAM);
  if (hv !== null) return hv;
  if (argv.length === 0) {
    // As Charliecloud's: no arguments at all, the usage, on stderr.
    process.stderr.write(helpText(`${PROGRAM.name} ${PROGRAM.usage}`, PROGRAM.summary, PROGRAM.specs));
    return 1;
  }
  for (const { name } of p.opts) {
    if (name === "help" || name === "version") continue;
    if (name === "xattrs") xattrs = true;
    else verbosity += name === "quiet" ? -1 : 1;
  }
  setVerbosity(verbosity);
  if (p.positionals.length !== 2) throw new ChError("need exactly two arguments, TARBALL and DIR (see --help)");
  const [tarball, dir] = p.positionals;
  const name = tarballImageName(tarball);
  if (!name || name === "." || name === "..") throw new ChError(`can't derive image name from: ${tarball}`);
  const target = join(dir, name);
  info(`creating new image ${target}`);
  await unpackImage(tarball, target, { xattrs });
  info(`${target} unpacked ok`);
  return 0;
}
