// ch-run --feature=FEAT: exit 0 if this ch-run can do FEAT here, 1 if not, as Charliecloud's
// does; but found out by trying, not from a table fixed when it was built.
import { PROBE_DIR, probe, setxattr } from "../sys/probe.ts";
import { fnmatch } from "./fnmatch.ts";
import { seccompFilter } from "./seccomp.ts";
import { squashUsable } from "./squash.ts";

export const FEATURES = ["extglob", "overlayfs", "seccomp", "squash", "tmpfs-xattrs"] as const;
export type Feature = (typeof FEATURES)[number];

export function isFeature(name: string): name is Feature {
  return (FEATURES as readonly string[]).includes(name);
}

/** What ch-run -W does: overlay a writable tmpfs on a directory, with user xattrs. */
export function overlayWorks(): boolean {
  return probe((b) => {
    const d = (n: string) => `${PROBE_DIR}/${n}`;
    const why = { what: "probe" };
    for (const n of ["lower", "upper", "work", "merged"]) b.mkdir(d(n), 0o700, why);
    const opts = `lowerdir=${d("lower")},upperdir=${d("upper")},workdir=${d("work")},userxattr,volatile`;
    b.mount("overlay", d("merged"), "overlay", 0, opts, why);
  });
}

/** Whether a tmpfs in a user namespace takes user.* xattrs (Linux 6.6), which a -W overlay
 * needs for whiteouts of directories. */
export function tmpfsXattrsWork(): boolean {
  return probe((b) => {
    b.mkdir(`${PROBE_DIR}/x`, 0o700, { what: "probe" });
    setxattr(b, `${PROBE_DIR}/x`, "user.charliecloud", "1");
  });
}

/** Whether ch-run --seccomp works here: the filter installs, and kexec_load(2), refused to an
 * ordinary user, then returns 0. */
export function seccompWorks(): boolean {
  return probe((b) => {
    b.seccomp(seccompFilter(b.arch), { what: "probe" });
    b.op(b.nr.kexec_load, [0, 0, 0, 0], { what: "probe" }, { expect: 0 });
  });
}

export function featureEnabled(name: Feature): boolean {
  switch (name) {
    case "extglob":
      // Our own matcher, which has them; checked all the same.
      return fnmatch("!(a|b)", "c") && !fnmatch("!(a|b)", "b") && fnmatch("@(x|y)z", "yz");
    case "overlayfs":
      return overlayWorks();
    case "seccomp":
      return seccompWorks();
    case "squash":
      return squashUsable();
    case "tmpfs-xattrs":
      return tmpfsXattrsWork();
  }
}
