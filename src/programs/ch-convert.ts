// ch-convert: convert an image from one format to another.
import { statSync } from "node:fs";
import { userInfo } from "node:os";
import { helpOrVersion, type OptSpec, parseArgs } from "../cli/getopt.ts";
import { info, setVerbosity } from "../cli/log.ts";
import { convert, type Endpoint } from "../image/convert.ts";
import { FORMATS, type Format, inferFormat, isFormat } from "../image/formats.ts";
import { imageName, Storage, storageDir } from "../image/storage.ts";
import { ChError } from "../sys/errors.ts";
import { loadLibc } from "../sys/libc.ts";

const SPECS: OptSpec[] = [
  { name: "in-fmt", short: "i", arg: "required", argName: "FMT", help: "input image format is FMT (inferred if omitted)" },
  { name: "out-fmt", short: "o", arg: "required", argName: "FMT", help: "output image format is FMT (inferred if omitted)" },
  { name: "dry-run", short: "n", arg: "none", help: "don't read the input or write the output" },
  { name: "no-clobber", arg: "none", help: "error if OUT already exists, rather than replacing it" },
  { name: "storage", short: "s", arg: "required", argName: "DIR", help: "set ch-image storage directory to DIR" },
  { name: "tmp", arg: "required", argName: "DIR", help: "temporary files in DIR (default: $TMPDIR, else /var/tmp)" },
  { name: "xattrs", arg: "none", help: "keep extended attributes (user.* when unprivileged)" },
  { name: "quiet", short: "q", arg: "none", help: "be quieter (can be repeated)" },
  { name: "verbose", short: "v", arg: "none", help: "print extra chatter (can be repeated)" },
  { name: "help", short: "h", arg: "none", help: "give this help list" },
  { name: "version", short: "V", arg: "none", help: "print version and exit" },
];

const TRAILER = `Formats: ${FORMATS.join(", ")}.

Inferred from IN and OUT when -i/-o are omitted: *.sqfs, *.squash, *.squashfs: squash;
*.tar, *.t?z, *.tar.?, *.tar.?? (e.g. .tar.gz, .tgz, .tar.Z), *.tar.zst, *.tar.bz2: tar
(written: .tar, .tar.gz, .tgz, .tar.xz, .tar.zst, .tar.bz2); an absolute path, one starting
with ./ or ../, ending in /, or an existing directory: dir; otherwise an image reference:
ch-image (an input must be in storage).`;

interface Options {
  inFmt: Format | null;
  outFmt: Format | null;
  dryRun: boolean;
  noClobber: boolean;
  storage: string | null;
  tmp: string;
  xattrs: boolean;
  verbosity: number;
  args: string[];
}

function format(opt: string, v: string): Format {
  if (!isFormat(v)) throw new ChError(`--${opt}: unknown format: ${v} (known: ${FORMATS.join(", ")})`);
  return v;
}

function parse(argv: string[]): Options | number {
  const p = parseArgs(argv, SPECS);
  const o: Options = {
    inFmt: null,
    outFmt: null,
    dryRun: false,
    noClobber: false,
    storage: null,
    tmp: process.env.TMPDIR || "/var/tmp",
    xattrs: false,
    verbosity: 0,
    args: p.positionals,
  };
  const hv = helpOrVersion(p, {
    name: "ch-convert",
    usage: "[OPTION...] IN OUT",
    summary: "Convert an image from one format to another.",
    specs: SPECS,
    trailer: TRAILER,
  });
  if (hv !== null) return hv;
  for (const { name, value } of p.opts) {
    const v = value ?? "";
    if (name === "in-fmt") o.inFmt = format(name, v);
    else if (name === "out-fmt") o.outFmt = format(name, v);
    else if (name === "dry-run") o.dryRun = true;
    else if (name === "no-clobber") o.noClobber = true;
    else if (name === "storage") o.storage = v;
    else if (name === "tmp") o.tmp = v;
    else if (name === "xattrs") o.xattrs = true;
    else if (name === "quiet") o.verbosity--;
    else if (name === "verbose") o.verbosity++;
  }
  if (o.args.length !== 2) throw new ChError("need exactly two arguments, IN and OUT (see --help)");
  return o;
}

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function endpoint(desc: string, given: Format | null, input: boolean, storage: Storage): Endpoint {
  if (given) return { fmt: given, desc };
  const fmt = inferFormat(desc, input, { isDir, inStorage: (n) => storage.has(n) });
  if (typeof fmt !== "string") throw new ChError(fmt.error);
  return { fmt, desc };
}

export async function main(argv: string[]): Promise<number> {
  const o = parse(argv);
  if (typeof o === "number") return o;
  setVerbosity(o.verbosity);
  await loadLibc(); // the storage lock is fcntl(2)'s
  const storage = new Storage(storageDir(o.storage, process.env, process.env.USER || userInfo().username), { upgrade: true });
  const src = endpoint(o.args[0], o.inFmt, true, storage);
  const dst = endpoint(o.args[1], o.outFmt, false, storage);
  info(`input:   ${src.fmt.padEnd(10)}${src.desc}`);
  info(`output:  ${dst.fmt.padEnd(10)}${dst.desc}`);
  if (src.fmt === dst.fmt) throw new ChError(`input and output formats must be different: ${src.fmt}`);
  for (const e of [src, dst]) if (e.fmt === "ch-image") imageName(e.desc);
  if (o.dryRun) {
    info("dry run: not converting");
    return 0;
  }
  const usesStorage = src.fmt === "ch-image" || dst.fmt === "ch-image";
  // Storage is made only to write an image in it; reading one needs it there already.
  if (dst.fmt === "ch-image" || (src.fmt === "ch-image" && storage.exists())) {
    storage.init();
  }
  try {
    await convert(src, dst, {
      storage: usesStorage ? storage : null,
      tmp: o.tmp,
      noClobber: o.noClobber,
      xattrs: o.xattrs,
    });
  } finally {
    storage.unlock();
  }
  return 0;
}
