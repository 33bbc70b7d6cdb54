// The host's facts for ch-checkns, read from /proc, /sys, /etc/os-release and the file
// systems. Tests give diagnose() facts of their own instead.
import { accessSync, constants, readFileSync, realpathSync, statSync } from "node:fs";
import { release } from "node:os";
import { posix } from "node:path";
import { libc } from "../sys/libc.ts";
import type { Facts, StorageFacts } from "./diagnose.ts";

function read(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

function errnoOf(e: unknown): number {
  return Math.abs(Number((e as NodeJS.ErrnoException).errno ?? 0)) || 1;
}

/** /etc/os-release as key-value pairs. */
export function parseOsRelease(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/^([A-Z_]+)=("?)(.*)\2$/gm)) out[m[1]] = m[3];
  return out;
}

/** The mount (point, type) holding `path` (a real path), from /proc/self/mountinfo. */
export function mountOf(mountinfo: string, path: string): { mountPoint: string; fstype: string } | null {
  let best: { mountPoint: string; fstype: string } | null = null;
  for (const line of mountinfo.split("\n")) {
    const [left, right] = line.split(" - ");
    if (!right) continue;
    const point = (left.split(" ")[4] ?? "").replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));
    const fstype = right.split(" ")[0];
    const under = point === "/" || path === point || path.startsWith(`${point}/`);
    // Later mounts over the same point hide earlier ones.
    if (under && (!best || point.length >= best.mountPoint.length)) best = { mountPoint: point, fstype };
  }
  return best;
}

/** The storage directory, or the nearest ancestor that exists (where it would be made). */
export function storageFacts(dir: string): StorageFacts {
  let probed = dir;
  while (!statSync(probed, { throwIfNoEntry: false })?.isDirectory() && probed !== "/") probed = posix.dirname(probed);
  const exists = probed === dir;
  try {
    probed = realpathSync(probed);
  } catch {}
  let writable = 0;
  try {
    accessSync(probed, constants.W_OK | constants.X_OK);
  } catch (e) {
    writable = errnoOf(e);
  }
  let flags = 0;
  try {
    flags = libc().mountFlags(probed);
  } catch {}
  const m = mountOf(read("/proc/self/mountinfo") ?? "", probed);
  return { dir, probed, exists, writable, fstype: m?.fstype ?? null, mountPoint: m?.mountPoint ?? null, flags };
}

export function readFacts(storage: string, squashfuse: string | null): Facts {
  const os = parseOsRelease(read("/etc/os-release") ?? read("/usr/lib/os-release") ?? "");
  const status = read("/proc/self/status") ?? "";
  const enforce = read("/sys/fs/selinux/enforce");
  let fuse: Facts["fuse"] = { errno: 0, mode: null, uid: null };
  try {
    const st = statSync("/dev/fuse");
    fuse = { errno: 0, mode: st.mode, uid: st.uid };
    accessSync("/dev/fuse", constants.R_OK | constants.W_OK);
  } catch (e) {
    fuse = { ...fuse, errno: errnoOf(e) };
  }
  let exe: Facts["exe"] = null;
  try {
    exe = { path: process.execPath, mode: statSync(process.execPath).mode };
  } catch {}
  return {
    sysctl: (name) => read(`/proc/sys/${name.replaceAll(".", "/")}`)?.trim() ?? null,
    os: { id: os.ID ?? "", idLike: os.ID_LIKE ?? "", versionId: os.VERSION_ID ?? "", prettyName: os.PRETTY_NAME ?? "" },
    kernel: release(),
    cmdline: read("/proc/cmdline")?.trim() ?? "",
    seccomp: Number(/^Seccomp:\s*(\d+)/m.exec(status)?.[1] ?? 0),
    selinux: enforce === null ? null : enforce.trim() === "1" ? "enforcing" : "permissive",
    uid: process.getuid?.() ?? 0,
    euid: process.geteuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    egid: process.getegid?.() ?? 0,
    exe,
    fuse,
    squashfuse,
    storage: storageFacts(storage),
  };
}
