// ch-run --join: peers on a node (MPI ranks, say) share one container, so that cross-memory
// attach works between them. Charliecloud's protocol, with its names in /dev/shm (sites' cleanup
// scripts know them): a lock file, sem.ch-run_sem-TAG, serializes the peers, and a shared file,
// ch-run_shm-TAG, tells who holds the container and how many peers are still to join.
//
// The first peer to create the shared file (under the lock) wins: it keeps the lock while it
// sets the container up, starts its command at once, and hands the container to a tiny native
// holder (src/sys/native/holder.c) that keeps its namespaces joinable until every peer has
// joined or the join timeout passed, so a late peer still finds it after the first peer's
// command ended (Charliecloud's race, "no PID"). The others ("I lost") read the holder's PID,
// join its namespaces in parallel, and count themselves out under the lock; the last one
// removes both files. Each peer counts itself out, joined or failed, so a failed peer does not
// keep the group open.
//
// Nothing stays in /dev/shm, however a peer ends. The holder starts before ch-run touches the
// files, and removes them if ch-run dies or fails before handing the container over, or when the
// hold ends (or a signal ends it) with peers missing. The first peer and its holder each hold a
// shared flock(2) on the shared file, so it is live while either lives, whatever killed them; a
// peer that finds it dead takes the group over as a new first peer. Locks die with their
// holders, so a kill -9 wedges nobody.
import { closeSync, fstatSync, ftruncateSync, lstatSync, openSync, readSync, unlinkSync, writeSync } from "node:fs";
import { posix } from "node:path";
import { ChError, sysError } from "../sys/errors.ts";
import { type Holder, spawnHolder } from "../sys/launch.ts";
import { LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN, libc } from "../sys/libc.ts";

export const SHM = "/dev/shm";

const O_RDONLY = 0;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_DIRECTORY = 0o200000;
const O_NOFOLLOW = 0o400000;

export interface JoinGroup {
  tag: string;
  count: number;
  /** Where the count came from: "--join-ct" or an environment variable. */
  countFrom: string;
  /** Where the tag came from: "--join-tag", environment variables, or "getppid(2)". */
  tagFrom: string;
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
  let tag: string;
  let tagFrom: string;
  if (opt.tag !== null) [tag, tagFrom] = [opt.tag, "--join-tag"];
  else if (env.SLURM_STEP_ID !== undefined && env.SLURM_JOB_ID)
    [tag, tagFrom] = [`${env.SLURM_JOB_ID}.${env.SLURM_STEP_ID}`, "SLURM_JOB_ID.SLURM_STEP_ID"];
  else if (env.SLURM_STEP_ID !== undefined) [tag, tagFrom] = [env.SLURM_STEP_ID, "SLURM_STEP_ID"];
  else [tag, tagFrom] = [String(ppid), "getppid(2)"];
  if (!tag) throw new ChError("join: peer group tag cannot be empty string");
  if (tag.includes("/")) throw new ChError(`join: peer group tag cannot contain '/': ${tag}`);
  return { tag, count, countFrom, tagFrom };
}

/** Charliecloud's -v lines about the group, in its words. */
export function describeGroup(g: JoinGroup): string[] {
  const from = (f: string) => (f.startsWith("--") ? "command line" : f);
  return [`join: peer group size from ${from(g.countFrom)}`, `join: peer group tag from ${from(g.tagFrom)}`];
}

/** --join-pid: the process must be there and ours to enter. */
export function checkJoinable(pid: number): void {
  const path = `/proc/${pid}/ns/user`;
  let fd: number;
  try {
    fd = openSync(path, O_RDONLY);
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") throw new ChError(`join: no PID ${pid}: ${path} not found`);
    throw sysError(`join: can't open ${path}`, e);
  }
  closeSync(fd);
}

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/** The first peer's claim, or the container to join. */
export type Claim = { first: true } | { first: false; pid: number };

export class Peers {
  readonly group: JoinGroup;
  readonly timeoutMs: number;
  readonly dir: string;
  readonly lockName: string;
  readonly sharedName: string;
  private readonly say: (line: string) => void;
  private readonly uid: number;
  /** The lock file while we hold the lock (else -1), and the shared file of our group. */
  private lock = -1;
  private shared = -1;
  private first = false;
  private out = false;
  private holder: Holder | null = null;
  private readonly startHolder: ((p: Peers) => Holder) | null;

