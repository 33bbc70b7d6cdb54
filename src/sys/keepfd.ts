// Keeping inherited descriptors open across ch-run's process.execve() into its launcher. Node
// marks them close-on-exec at start-up, and only native code can undo that: the descriptor helper
// (native/keepfd.c, a Node-API module of one function: fcntl(fd, F_SETFD, 0)), written once into
// a private directory and verified by its SHA-256 like the launcher (private-file.cjs), then
// loaded with process.dlopen() (about 0.2 ms; koffi's libc took about 10 ms to load). Where it
// can't be loaded (every private directory mounted noexec), neither could koffi's module.
import { hostArch } from "./arch.ts";
import { ChError, sysError } from "./errors.ts";
import { keepfdBlobs } from "./native/keepfd-blob.ts";
import { loadPrivateModule } from "./private-file.cjs";

interface Helper {
  keepOnExec(fd: number): number;
}

/** The descriptor helper, or why it can't be loaded here. */
export function loadHelper(): Helper | string {
  const b = keepfdBlobs[hostArch()];
  try {
    const m = loadPrivateModule({
      what: "descriptor helper",
      name: `ch-run-keepfd-${process.arch}-${b.sha256.slice(0, 16)}.node`,
      sha256: b.sha256,
      bytes: () => Buffer.from(b.module, "base64"),
      mode: 0o600,
    }) as Partial<Helper>;
    return typeof m.keepOnExec === "function" ? (m as Helper) : "the descriptor helper has no keepOnExec()";
  } catch (e) {
    return (e as Error).message;
  }
}

/** Clears close-on-exec on each descriptor, so that the command gets it. */
export function keepOnExec(fds: number[]): void {
  if (!fds.length) return;
  const helper = loadHelper();
  if (typeof helper === "string") throw new ChError(`can't load the descriptor helper: ${helper}`);
  for (const fd of fds) {
    const errno = helper.keepOnExec(fd);
    if (errno) throw sysError(`can't keep descriptor ${fd} open for the command`, { errno });
  }
}
