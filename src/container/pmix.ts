// PMIx's shared job-data store. Under `srun --mpi=pmix`, Slurm's PMIx server keeps it in a
// directory of the Slurm daemon's spool ($PMIX_SERVER_TMPDIR, e.g. /var/spool/slurmd/pmix.J.S),
// and every rank's PMIx client maps files there ($PMIX_DSTORE_*_BASE_PATH). A container that does
// not see that directory gets "PMIX ERROR: ... gds_ds12_lock_pthread.c" from every rank, or fails
// at start-up (the FAQ's "PMIX ERROR: BAD-PARAM in file src/dstore/pmix_esh.c"). ch-run makes the
// directory visible at the same path where it can, and otherwise tells PMIx to keep the data in
// each process (its "hash" store), which needs no shared files.
import { posix } from "node:path";
import { type ContainerView, missingDirs } from "./binds.ts";
import type { HostFs } from "./hostfs.ts";

/** The PMIx server's directory on the host, if the environment names one that exists. */
export function pmixServerDir(env: Record<string, string | undefined>, fs: HostFs): string | null {
  const dir = env.PMIX_SERVER_TMPDIR;
  if (!dir || !posix.isAbsolute(dir)) return null;
  const norm = posix.normalize(dir).replace(/(.)\/+$/, "$1");
  return fs.lstat(norm)?.type === "dir" ? norm : null;
}

/** Whether the container, as `view` sees it, shows host directory `dir` at the same path. */
export function pmixVisible(view: ContainerView, dir: string): boolean {
  const r = view.resolve(dir);
  return r.type === "dir" && r.host === dir;
}

export type PmixStep =
  | { kind: "visible" }
  /** Bind host directory `src` (the spool holding the server directory) at container path `dst`,
   * creating `mkdirs` first (container paths, in a writable image only). */
  | { kind: "bind"; src: string; dst: string; mkdirs: string[] }
  | { kind: "hash" };

/** How to give the container the PMIx server directory `dir`: it is visible already (under /tmp
 * with mpirun, or a spool the user bound); or its spool directory (the parent) is bound where the
 * image has that directory (Charliecloud binds /var/spool/slurmd the same way), or where it can
 * be made in a writable image; or else PMIx's per-process store is used instead. */
export function pmixStep(view: ContainerView, dir: string, writable: boolean): PmixStep {
  if (pmixVisible(view, dir)) return { kind: "visible" };
  const spool = posix.dirname(dir);
  if (spool === "/") return { kind: "hash" };
  const r = view.resolve(spool);
  if (r.type === "dir" && r.under === null) return { kind: "bind", src: spool, dst: r.path, mkdirs: [] };
  if (r.type === null && writable && r.under === null && r.missing !== null)
    return { kind: "bind", src: spool, dst: r.path, mkdirs: missingDirs(r) };
  return { kind: "hash" };
}
