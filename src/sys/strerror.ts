// errno text from the OS (glibc's strerror), with a fallback when the FFI is unavailable: glibc's
// text for the common errnos (Linux numbers them alike on every architecture), else the name.
import { constants } from "node:os";
import { libc } from "./libc.ts";

export function strerror(errno: number): string {
  try {
    return libc().strerror(errno);
  } catch {
    return MESSAGES[errno] ?? errnoName(errno);
  }
}

/** glibc's strerror(3) text (C locale) for the errnos an error line is likely to have. */
const MESSAGES: Record<number, string> = {
  1: "Operation not permitted",
  2: "No such file or directory",
  3: "No such process",
  4: "Interrupted system call",
  5: "Input/output error",
  6: "No such device or address",
  7: "Argument list too long",
  8: "Exec format error",
  9: "Bad file descriptor",
  10: "No child processes",
  11: "Resource temporarily unavailable",
  12: "Cannot allocate memory",
  13: "Permission denied",
  14: "Bad address",
  15: "Block device required",
  16: "Device or resource busy",
  17: "File exists",
  18: "Invalid cross-device link",
  19: "No such device",
  20: "Not a directory",
  21: "Is a directory",
  22: "Invalid argument",
  23: "Too many open files in system",
  24: "Too many open files",
  25: "Inappropriate ioctl for device",
  26: "Text file busy",
  27: "File too large",
  28: "No space left on device",
  29: "Illegal seek",
  30: "Read-only file system",
  31: "Too many links",
  32: "Broken pipe",
  33: "Numerical argument out of domain",
  34: "Numerical result out of range",
  35: "Resource deadlock avoided",
  36: "File name too long",
  37: "No locks available",
  38: "Function not implemented",
  39: "Directory not empty",
  40: "Too many levels of symbolic links",
  61: "No data available",
  71: "Protocol error",
  75: "Value too large for defined data type",
  84: "Invalid or incomplete multibyte or wide character",
  90: "Message too long",
  95: "Operation not supported",
  97: "Address family not supported by protocol",
  98: "Address already in use",
  99: "Cannot assign requested address",
  100: "Network is down",
  101: "Network is unreachable",
  103: "Software caused connection abort",
  104: "Connection reset by peer",
  105: "No buffer space available",
  107: "Transport endpoint is not connected",
  110: "Connection timed out",
  111: "Connection refused",
  113: "No route to host",
  116: "Stale file handle",
  122: "Disk quota exceeded",
  125: "Operation canceled",
};

/** Names Node lacks, or where Linux has two for one number: glibc's (strerrorname_np(3)). */
const GLIBC_NAMES: Record<number, string> = { 11: "EAGAIN", 35: "EDEADLK", 87: "EUSERS", 95: "EOPNOTSUPP" };

/** errno's symbolic name (EPERM), the one table of them; "errno N" if unknown. */
export function errnoName(errno: number): string {
  if (GLIBC_NAMES[errno]) return GLIBC_NAMES[errno];
  for (const [name, value] of Object.entries(constants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}
