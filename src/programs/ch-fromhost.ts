// ch-fromhost: inject files from the host into an image directory.
import { userInfo } from "node:os";
import { helpOrVersion, type OptSpec, parseArgs } from "../cli/getopt.ts";
import { setVerbosity } from "../cli/log.ts";
import { fromhost, type PrintWhat, type Source } from "../fromhost/fromhost.ts";
import { usageError } from "../sys/errors.ts";
import { loadLibc } from "../sys/libc.ts";

const SPECS: OptSpec[] = [
  { name: "cmd", short: "c", arg: "required", argName: "CMD", help: "inject the files listed in the standard output of CMD" },
  { name: "file", short: "f", arg: "required", argName: "FILE", help: "inject the files listed in FILE" },
  { name: "path", short: "p", arg: "required", argName: "PATH", help: "inject the file at PATH" },
  { name: "nvidia", arg: "none", help: "inject the NVIDIA driver's libraries and programs" },
  { name: "cray-cxi", arg: "none", help: "inject Cray's libfabric for Slingshot ($CH_FROMHOST_OFI_CXI)" },
  { name: "cray-gni", arg: "none", help: "inject Cray's Gemini/Aries libfabric provider ($CH_FROMHOST_OFI_GNI)" },
  { name: "dest", short: "d", arg: "required", argName: "DST", help: "place the files given after this in image directory DST" },
  { name: "print-lib", arg: "none", help: "print the image's destination for shared libraries" },
  { name: "lib-path", arg: "none", help: "same as --print-lib (deprecated)" },
  { name: "print-fi", arg: "none", help: "print the image's destination for libfabric providers" },
  { name: "print-cray-fi", arg: "none", help: "print the image's destination for Cray's libfabric" },
  { name: "no-ldconfig", arg: "none", help: "don't run the image's ldconfig after injecting libraries" },
  { name: "quiet", short: "q", arg: "none", help: "print less output (can be repeated)" },
  { name: "verbose", short: "v", arg: "none", help: "list the injected files (can be repeated)" },
  { name: "help", short: "h", arg: "none", help: "give this help list" },
  { name: "version", short: "V", arg: "none", help: "print version and exit" },
];

const TRAILER = `File options can be repeated and mixed; at least one is needed, unless a --print-* option
is given (which prints and injects nothing). CMD runs with /bin/sh -c.

Destinations, unless --dest is given: shared libraries go into the image's library directory
(where its ldconfig finds libc), keeping their subdirectory under a host library directory;
libfabric providers (*-fi.so) beside the image's libfabric, in LIBDIR/libfabric; files in a bin
or sbin directory into /usr/bin; anything else needs --dest. Symlinks are dereferenced (one to
another file injected into the same directory stays a link) and modes kept. Nothing is written until every file and destination has been checked, and a failure,
the image's ldconfig included, leaves the image as it was.

IMAGE is an image directory, or the name of an image in storage ($CH_IMAGE_STORAGE, else
/var/tmp/$USER.ch). SquashFS images must be unpacked first.

Environment: CH_FROMHOST_OFI_CXI, CH_FROMHOST_OFI_GNI: Cray's libfabric files (paths separated
by colons or newlines); CH_FROMHOST_LD_CACHE: an ld.so cache to read instead of the host's
(for --nvidia without nvidia-container-cli).`;

export async function main(argv: string[]): Promise<number> {
  const p = parseArgs(argv, SPECS);
  const hv = helpOrVersion(p, {
    name: "ch-fromhost",
    usage: "[OPTION...] [FILE_OPTION...] IMAGE",
    summary: "Inject files from the host into an image directory, with various magic.",
    specs: SPECS,
    trailer: TRAILER,
  });
  if (hv !== null) return hv;
  const sources: Source[] = [];
  const print: PrintWhat[] = [];
  let dest: string | null = null;
  let noLdconfig = false;
  let verbosity = 0;
  const nonEmpty = (opt: string, v: string) => {
    if (!v) throw usageError(`--${opt} must not be empty`);
    return v;
  };
  for (const { name, value } of p.opts) {
    const v = value ?? "";
    switch (name) {
      case "cmd":
        sources.push({ kind: "cmd", cmd: nonEmpty(name, v), dest });
        break;
      case "file":
        sources.push({ kind: "file", file: nonEmpty(name, v), dest });
        break;
      case "path":
        sources.push({ kind: "path", path: nonEmpty(name, v), dest });
        break;
      case "nvidia":
      case "cray-cxi":
      case "cray-gni":
        sources.push({ kind: name, dest });
        break;
      case "dest":
        dest = nonEmpty(name, v);
        if (!dest.startsWith("/")) throw usageError(`--dest: not an absolute path: ${dest}`);
        break;
      case "print-lib":
      case "lib-path":
        print.push("lib");
        break;
      case "print-fi":
        print.push("fi");
        break;
      case "print-cray-fi":
        print.push("cray-fi");
        break;
      case "no-ldconfig":
        noLdconfig = true;
        break;
      case "quiet":
        verbosity--;
        break;
      case "verbose":
        verbosity++;
        break;
    }
  }
  setVerbosity(verbosity);
  if (p.positionals.length === 0) throw usageError("no image specified (usage: ch-fromhost [OPTION...] [FILE_OPTION...] IMAGE)");
  if (p.positionals.length > 1) throw usageError(`one image only: ${p.positionals.join(" ")}`);
  const user = process.env.USER || userInfo().username;
  await loadLibc(); // the storage lock, for an image in storage, is fcntl(2)'s
  return fromhost({ image: p.positionals[0], sources, print: [...new Set(print)], noLdconfig }, process.env, process.cwd(), user);
}
