// The image ch-fromhost injects into: a directory, or an image in storage by name (a SquashFS
// file can't be written); and running its own programs (ldconfig) through our ch-run.
import { realpathSync, statSync } from "node:fs";
import type { HostFs } from "../container/hostfs.ts";
import { isSquashFile } from "../container/squash.ts";
import { Storage, validImageName } from "../image/storage.ts";
import { ChError } from "../sys/errors.ts";
import { selfCommand } from "../sys/self.ts";
import { type LdDir, lastLine, parseLdconfigV, type Ran, runProgram } from "./host.ts";
import { resolveInImage } from "./imagepath.ts";

export interface TargetImage {
  /** The image directory (real path). */
  root: string;
  /** The storage directory it is in, or null. */
  storage: string | null;
}

/** Finds IMAGE: a name in storage first (as ch-run does: any spelling of its reference, and
 * only from a storage directory no one else could have written), then a directory. */
export function findTarget(image: string, storage: string): TargetImage {
  const byName = validImageName(image) ? new Storage(storage).find(image) : null;
  if (byName !== null && statSync(byName, { throwIfNoEntry: false })?.isDirectory()) {
    return { root: realpathSync(byName), storage };
  }
  const st = statSync(image, { throwIfNoEntry: false });
  if (!st) throw new ChError(`can't find image: ${image} (not a directory, nor an image in storage ${storage})`, { errno: 2 });
  if (!st.isDirectory()) {
    if (isSquashFile(image))
      throw new ChError(
        `can't inject into SquashFS image ${image}: it is read-only; unpack it (ch-convert ${image} DIR), inject into DIR, and pack DIR again if need be`,
      );
    throw new ChError(`not an image directory: ${image}`, { errno: 20 });
  }
  const root = realpathSync(image);
  let store: string | null = null;
  try {
    const s = realpathSync(storage);
    if (root.startsWith(`${s}/img/`)) store = s;
  } catch {}
  return { root, storage: store };
}

/** The image's ldconfig (an image path), or null if it has none. */
export function imageLdconfig(root: string, fs: HostFs): string | null {
  for (const p of ["/sbin/ldconfig", "/usr/sbin/ldconfig", "/bin/ldconfig", "/usr/bin/ldconfig"]) {
    try {
      if (resolveInImage(root, p, fs).type === "file") return p;
    } catch {}
  }
  return null;
}

/** Runs a command in the image with our own ch-run (-w: writable). */
export function runInImage(img: TargetImage, argv: string[], write: boolean): Ran {
  const self = selfCommand("ch-run");
  const args = [...self.prefix, ...(img.storage ? ["--unsafe"] : []), ...(write ? ["-w"] : []), img.root, "--", ...argv];
  return runProgram(self.file, args, { argv0: self.argv0 });
}

/** The image's ldconfig -Nv: the directories it searches and the libraries in them. */
export function imageLd(img: TargetImage, fs: HostFs): LdDir[] {
  const ldconfig = imageLdconfig(img.root, fs);
  if (!ldconfig) throw new ChError(`the image has no ldconfig: can't find its library directory (use --dest)`);
  const r = runInImage(img, [ldconfig, "-Nv"], false);
  if (r.status !== 0)
    throw new ChError(`can't ask the image's ldconfig for its library directories (exit ${r.status}): ${lastLine(r.stderr)}`);
  const dirs = parseLdconfigV(r.stdout);
  if (!dirs.length) throw new ChError(`the image's ldconfig -Nv listed no directories (use --dest)`);
  return dirs;
}
