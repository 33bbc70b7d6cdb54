// ch-run's chatter on stderr, at Charliecloud's levels: -qqq error, -qq (nothing more), -q
// warning, default info, -v verbose, -vv debug, -vvv trace. Each warning printed is also kept
// (the first 4 KiB of them, as Charliecloud's buffer holds) and printed again when ch-run exits
// by itself, so that it is not lost above a long error; never once the command has started.
import { writeSync } from "node:fs";
import { programName } from "../sys/errors.ts";

/** Charliecloud's buffer of warnings to print again: 4 KiB, each text with a NUL after it. */
export const WARNINGS_SIZE = 4096;

export class RunLog {
  verbosity = 0;
  private readonly kept: string[] = [];
  private used = 0;
  private reprinted = false;

  private prefix(): string {
    return `${programName()}[${process.pid}]: `;
  }

  private print(text: string): void {
    try {
      writeSync(2, `${text}\n`);
    } catch {
      // stderr closed: nothing to tell anyone
    }
  }

  private at(level: number, message: string): void {
    if (this.verbosity >= level) this.print(this.prefix() + message);
  }

  trace(message: string): void {
    this.at(3, message);
  }
  debug(message: string): void {
    this.at(2, message);
  }
  verbose(message: string): void {
    this.at(1, message);
  }
  info(message: string): void {
    this.at(0, message);
  }

  warning(message: string): void {
    if (this.verbosity < -1) return;
    const text = `${this.prefix()}warning: ${message}`;
    this.print(text);
    const size = Buffer.byteLength(text) + 1;
    if (this.used + size <= WARNINGS_SIZE) this.kept.push(text);
    this.used += size; // as Charliecloud's offset: once one does not fit, none after it does
  }

  /** The warnings kept, printed again (at most once). */
  reprint(): void {
    if (this.reprinted || this.kept.length === 0) return;
    this.reprinted = true;
    this.print(this.reprintText().slice(0, -1));
  }

  /** What reprint() prints, for the launcher to print after an error of its own ("" if none). */
  reprintText(): string {
    if (this.kept.length === 0) return "";
    return [`${this.prefix()}warning: reprinting first ${this.kept.length} warning(s)`, ...this.kept]
      .map((l) => `${l}\n`)
      .join("");
  }

  /** The command has started: nothing is printed again. */
  commandStarted(): void {
    this.reprinted = true;
  }
}
