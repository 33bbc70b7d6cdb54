// Chatter for the image programs: info lines go to stderr (or ch-image's $CH_LOG_FILE) unless
// -q; verbose ones need -v, debug ones -vv, trace ones -vvv.
import { chatter } from "../sys/errors.ts";

let level = 0;

/** Sets the verbosity: 0 normal, negative with each -q, positive with each -v. */
export function setVerbosity(n: number): void {
  level = n;
}

export function verbosity(): number {
  return level;
}

export function info(message: string): void {
  if (level >= 0) chatter(`${message}\n`);
}

export function verbose(message: string): void {
  if (level >= 1) chatter(`${message}\n`);
}

export function debug(message: string): void {
  if (level >= 2) chatter(`${message}\n`);
}

export function trace(message: string): void {
  if (level >= 3) chatter(`${message}\n`);
}
