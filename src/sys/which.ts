// Finding a program the way a shell would, for the programs we run (mksquashfs, squashfuse,
// ldconfig, ...): absolute directories of $PATH only (a relative entry would run whatever the
// current directory holds), then any fallback directories.
import { accessSync, constants } from "node:fs";
import { posix } from "node:path";

export function findExecutable(name: string, path: string | undefined, fallback: string[] = []): string | null {
  for (const dir of [...(path ?? "").split(":"), ...fallback]) {
    if (!dir.startsWith("/")) continue;
    const p = posix.join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}
