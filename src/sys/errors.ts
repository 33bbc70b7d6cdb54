// The one error type of the project, and Charliecloud's message format:
//   PROG[PID]: message: strerror (file.ts:LINE ERRNO)

import { writeSync } from "node:fs";
import { sourceLocation } from "./sourcemap.ts";
import { strerror } from "./strerror.ts";

/** Exit status of ch-run's own failures, distinct from the command's. */
export const EXIT_ERR = 31;
/** Exit status when the command could not be executed. */
export const EXIT_EXEC = 49;

let program = "charliecloud";

export function setProgram(name: string): void {
  program = name;
}

export function programName(): string {
  return program;
}

export interface ChErrorOptions {
  /** errno of the failure; 0 when none applies. */
  errno?: number;
  /** Exit status; defaults to EXIT_ERR for ch-run, 1 elsewhere (see exitCode()). */
  exit?: number;
  /** An Error captured where the failing step was planned; its first frame is the location. */
  at?: Error;
  /** A usage error (bad option or argument): no errno and no source location in the message. */
  usage?: boolean;
}

export class ChError extends Error {
  readonly errno: number;
  readonly exit: number | undefined;
  readonly at: Error;
  readonly usage: boolean;

  constructor(message: string, opts: ChErrorOptions = {}) {
    super(message);
    this.errno = opts.errno ?? 0;
    this.exit = opts.exit;
    this.at = opts.at ?? this;
    this.usage = opts.usage ?? false;
  }
}

/** A usage error: bad options or arguments, told without a source location. */
export function usageError(message: string, exit?: number): ChError {
  return new ChError(message, { usage: true, exit });
}

/** Wraps a Node system error (ENOENT and friends) with a message of ours. */
export function sysError(message: string, e: unknown, exit?: number): ChError {
  const errno = typeof e === "object" && e !== null && "errno" in e ? Math.abs(Number(e.errno)) : 0;
  return new ChError(message, { errno, exit, at: new Error() });
}

/** PROG[PID]: error: message: strerror (file.ts:LINE ERRNO); without a location when where is null. */
export function formatError(message: string, errno: number, where: string | null, pid = process.pid): string {
  const text = errno ? `: ${strerror(errno)}` : "";
  const loc = where === null ? "" : ` (${where} ${errno})`;
  return `${program}[${pid}]: error: ${message}${text}${loc}`;
}

export function describe(e: ChError): string {
  return formatError(e.message, e.errno, e.usage && !e.errno ? null : sourceLocation(e.at));
}

// Where chatter goes: standard error, or the log file ch-image's $CH_LOG_FILE names.
let logFd: number | null = null;
/** Whether a fatal error also gets its stack (ch-image --debug, $CH_IMAGE_DEBUG). */
let debugStacks = false;

/** Sends chatter (info, warnings) to the file open at fd, appending, instead of stderr. */
export function setLogFd(fd: number | null): void {
  logFd = fd;
}

export function setDebugStacks(on: boolean): void {
  debugStacks = on;
}

export function debugStacksOn(): boolean {
  return debugStacks;
}

/** Writes chatter: one or more whole lines. */
export function chatter(text: string): void {
  if (logFd === null) {
    process.stderr.write(text);
    return;
  }
  try {
    writeSync(logFd, text);
  } catch {
    process.stderr.write(text); // the log file went away: chatter is not worth failing over
  }
}

/** Writes an error line: on stderr always, and in the log file too if there is one. */
export function errorOut(text: string): void {
  process.stderr.write(text);
  if (logFd !== null)
    try {
      writeSync(logFd, text);
    } catch {}
}

export function warn(message: string): void {
  chatter(`${program}[${process.pid}]: warning: ${message}\n`);
}
