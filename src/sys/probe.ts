// Probes of what the kernel lets an ordinary user do in a container (ch-run --feature): a child
// of its own, in new user and mount namespaces mapped to the caller's IDs, runs a few system
// calls in the native launcher and exits 0 only if every one succeeded. Nothing it mounts is
// seen outside it, and it leaves nothing behind.
import { hostArch } from "./arch.ts";
import { mapProgram } from "./launch.ts";
import { libc } from "./libc.ts";
import { ProgramBuilder } from "./program.ts";
import { CLONE_NEWNS, CLONE_NEWUSER, MS_PRIVATE, MS_REC, SIGCHLD } from "./syscalls.ts";

/** A scratch directory for the probe: a tmpfs mounted there in the child's namespace only. */
export const PROBE_DIR = "/tmp";

/** Runs `steps` after entering the namespaces and mounting a tmpfs on PROBE_DIR; true if all
 * of it worked. */
export function probe(steps: (b: ProgramBuilder) => void): boolean {
  const c = libc();
  const b = new ProgramBuilder(hostArch());
  const why = { what: "probe" };
  b.unshare(CLONE_NEWUSER | CLONE_NEWNS, why);
  b.writeExisting("/proc/self/setgroups", "deny", why);
  b.writeExisting("/proc/self/uid_map", `0 ${process.geteuid?.() ?? 0} 1\n`, why);
  b.writeExisting("/proc/self/gid_map", `0 ${process.getegid?.() ?? 0} 1\n`, why);
  b.mount(null, "/", null, MS_REC | MS_PRIVATE, null, why);
  b.mount("tmpfs", PROBE_DIR, "tmpfs", 0, "size=1m,mode=0700", why);
  steps(b);
  b.op(b.nr.exit_group, [0], why);
  const m = mapProgram(b);
  const pid = c.clone(m.entry, m.stackTop, SIGCHLD, m.progAddr);
  return c.waitpid(pid) === 0;
}

/** setxattr(2) in the probe's program. */
export function setxattr(b: ProgramBuilder, path: string, name: string, value: string): void {
  const bytes = new TextEncoder().encode(value);
  b.op(b.nr.setxattr, [{ str: path }, { str: name }, { bytes }, bytes.length, 0], { what: `can't set ${name} on ${path}` });
}
