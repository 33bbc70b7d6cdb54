// Host facts that ch-run's fast path reads from files instead of through libc (koffi costs about
// 16 ms to load): a file system's mount flags from /proc/self/mountinfo (statvfs(3)'s f_flag),
// users and groups from /etc/passwd and /etc/group (getpwuid(3) and getgrgid(3) look there first
// under the usual nsswitch.conf; the caller asks NSS only for an ID not found there).
import { readFileSync } from "node:fs";
import type { Group, Passwd } from "./libc.ts";

// statvfs f_flag bits, by mount option.
const ST_BY_OPTION: Record<string, number> = {
  ro: 1, // ST_RDONLY
  nosuid: 2, // ST_NOSUID
  nodev: 4, // ST_NODEV
  noexec: 8, // ST_NOEXEC
  noatime: 1024, // ST_NOATIME
  nodiratime: 2048, // ST_NODIRATIME
  relatime: 4096, // ST_RELATIME
};

// Each file is read once per process: ch-run looks several users, groups and mounts up before it
// execs away, and nothing it does in between changes them.
const texts = new Map<string, string | null>();
function read(file: string): string | null {
  if (!texts.has(file)) {
    try {
      texts.set(file, readFileSync(file, "utf8"));
    } catch {
      texts.set(file, null);
    }
  }
  return texts.get(file) ?? null;
}

const unoctal = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));

/** statvfs(3) f_flag of the mount holding `path` (a real path), from a /proc/self/mountinfo
 * text: the mount's own options, and ST_RDONLY also when its super block is read-only. Null if
 * no mount holds it. */
export function mountInfoFlags(mountinfo: string, path: string): number | null {
  let best: { point: string; flags: number } | null = null;
  for (const line of mountinfo.split("\n")) {
    const [left, right] = line.split(" - ");
    if (!right) continue;
    const fields = left.split(" ");
    const point = unoctal(fields[4] ?? "");
    const under = point === "/" || path === point || path.startsWith(`${point}/`);
    // Later mounts over the same point hide earlier ones.
    if (!under || (best && point.length < best.point.length)) continue;
    let flags = 0;
    for (const o of (fields[5] ?? "").split(",")) flags |= ST_BY_OPTION[o] ?? 0;
    if ((right.split(" ")[2] ?? "").split(",").includes("ro")) flags |= 1;
    best = { point, flags };
  }
  return best?.flags ?? null;
}

/** The mount flags of `path` (a real path) on this host; null if /proc/self/mountinfo can't tell. */
export function mountFlagsOf(path: string): number | null {
  const text = read("/proc/self/mountinfo");
  return text === null ? null : mountInfoFlags(text, path);
}

/** The entry for `uid` in a passwd(5) text; null if none. */
export function passwdEntry(text: string, uid: number): Passwd | null {
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 7 || f[0].startsWith("+") || f[0].startsWith("-")) continue;
    if (f[2] === String(uid)) return { name: f[0], uid, gid: Number(f[3]), gecos: f[4], dir: f[5], shell: f[6] };
  }
  return null;
}

/** The entry for `gid` in a group(5) text; null if none. */
export function groupEntry(text: string, gid: number): Group | null {
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 3 || f[0].startsWith("+") || f[0].startsWith("-")) continue;
    if (f[2] === String(gid)) return { name: f[0], gid };
  }
  return null;
}

/** getpwuid(3) from /etc/passwd alone; null if not there (NSS may still know it). */
export function filePasswd(uid: number): Passwd | null {
  return passwdEntry(read("/etc/passwd") ?? "", uid);
}

/** getgrgid(3) from /etc/group alone; null if not there. */
export function fileGroup(gid: number): Group | null {
  return groupEntry(read("/etc/group") ?? "", gid);
}
