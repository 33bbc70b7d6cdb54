// External programs the image formats need (xz, mksquashfs, docker, ...): finding and running them.
import { spawn } from "node:child_process";
import { ChError } from "../sys/errors.ts";
import { findExecutable } from "../sys/which.ts";

/** Absolute path of an executable found in $PATH, or null. */
export function commandPath(name: string, path = process.env.PATH ?? "/usr/bin:/bin"): string | null {
  return findExecutable(name, path);
}

/** Path of a command that must be there, else an error saying what it is needed for. */
export function requireCommand(name: string, purpose: string, hint = ""): string {
  const exe = commandPath(name);
  if (!exe) throw new ChError(`${name} not found in $PATH; it is needed ${purpose}${hint ? ` (${hint})` : ""}`);
  return exe;
}

/** Runs a command to completion; its stdout is returned, its stderr passed through when `loud`.
 * A failure is an error quoting the first line of its stderr. */
export function runCommand(exe: string, args: string[], loud = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(exe, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString();
    });
    child.stderr.on("data", (c: Buffer) => {
      err += c.toString();
      if (loud) process.stderr.write(c);
    });
    child.on("error", (e) => reject(new ChError(`can't run ${exe}: ${e.message}`)));
    child.on("close", (code, signal) => {
      if (code === 0) resolve(out);
      else {
        const why = signal ? `killed by ${signal}` : `exit ${code}`;
        const first = err.trim().split("\n").filter(Boolean).pop() ?? "";
        reject(new ChError(`${exe.split("/").pop()} failed (${why})${first ? `: ${first}` : ""}`));
      }
    });
  });
}
