// errno text from the OS (glibc's strerror), with a fallback when the FFI is unavailable.
import { constants } from "node:os";
import { libc } from "./libc.ts";

export function strerror(errno: number): string {
  try {
    return libc().strerror(errno);
  } catch {
    return errnoName(errno);
  }
}

export function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(constants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}