  /** `startHolder`: null to do without a holder (peers then join the first peer's command). */
  constructor(
    group: JoinGroup,
    timeoutMs: number,
    say: (line: string) => void = () => {},
    dir = SHM,
    startHolder: ((p: Peers) => Holder) | null = spawnInDir,
  ) {
    this.group = group;
    this.timeoutMs = timeoutMs;
    this.say = say;
    this.dir = dir;
    this.startHolder = startHolder;
    // sem_open("/ch-run_sem-TAG") and shm_open("/ch-run_shm-TAG"), as glibc names them.
    this.lockName = `sem.ch-run_sem-${group.tag}`;
    this.sharedName = `ch-run_shm-${group.tag}`;
    this.uid = process.geteuid?.() ?? 0;
  }

  get lockPath(): string {
    return posix.join(this.dir, this.lockName);
  }

  get sharedPath(): string {
    return posix.join(this.dir, this.sharedName);
  }

  /** Our descriptors (not for the command). */
  fds(): number[] {
    return [this.lock, this.shared, ...(this.holder?.fds ?? [])].filter((fd) => fd >= 0);
  }

  private describe(): string {
    const g = this.group;
    return `tag ${g.tag}, ${g.count} peers from ${g.countFrom}`;
  }

  /** Opens one of the group's files: ours, a plain file, no symbolic link; null if it is gone
   * (without create). */
  private open(path: string, flags: number): number | null {
    let fd: number;
    try {
      fd = openSync(path, O_RDWR | O_NOFOLLOW | flags, 0o600);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "ENOENT" && !(flags & O_CREAT)) return null;
      if (code === "EEXIST") throw e;
      const owner = lstatSync(path, { throwIfNoEntry: false })?.uid;
      if (owner !== undefined && owner !== this.uid)
        throw new ChError(`join: ${path} belongs to another user (UID ${owner}): use another --join-tag`);
      throw sysError(`join: can't open ${path}`, e);
    }
    const st = fstatSync(fd);
    if (st.uid !== this.uid || !st.isFile()) {
      closeSync(fd);
      if (st.uid !== this.uid) throw new ChError(`join: ${path} belongs to another user (UID ${st.uid}): use another --join-tag`);
      throw new ChError(`join: ${path} is not a regular file`);
    }
    return fd;
  }

  private timedOut(): ChError {
    return new ChError(`join: timeout waiting for join lock ${this.lockPath} (${this.describe()})`);
  }

  /** Takes the group's lock, waiting until `deadline` at most; false if `create` is false and
   * the group's files are gone. */
  private enter(create: boolean, deadline = Date.now() + this.timeoutMs): boolean {
    const c = libc();
    for (;;) {
      const fd = this.open(this.lockPath, create ? O_CREAT : 0);
      if (fd === null) return false;
      for (let wait = 1; !c.flock(fd, LOCK_EX | LOCK_NB); wait = Math.min(2 * wait, 8)) {
        if (Date.now() > deadline) {
          closeSync(fd);
          throw this.timedOut();
        }
        sleep(wait);
      }
      // Removed while we waited (a group ended): the next group has a new one.
      if (fstatSync(fd).nlink > 0) {
        this.lock = fd;
        return true;
      }
      closeSync(fd);
    }
  }

  private release(): void {
    if (this.lock < 0) return;
    libc().flock(this.lock, LOCK_UN);
    closeSync(this.lock);
    this.lock = -1;
  }

  private read(fd: number): string {
    const buf = Buffer.alloc(64);
    return buf.subarray(0, readSync(fd, buf, 0, buf.length, 0)).toString("latin1");
  }

  private write(text: string): void {
    ftruncateSync(this.shared, 0);
    writeSync(this.shared, text, 0, "latin1");
  }

  /** Removes both files; under the lock, with the group's shared file still linked. */
  private remove(): void {
    for (const path of [this.sharedPath, this.lockPath]) {
      try {
        unlinkSync(path);
      } catch (e) {
        if ((e as { code?: string }).code !== "ENOENT") throw sysError(`join: can't remove ${path}`, e);
      }
    }
  }

  /** Claims the group. The first peer keeps the lock until publish() or abort(); the others
   * get the PID of the process whose namespaces to join. A peer that may be first starts its
   * holder before it touches the files. */
  claim(): Claim {
    const c = libc();
    // A peek without the lock: with a group there, we shall most likely join it. (Its liveness
    // is tested only under the lock: testing takes an exclusive lock, which would make a dead
    // group look live to another peer testing at the same time.)
    let holder = this.startHolder && !lstatSync(this.sharedPath, { throwIfNoEntry: false }) ? this.startHolder(this) : null;
    const deadline = Date.now() + this.timeoutMs;
    try {
      this.enter(true, deadline);
      for (;;) {
        try {
          this.shared = openSync(this.sharedPath, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
          c.flock(this.shared, LOCK_SH); // live while we or our holder live
          this.first = true;
          this.say("join: I won");
          if (this.startHolder) {
            holder ??= this.startHolder(this);
            this.holder = holder;
            holder.claim(
              BigInt(fstatSync(this.lock, { bigint: true }).ino),
              BigInt(fstatSync(this.shared, { bigint: true }).ino),
            );
          }
          return { first: true };
        } catch (e) {
          if (this.first) throw e;
          if ((e as { code?: string }).code !== "EEXIST") throw sysError(`join: can't create ${this.sharedPath}`, e);
        }
        const fd = this.open(this.sharedPath, 0);
        if (fd === null) continue; // removed by hand meanwhile
        const live = !c.flock(fd, LOCK_EX | LOCK_NB);
        const m = /^(\d+) (\d+)\n$/.exec(this.read(fd));
        if (live && m) {
          this.shared = fd;
          this.say("join: I lost");
          this.release();
          holder?.quit();
          return { first: false, pid: Number(m[1]) };
        }
        closeSync(fd);
        if (live) {
          // Claimed, never published: its first peer just died, and its container child or
          // its holder have not let go yet. Soon they have.
          this.release();
          if (Date.now() > deadline) throw this.timedOut();
          sleep(5);
          this.enter(true, deadline);
          continue;
        }
        // What a group whose first peer and holder died leaves (a node's crash, kill -9 of all).
        this.say(`join: removing the IPC resources of a dead peer group: ${this.sharedPath}`);
        // We are about to be first: the holder must run before the shared file exists, so that a
        // kill -9 of this ch-run from then on still leaves nothing in /dev/shm.
        if (this.startHolder) holder ??= this.startHolder(this);
        unlinkSync(this.sharedPath);
      }
    } catch (e) {
      this.abort();
      this.release();
      holder?.quit();
      throw e;
    }
  }

  /** First peer: a detached squashfuse for its container, killed by the holder if this
   * ch-run dies or fails before publish(). */
  guard(fusePid: number): void {
    this.holder?.guard(fusePid);
  }

  /** First peer, its container ready (`pid`: its command): hands it to the holder, says which
   * process to join, then lets the others in. */
  publish(pid: number): void {
    const left = this.group.count - 1;
    const target = left > 0 ? (this.holder?.hold(pid) ?? pid) : 0;
    this.say("join: winner initializing shared data");
    this.write(`${target} ${left}\n`);
    this.say(`join: ${left} peers left excluding myself`);
    if (left <= 0) {
      this.say("join: cleaning up IPC resources");
      this.remove();
    }
    this.out = true;
    this.release();
    this.holder?.quit();
    this.say("join: done");
  }

  /** First peer, failed before publish(): removes the group's files (losers waiting for the
   * lock then find them gone and start over, one of them as first peer). */
  abort(): void {
    if (!this.first || this.out) return;
    this.out = true;
    try {
      if (this.lock >= 0) this.remove();
    } finally {
      this.release();
      this.holder?.quit();
    }
  }

  /** Other peers, joined or failed: counts this one out; the last one removes the files. */
  leave(): void {
    if (this.first || this.out) return;
    this.out = true;
    if (!this.enter(false)) return; // the hold ended: the group is gone
    try {
      if (fstatSync(this.shared).nlink === 0) return; // likewise, and a new group has begun
      const m = /^(\d+) (\d+)\n$/.exec(this.read(this.shared));
      if (!m) return;
      const left = Number(m[2]) - 1;
      this.write(`${m[1]} ${left}\n`);
      this.say(`join: ${left} peers left excluding myself`);
      if (left <= 0) {
        this.say("join: cleaning up IPC resources");
        this.remove();
      }
    } finally {
      this.release();
      this.say("join: done");
    }
  }
}

/** The real holder, given the directory of the group's files. */
function spawnInDir(p: Peers): Holder {
  const dir = openSync(p.dir, O_RDONLY | O_DIRECTORY);
  try {
    return spawnHolder(dir, p.lockName, p.sharedName, p.timeoutMs);
  } finally {
    closeSync(dir);
  }
}
