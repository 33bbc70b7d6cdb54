// errno text from the OS (glibc's strerror), with a fallback when the FFI is unavailable: glibc's
// text (Linux numbers errnos alike on every architecture), from native/errno.txt as the launcher's
// (native/errno-text.ts, generated), else the name.
import { constants } from "node:os";
import { libc } from "./libc.ts";
import { ERRNO_TEXT } from "./native/errno-text.ts";

export function strerror(errno: number): string {
  try {
    return libc().strerror(errno);
  } catch {
    return ERRNO_TEXT[errno] ?? errnoName(errno);
  }
}

/** Names Node lacks, or where Linux has two for one number: glibc's (strerrorname_np(3)). */
const GLIBC_NAMES: Record<number, string> = { 11: "EAGAIN", 35: "EDEADLK", 87: "EUSERS", 95: "EOPNOTSUPP" };

/** errno's symbolic name (EPERM), the one table of them; "errno N" if unknown. */
export function errnoName(errno: number): string {
  if (GLIBC_NAMES[errno]) return GLIBC_NAMES[errno];
  for (const [name, value] of Object.entries(constants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}
