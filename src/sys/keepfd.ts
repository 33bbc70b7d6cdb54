// Keeping inherited descriptors open across ch-run's process.execve() into its launcher. Node
// marks them close-on-exec at start-up, and only native code can undo that: the descriptor helper
// (native/keepfd.c, a Node-API module: fcntl(fd, F_SETFD, 0) on one descriptor, or on each that
// it finds ch-run inherited, by fds.ts's rule, listing /proc/self/fd itself), written once into
// a private directory and verified by its SHA-256 like the launcher (private-file.cjs), then
// loaded with process.dlopen() (about 0.2 ms; koffi's libc took about 10 ms to load). Where it
// can't be loaded (every private directory mounted noexec), neither could koffi's module.
import { hostArch } from "./arch.ts";
import { ChError, sysError } from "./errors.ts";
import { inheritedFds } from "./fds.ts";
import { keepfdBlobs } from "./native/keepfd-blob.ts";
import { loadPrivateModule, type PrivateFileAt } from "./private-file.cjs";

interface Helper {
  keepOnExec(fd: number): number;
  /** The inherited descriptors, sorted, now without close-on-exec; or what failed: fd -1 for
   * listing /proc/self/fd, else clearing that descriptor's flag. */
  keepInherited(): number[] | { errno: number; fd: number };
}

/** Where this process loaded the helper from, if it did: a remembered launch loads it from there
 * (container/memo.ts), without looking for it again. */
let loadedFrom: PrivateFileAt | null = null;

export function helperLoadedFrom(): PrivateFileAt | null {
  return loadedFrom;
}

/** The descriptor helper, or why it can't be loaded here; `at`: where to look first. */
export function loadHelper(at: PrivateFileAt | null = null): Helper | string {
  const b = keepfdBlobs[hostArch()];
  try {
    const m = loadPrivateModule(
      {
        what: "descriptor helper",
        name: `ch-run-keepfd-${process.arch}-${b.sha256.slice(0, 16)}.node`,
        sha256: b.sha256,
        bytes: () => Buffer.from(b.module, "base64"),
        mode: 0o600,
      },
      at,
      (file, stamp) => {
        loadedFrom = { file, stamp };
      },
    ) as Partial<Helper>;
    if (typeof m.keepOnExec !== "function") return "the descriptor helper has no keepOnExec()";
    if (typeof m.keepInherited !== "function") return "the descriptor helper has no keepInherited()";
    return m as Helper;
  } catch (e) {
    return (e as Error).message;
  }
}

function keepEach(helper: Helper | string, fds: number[]): void {
  if (!fds.length) return;
  if (typeof helper === "string") throw new ChError(`can't load the descriptor helper: ${helper}`);
  for (const fd of fds) {
    const errno = helper.keepOnExec(fd);
    if (errno) throw sysError(`can't keep descriptor ${fd} open for the command`, { errno });
  }
}

/** Clears close-on-exec on each descriptor, so that the command gets it. */
export function keepOnExec(fds: number[]): void {
  if (fds.length) keepEach(loadHelper(), fds);
}

/** Finds the descriptors ch-run inherited (fds.ts's inheritedFds()) and clears close-on-exec on
 * each, so that the command gets them; returns them, sorted. The helper does both in one call
 * (loading it and listing them take about a millisecond less than listing them from JavaScript
 * at start-up); where it can't be loaded, they are listed from JavaScript, and only an
 * inherited one makes that an error (as keepOnExec()). */
export function keepInheritedFds(at: PrivateFileAt | null = null): number[] {
  const helper = loadHelper(at);
  if (typeof helper === "string") {
    const fds = inheritedFds();
    keepEach(helper, fds);
    return fds;
  }
  const r = helper.keepInherited();
  if (Array.isArray(r)) return r;
  if (r.fd < 0) throw sysError("can't list the inherited descriptors: /proc/self/fd", { errno: r.errno });
  throw sysError(`can't keep descriptor ${r.fd} open for the command`, { errno: r.errno });
}
