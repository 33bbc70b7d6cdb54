// Which open descriptors ch-run inherited from its parent, to hand them to the command.
//
// Node marks descriptors 0 to 16 (and on, while they are open) close-on-exec first thing at
// start-up, inherited ones included (an MPI launcher's PMI socket, say); only then does it open
// its own, all close-on-exec: epoll, io_uring and eventfd (anonymous inodes), pipe pairs for
// libuv, and one /dev/null. So a descriptor without close-on-exec is inherited; one with it is
// inherited unless it is one of those kinds. (An inherited /dev/null is dropped too: the command
// can open its own.)
import { closeSync, openSync, readdirSync, readlinkSync, readSync } from "node:fs";

export interface FdEntry {
  fd: number;
  target: string;
  cloexec: boolean;
}

const O_CLOEXEC = 0o2000000;

/** Pure part: picks the inherited descriptors (above 2) from a listing of /proc/self/fd. ch-run's
 * fast path applies the same rule in native code (native/keepfd.c's keepInherited()): change both. */
export function pickInherited(entries: FdEntry[]): number[] {
  const count = new Map<string, number>();
  for (const e of entries) count.set(e.target, (count.get(e.target) ?? 0) + 1);
  const nodes = (e: FdEntry) =>
    e.target.startsWith("anon_inode:") ||
    e.target === "/dev/null" ||
    (e.target.startsWith("pipe:") && (count.get(e.target) ?? 0) > 1);
  return entries
    .filter((e) => e.fd > 2 && (!e.cloexec || !nodes(e)))
    .map((e) => e.fd)
    .sort((a, b) => a - b);
}

export function listFds(): FdEntry[] {
  const out: FdEntry[] = [];
  // One buffer for every fdinfo file (a few dozen bytes each), three system calls a file.
  const buf = Buffer.allocUnsafe(4096);
  for (const name of readdirSync("/proc/self/fd")) {
    try {
      const target = readlinkSync(`/proc/self/fd/${name}`);
      const fd = openSync(`/proc/self/fdinfo/${name}`, "r");
      let n: number;
      try {
        n = readSync(fd, buf, 0, buf.length, null);
      } finally {
        closeSync(fd);
      }
      const flags = /^flags:\s+([0-7]+)$/m.exec(buf.toString("latin1", 0, n));
      out.push({ fd: Number(name), target, cloexec: flags ? (Number.parseInt(flags[1], 8) & O_CLOEXEC) !== 0 : true });
    } catch {
      // readdirSync's own handle, closed by now
    }
  }
  return out;
}

export function inheritedFds(): number[] {
  return pickInherited(listFds());
}
