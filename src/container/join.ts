// ch-run --join: peers on a node (MPI ranks, say) share one container, so that cross-memory
// attach works between them. The first peer to claim the group's file in /dev/shm sets the
// container up and writes the PID of its command there; the others join that process's
// namespaces and say so with a file each. When all have arrived, the first peer removes every
// file, so nothing stays in /dev/shm; a group whose first peer died (kill -9) is recognised by
// its dead PID and cleared by the next one, so a crashed job cannot wedge a later one.
import { closeSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { posix } from "node:path";
import { ChError } from "../sys/errors.ts";
import { startTime } from "../sys/proc.ts";

export const SHM = "/dev/shm";

export interface JoinGroup {
  tag: string;
  count: number;
  /** Where the count came from, for messages. */
  countFrom: string;
}

/** Peer group size and tag, as Charliecloud finds them. */
export function joinGroup(
  opt: { count: number | null; tag: string | null },
  env: Record<string, string | undefined>,
  ppid: number,
): JoinGroup {
  let count = opt.count;
  let countFrom = "--join-ct";
  for (const v of ["OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_CPUS_ON_NODE"]) {
    if (count !== null) break;
    const m = /^(\d+)/.exec(env[v] ?? "");
    if (m && Number(m[1]) > 0) {
      count = Number(m[1]);
      countFrom = v;
    }
  }
  if (count === null || count < 1) throw new ChError("join: no valid peer group size found (use --join-ct)");
  // Charliecloud's default tag is the step ID alone, which is "0" for every plain srun job:
  // two jobs of one user starting together on a shared node would join each other. With the
  // job ID in front, they can't.
  const step =
    env.SLURM_STEP_ID === undefined
      ? undefined
      : env.SLURM_JOB_ID
        ? `${env.SLURM_JOB_ID}.${env.SLURM_STEP_ID}`
        : env.SLURM_STEP_ID;
  const tag = opt.tag ?? step ?? String(ppid);
  if (!tag) throw new ChError("join: peer group tag cannot be empty string");
  if (tag.includes("/")) throw new ChError(`join: peer group tag cannot contain '/': ${tag}`);
  return { tag, count, countFrom };
}

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

export class Peers {
  readonly base: string;
  readonly group: JoinGroup;
  readonly timeoutMs: number;
  private readonly me = `${process.pid} ${startTime(process.pid)}`;

  constructor(group: JoinGroup, uid: number, timeoutMs: number, dir = SHM) {
    this.group = group;
    this.timeoutMs = timeoutMs;
    this.base = posix.join(dir, `ch-run.${uid}.${group.tag}`);
  }

  private arrivals(): string[] {
    const prefix = `${posix.basename(this.base)}.arrived.`;
    return readdirSync(posix.dirname(this.base)).filter((f) => f.startsWith(prefix));
  }

  private describe(arrived: number): string {
    const g = this.group;
    return `tag ${g.tag}, ${g.count} peers (${g.countFrom}), ${arrived} arrived`;
  }

  /** Removes every file of the group. */
  clear(): void {
    for (const f of this.arrivals()) unlinkSync(posix.join(posix.dirname(this.base), f));
    try {
      unlinkSync(this.base);
    } catch {}
  }

  /** Claims the group: true for the first peer. A claim left by a dead peer is cleared. */
  claim(): boolean {
    for (;;) {
      try {
        const fd = openSync(this.base, "wx", 0o600);
        writeSync(fd, `${this.me}\n`);
        closeSync(fd);
        return true;
      } catch (e) {
        if ((e as { code?: string }).code !== "EEXIST") throw e;
      }
      const [pid, start] = this.read()?.split(" ") ?? [];
      if (pid && startTime(Number(pid)) !== start) {
        // The first peer of an earlier group with this tag died: clear its files and retry.
        const aside = `${this.base}.stale.${process.pid}`;
        try {
          renameSync(this.base, aside);
          unlinkSync(aside);
          for (const f of this.arrivals()) unlinkSync(posix.join(posix.dirname(this.base), f));
        } catch {}
        continue;
      }
      return false;
    }
  }

  private read(): string | null {
    try {
      return readFileSync(this.base, "utf8").trim() || null;
    } catch {
      return null;
    }
  }

  /** First peer: publishes the container, waits for the others, then removes every file. */
  publishAndWait(containerPid: number): void {
    writeFileSync(`${this.base}.tmp`, `${this.me} ${containerPid}\n`, { mode: 0o600 });
    renameSync(`${this.base}.tmp`, this.base);
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const arrived = this.arrivals().length;
      if (arrived >= this.group.count - 1) break;
      if (Date.now() > deadline) {
        this.clear();
        throw new ChError(`join: timed out waiting for peers (${this.describe(arrived + 1)})`);
      }
      sleep(2);
    }
    this.clear();
  }

  /** Other peers: the PID of the container's command, once published. */
  waitForContainer(): number {
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const fields = this.read()?.split(" ") ?? [];
      if (fields.length === 3) return Number(fields[2]);
      if (fields.length >= 2 && startTime(Number(fields[0])) !== fields[1])
        throw new ChError(
          `join: the first peer died before setting the container up (${this.describe(this.arrivals().length + 1)})`,
        );
      if (Date.now() > deadline)
        throw new ChError(`join: timed out waiting for the first peer (${this.describe(this.arrivals().length)})`);
      sleep(2);
    }
  }

  /** Other peers: says this one has joined. */
  arrive(): void {
    writeFileSync(`${this.base}.arrived.${process.pid}`, "", { mode: 0o600 });
  }
}
