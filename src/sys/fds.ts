// Which open descriptors ch-run inherited from its parent. Node marks descriptors 0 to about 16
// close-on-exec at start-up, inherited ones included (an MPI launcher's PMI socket, say), and
// opens its own (epoll, io_uring, eventfd, pipe pairs for libuv) before any JavaScript runs. So
// flags can't tell them apart; what they are can: Node's own are anonymous inodes, or pipes
// with both ends in this process.
import { readdirSync, readlinkSync } from "node:fs";

export interface FdEntry {
  fd: number;
  target: string;
}

/** Pure part: picks the inherited descriptors from a listing of /proc/self/fd. */
export function pickInherited(entries: FdEntry[]): number[] {
  const count = new Map<string, number>();
  for (const e of entries) count.set(e.target, (count.get(e.target) ?? 0) + 1);
  return entries
    .filter((e) => e.fd > 2)
    .filter((e) => !e.target.startsWith("anon_inode:"))
    .filter((e) => !(e.target.startsWith("pipe:") && (count.get(e.target) ?? 0) > 1))
    .map((e) => e.fd)
    .sort((a, b) => a - b);
}

export function listFds(): FdEntry[] {
  const out: FdEntry[] = [];
  for (const name of readdirSync("/proc/self/fd")) {
    try {
      out.push({ fd: Number(name), target: readlinkSync(`/proc/self/fd/${name}`) });
    } catch {
      // the directory handle of readdirSync itself, already closed
    }
  }
  return out;
}

export function inheritedFds(): number[] {
  return pickInherited(listFds());
}
