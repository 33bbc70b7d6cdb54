// Facts about other processes, from /proc.
import { readFileSync } from "node:fs";

/** A process's start time (field 22 of /proc/PID/stat, clock ticks since boot), which tells it
 * from a later process with a recycled PID; null if it is gone or a zombie (dead, not yet reaped:
 * it holds nothing any more). */
export function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[0] === "Z" || fields[0] === "X" ? null : (fields[19] ?? null);
  } catch {
    return null;
  }
}
