// Refusing to run set-user-ID or set-group-ID. A setuid copy of this binary would run the whole
// container set-up with the owner's privileges (a setuid-root copy maps host root into the
// container): like Charliecloud, every program refuses, before it loads anything from a path the
// caller controls (koffi's module, a configuration, an image).
import { closeSync, openSync, readSync } from "node:fs";

/** AT_SECURE in the auxiliary vector: the kernel's own word that this is a privileged exec
 * (setuid, setgid, file capabilities, an LSM transition). */
const AT_SECURE = 23;

/** Reads AT_SECURE from an auxv buffer (pairs of native-endian 64-bit words); null if absent. */
export function atSecure(auxv: Buffer): boolean | null {
  for (let off = 0; off + 16 <= auxv.length; off += 16) {
    const type = auxv.readBigUInt64LE(off);
    if (type === 0n) break; // AT_NULL
    if (type === BigInt(AT_SECURE)) return auxv.readBigUInt64LE(off + 8) !== 0n;
  }
  return null;
}

export interface Ids {
  uid: number;
  euid: number;
  gid: number;
  egid: number;
  secure: boolean | null;
}

/** /proc/self/auxv: a few hundred bytes, read at once (readFileSync() grows its buffer, as for
 * any file of /proc, which says its size is 0: slower, at every start). */
function readAuxv(): Buffer {
  const fd = openSync("/proc/self/auxv", "r");
  try {
    const buf = Buffer.allocUnsafe(4096);
    let n = 0;
    for (let r = 1; r > 0 && n < buf.length; n += r) r = readSync(fd, buf, n, buf.length - n, null);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

export function currentIds(): Ids {
  let secure: boolean | null = null;
  try {
    secure = atSecure(readAuxv());
  } catch {
    // no /proc: the IDs alone decide
  }
  return {
    uid: process.getuid?.() ?? 0,
    euid: process.geteuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    egid: process.getegid?.() ?? 0,
    secure,
  };
}

/** Why this process must not go on, or null. */
export function privilegeProblem(ids: Ids): string | null {
  if (ids.uid !== ids.euid) return `setuid not allowed: real UID ${ids.uid}, effective UID ${ids.euid}`;
  if (ids.gid !== ids.egid) return `setgid not allowed: real GID ${ids.gid}, effective GID ${ids.egid}`;
  if (ids.secure) return "running set-user-ID, set-group-ID or with file capabilities (AT_SECURE) is not allowed";
  return null;
}
