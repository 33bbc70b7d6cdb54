// ch-image: manage images in storage. So far: import, list, delete, reset.
import { statSync } from "node:fs";
import { userInfo } from "node:os";
import { helpOrVersion, type OptSpec, parseArgs } from "../cli/getopt.ts";
import { info, setVerbosity } from "../cli/log.ts";
import { copyImage } from "../image/convert.ts";
import { Storage, storageDir, validImageName } from "../image/storage.ts";
import { unpackImage } from "../image/unpack.ts";
import { ChError } from "../sys/errors.ts";

const SPECS: OptSpec[] = [
  { name: "storage", short: "s", arg: "required", argName: "DIR", help: "set storage directory to DIR" },
  { name: "quiet", short: "q", arg: "none", help: "be quieter (can be repeated)" },
  { name: "verbose", short: "v", arg: "none", help: "print extra chatter (can be repeated)" },
  { name: "xattrs", arg: "none", help: "import: keep extended attributes (user.* when unprivileged)" },
  { name: "help", short: "h", arg: "none", help: "give this help list" },
  { name: "version", short: "V", arg: "none", help: "print version and exit" },
];

const SUBCOMMANDS = `Subcommands:
  import PATH NAME   copy image tarball or directory PATH into storage as NAME
  list               print the names of the images in storage
  delete NAME        delete image NAME from storage
  reset              delete everything in storage

Storage: -s DIR, else $CH_IMAGE_STORAGE, else /var/tmp/$USER.ch.`;

function want(args: string[], n: number, usage: string): void {
  if (args.length !== n) throw new ChError(`usage: ch-image ${usage}`);
}

function checkName(name: string): void {
  if (!validImageName(name)) throw new ChError(`invalid image name: ${name}`);
}

async function importImage(storage: Storage, path: string, name: string, xattrs: boolean): Promise<void> {
  checkName(name);
  let dir: boolean;
  try {
    dir = statSync(path).isDirectory();
  } catch {
    throw new ChError(`can't import, no such file or directory: ${path}`, { errno: 2 });
  }
  info(`importing: ${path}`);
  if (dir) await copyImage(path, storage.imagePath(name), { xattrs });
  else await unpackImage(path, storage.imagePath(name), { xattrs });
  info(`imported: ${name}`);
}

async function run(storage: Storage, sub: string, args: string[], xattrs: boolean): Promise<number> {
  switch (sub) {
    case "list":
      want(args, 0, "list");
      storage.init();
      for (const name of storage.list()) process.stdout.write(`${name}\n`);
      return 0;
    case "import":
      want(args, 2, "import PATH NAME");
      storage.init();
      storage.lock();
      await importImage(storage, args[0], args[1], xattrs);
      return 0;
    case "delete":
      want(args, 1, "delete NAME");
      checkName(args[0]);
      storage.init();
      storage.lock();
      storage.delete(args[0]);
      info(`deleted image: ${args[0]}`);
      return 0;
    case "reset":
      want(args, 0, "reset");
      storage.reset();
      return 0;
    default:
      throw new ChError(`unknown subcommand: ${sub} (see --help)`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const p = parseArgs(argv, SPECS);
  let storageOpt: string | null = null;
  let verbosity = 0;
  let xattrs = false;
  const hv = helpOrVersion(p, {
    name: "ch-image",
    usage: "[OPTION...] SUBCOMMAND [ARG...]",
    summary: "Manage Charliecloud images in storage.",
    specs: SPECS,
    trailer: SUBCOMMANDS,
  });
  if (hv !== null) return hv;
  for (const { name, value } of p.opts) {
    if (name === "help" || name === "version") continue;
    if (name === "storage") storageOpt = value;
    else if (name === "xattrs") xattrs = true;
    else verbosity += name === "quiet" ? -1 : 1;
  }
  setVerbosity(verbosity);
  const [sub, ...args] = p.positionals;
  if (!sub) throw new ChError("no subcommand given (see --help)");
  const storage = new Storage(storageDir(storageOpt, process.env, process.env.USER || userInfo().username));
  try {
    return await run(storage, sub, args, xattrs);
  } finally {
    storage.unlock();
  }
}
