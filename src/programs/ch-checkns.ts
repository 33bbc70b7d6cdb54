// ch-checkns: check whether this host can run unprivileged containers, and say what blocks it.
import { userInfo } from "node:os";
import { checkns } from "../checkns/checkns.ts";
import { helpOrVersion, type OptSpec, parseArgs } from "../cli/getopt.ts";
import { storageDir } from "../image/storage.ts";
import { usageError } from "../sys/errors.ts";
import { loadLibc } from "../sys/libc.ts";

const SPECS: OptSpec[] = [
  { name: "storage", short: "s", arg: "required", argName: "DIR", help: "check storage directory DIR (default: as ch-run's)" },
  { name: "verbose", short: "v", arg: "none", help: "print each check" },
  { name: "help", short: "h", arg: "none", help: "give this help list" },
  { name: "version", short: "V", arg: "none", help: "print version and exit" },
];

const TRAILER = `Checks: not setuid or setgid; the storage directory's file system; a user namespace with
UID/GID maps; a mount namespace; a bind mount, read-only re-mount and pivot_root(2) on the
storage file system, as ch-run does them; the command's own user namespace; /dev/fuse and
squashfuse for SquashFS images; overlayfs for ch-run -W. Prints "ok" and exits 0 if all hold;
else one line per problem, naming the setting that blocks it and the fix, and exits 1.`;

export async function main(argv: string[]): Promise<number> {
  const p = parseArgs(argv, SPECS);
  const hv = helpOrVersion(p, {
    name: "ch-checkns",
    usage: "[OPTION...]",
    summary: "Check whether this host can run unprivileged containers, and say what blocks it.",
    specs: SPECS,
    trailer: TRAILER,
  });
  if (hv !== null) return hv;
  let storage: string | null = null;
  let verbose = false;
  for (const { name, value } of p.opts) {
    if (name === "storage") storage = value;
    if (name === "verbose") verbose = true;
  }
  if (p.positionals.length) throw usageError(`no arguments expected: ${p.positionals.join(" ")}`);
  await loadLibc();
  const user = process.env.USER || userInfo().username;
  return checkns(storageDir(storage, process.env, user), verbose);
}
