// /etc/passwd and /etc/group for the container, so that the user has a name inside.
import type { Group, Passwd } from "../sys/libc.ts";

export interface IdFacts {
  uid: number;
  gid: number;
  home: string;
  /** Host's entry for the container UID (NSS), if any. */
  user: Passwd | null;
  /** Host's entry for the container GID, if any. */
  group: Group | null;
}

export function passwdFile(f: IdFacts): string {
  const lines: string[] = [];
  if (f.uid !== 0) lines.push("root:x:0:0:root:/root:/bin/sh");
  if (f.uid !== 65534) lines.push("nobody:x:65534:65534:nobody:/:/bin/false");
  const name = f.user?.name ?? "charlie";
  const gecos = f.user ? f.user.gecos.replace(/[:\n]/g, " ") : "Charlie";
  lines.push(`${name}:x:${f.uid}:${f.gid}:${gecos}:${f.home}:/bin/sh`);
  return `${lines.join("\n")}\n`;
}

export function groupFile(f: IdFacts): string {
  const lines: string[] = [];
  if (f.gid !== 0) lines.push("root:x:0:");
  if (f.gid !== 65534) lines.push("nogroup:x:65534:");
  lines.push(`${f.group?.name ?? "charliegroup"}:x:${f.gid}:`);
  return `${lines.join("\n")}\n`;
}
