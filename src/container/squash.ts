// Running a SquashFS image: squashfuse mounts it inside the container's own namespaces, with no
// setuid helper (fusermount is not used: there we are root of a user namespace), and the
// container's root is that mount. It lives in the container's private mount namespace only, so
// it is gone when the container is, however ch-run ends: squashfuse mounts it in the namespace
// that clone(2) made, the container's setup moves to a copy of that and unmounts it in the
// original, so that the last process of the container takes the mount with it, and the kernel
// then ends squashfuse's connection.
import { accessSync, closeSync, constants, openSync, readSync, realpathSync, statSync } from "node:fs";
import { Storage } from "../image/storage.ts";
import { ChError, sysError } from "../sys/errors.ts";
import { spawnInNamespaces } from "../sys/launch.ts";
import { libc } from "../sys/libc.ts";
import { findExecutable } from "../sys/which.ts";

export interface SquashMount {
  /** The image file (real path). */
  file: string;
  /** Mount point (real path), the same for every container: each mounts in its own namespace. */
  mnt: string;
  /** The squashfuse executable. */
  fuse: string;
}

export const MAGIC = "hsqs";

/** Whether a file is a SquashFS image, by its magic number. */
export function isSquashFile(path: string): boolean {
  const magic = Buffer.alloc(4);
  try {
    const fd = openSync(path, "r");
    try {
      readSync(fd, magic, 0, 4, 0);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    throw sysError(`can't read image: ${path}`, e);
  }
  return magic.toString("latin1") === MAGIC;
}

function squashfuse(): string | null {
  return findExecutable("squashfuse", process.env.PATH, ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"]);
}

/** Whether this ch-run can run SquashFS images here (ch-run --feature=squash): squashfuse is
 * found and /dev/fuse is usable. */
export function squashUsable(): boolean {
  if (!squashfuse()) return false;
  try {
    accessSync("/dev/fuse", constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Checks what a SquashFS run needs, before any namespace exists. */
export function prepareSquash(image: string, mountOption: string | null, storage: string): SquashMount {
  const unpack = `unpack it instead: ch-convert ${image} DIR`;
  const fuse = squashfuse();
  if (!fuse) throw new ChError(`can't mount SquashFS image: squashfuse not found (install it, or ${unpack})`, { errno: 2 });
  try {
    accessSync("/dev/fuse", constants.R_OK | constants.W_OK);
  } catch (e) {
    throw sysError(`can't mount SquashFS image: /dev/fuse is not usable by you (ask your admins for mode 0666, or ${unpack})`, e);
  }
  let mnt: string;
  if (mountOption !== null) {
    if (!statSync(mountOption, { throwIfNoEntry: false })?.isDirectory())
      throw new ChError(`--mount: mount point not found or not a directory: ${mountOption}`, { errno: 2 });
    mnt = mountOption;
  } else {
    // STORAGE/mnt: the storage directory is checked first (another user's, or one others can
    // write, is refused), and made whole if absent, as Charliecloud's ch-image accepts it.
    mnt = new Storage(storage).mountPoint();
  }
  return { file: realpathSync(image), mnt: realpathSync(mnt), fuse };
}

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/** Mounts the image inside the namespaces of process `pid` (the container, waiting for its
 * setup) and waits until the mount is there; returns squashfuse's PID. It dies with this
 * process unless `detach` (a --join group's container outlives its first peer; called with
 * squashfuse's PID before it runs, to have it killed should this process die before the
 * container is set up): then it ends when the container's mount namespace does (the container's setup leaves the namespace where
 * squashfuse mounted it: ProgramBuilder.leaveFuseNamespace()). */
export function mountSquash(
  pid: number,
  m: SquashMount,
  detach: ((fusePid: number) => void) | null = null,
  timeoutMs = 30_000,
): number {
  const fusePid = spawnInNamespaces(
    pid,
    m.fuse,
    ["squashfuse", "-f", m.file, m.mnt],
    [`PATH=${process.env.PATH ?? "/usr/bin:/bin"}`],
    detach,
  );
  const hostDev = statSync(m.mnt).dev;
  const inside = `/proc/${pid}/root${m.mnt}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (statSync(inside, { throwIfNoEntry: false })?.dev !== hostDev) return fusePid;
    const st = libc().reaped(fusePid);
    if (st !== null)
      throw new ChError(
        `can't mount SquashFS image ${m.file}: squashfuse exited with status ${(st >> 8) & 0xff} (is it a SquashFS image?)`,
      );
    if (Date.now() > deadline) {
      libc().kill(fusePid, 9);
      throw new ChError(`can't mount SquashFS image ${m.file}: squashfuse did not mount it within ${timeoutMs / 1000} s`);
    }
    sleep(2);
  }
}
