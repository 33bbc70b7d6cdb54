// Putting a new image directory in place atomically. The image is built in a "partial"
// directory beside the target (TARGET.partial-HOST.PID), fixed up, and renamed over the target
// at the end; on failure the partial is removed, and leftovers of a killed run (dead PID, same
// host) are removed by the next run. An existing non-empty directory that doesn't look like an
// image is never replaced.
import { chmodSync, lstatSync, mkdirSync, readdirSync, renameSync, rmSync, type Stats } from "node:fs";
import { hostname } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { info } from "../cli/log.ts";
import { ChError, sysError } from "../sys/errors.ts";
import { fixupImage } from "./fixup.ts";

export interface InstallOptions {
  /** Error if the target exists at all. */
  noClobber?: boolean;
}

const PARTIAL = ".partial-";

/** Name of this process's partial directory for target. */
export function partialPath(target: string, suffix = ""): string {
  return `${target}${PARTIAL}${hostname()}.${process.pid}${suffix}`;
}

/** If name is a partial of `base` (TARGET's basename), its host and PID. */
export function parsePartial(base: string, name: string): { host: string; pid: number } | null {
  if (!name.startsWith(`${base}${PARTIAL}`)) return null;
  const m = /^(.+)\.(\d+)(\.old)?$/.exec(name.slice(base.length + PARTIAL.length));
  return m ? { host: m[1], pid: Number(m[2]) } : null;
}

export function isPartialName(name: string): boolean {
  return /\.partial-.+\.\d+(\.old)?$/.test(name);
}

/** Whether process pid runs (on this host): one of another user's counts (EPERM). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
}

/** Removes a directory tree even where its directories lack u+w. */
export function forceRemove(path: string): void {
  try {
    rmSync(path, { recursive: true, force: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EACCES") throw sysError(`can't remove: ${path}`, e);
    makeWritable(path);
    rmSync(path, { recursive: true, force: true });
  }
}

function makeWritable(path: string): void {
  const st = lstatOrNull(path);
  if (!st?.isDirectory()) return;
  chmodSync(path, (st.mode & 0o7777) | 0o700);
  for (const child of readdirSync(path)) makeWritable(join(path, child));
}

/** Removes partials of target left by dead processes on this host. */
export function cleanLeftovers(target: string): void {
  const dir = dirname(target);
  const base = basename(target);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const p = parsePartial(base, name);
    if (!p || p.host !== hostname() || (p.pid !== process.pid && pidAlive(p.pid))) continue; // ours: we haven't made one yet
    info(`removing leftover of an earlier run: ${join(dir, name)}`);
    forceRemove(join(dir, name));
  }
}

/** Whether dir looks like an image we may replace (and so remove): one with Charliecloud's
 * sentinel file; or with /bin, /dev and /usr, as Charliecloud's ch-convert checks; or with the
 * mount points our fix-ups make (/dev, /proc, /sys, /mnt/0). Not just /dev and /etc: a home
 * directory may well have ~/dev and ~/etc. */
export function looksLikeImage(dir: string): boolean {
  const has = (d: string) => lstatOrNull(join(dir, d)) !== null;
  const isDir = (d: string) => !!lstatOrNull(join(dir, d))?.isDirectory();
  if (has("WEIRD_AL_YANKOVIC")) return true;
  if (!isDir("dev")) return false;
  return (has("bin") && has("usr")) || (isDir("proc") && isDir("sys") && isDir("mnt/0"));
}

/** Errors unless target may be written: absent, an empty directory, or a replaceable image. */
export function checkTarget(target: string, opts: InstallOptions = {}): void {
  const st = lstatOrNull(target);
  if (!st) {
    if (!lstatOrNull(dirname(target))?.isDirectory())
      throw new ChError(`can't create ${target}: parent directory doesn't exist`, { errno: 2 });
    return;
  }
  if (opts.noClobber) throw new ChError(`exists, not replacing per --no-clobber: ${target}`);
  if (!st.isDirectory()) throw new ChError(`exists and is not a directory, not replacing: ${target}`);
  if (readdirSync(target).length > 0 && !looksLikeImage(target))
    throw new ChError(`exists but does not look like an image, not replacing: ${target}`);
}

/** Renames the finished image root over target. */
function replaceTarget(root: string, target: string, opts: InstallOptions): void {
  checkTarget(target, opts);
  const st = lstatOrNull(target);
  if (st && readdirSync(target).length > 0) {
    const old = partialPath(target, ".old");
    info(`replacing existing image: ${target}`);
    renameSync(target, old);
    renameSync(root, target);
    forceRemove(old);
  } else {
    renameSync(root, target); // rename(2) replaces an empty directory
  }
}

/** Builds an image at target atomically: `fill` writes into the (existing, empty) partial
 * directory it is given and returns the image root, the partial or a directory inside it. */
export async function installImage(
  target: string,
  fill: (partial: string) => Promise<string>,
  opts: InstallOptions = {},
): Promise<void> {
  target = resolve(target);
  cleanLeftovers(target);
  checkTarget(target, opts);
  const partial = partialPath(target);
  try {
    mkdirSync(partial, 0o755);
  } catch (e) {
    throw sysError(`can't create: ${partial}`, e);
  }
  try {
    const root = await fill(partial);
    fixupImage(root);
    replaceTarget(root, target, opts);
    if (root !== partial) forceRemove(partial);
  } catch (e) {
    forceRemove(partial);
    if (e instanceof ChError) throw e;
    // Name what failed, not only the image (e.g. "mkdir /x.partial-h.1/etc").
    const { syscall, path } = (e ?? {}) as NodeJS.ErrnoException;
    throw sysError(`can't create image: ${target}${syscall ? `: ${syscall}${path ? ` ${path}` : ""}` : ""}`, e);
  }
}
