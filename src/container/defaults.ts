// The command an image runs when ch-run is given none: its ENTRYPOINT followed by its CMD (as
// Docker runs them; a shell form is already stored as the shell's argv), in its WORKDIR. Both
// come from ch/metadata.json inside the image, which is untrusted: a symlink (at ch or the file)
// is not followed, a file that is not a regular one, too big, not JSON or of the wrong types is
// ignored with a warning. A SquashFS image's is read from the file itself (squashfs-read.ts), with
// the same rules, before it is mounted: no squashfs-tools needed.
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync, type Stats } from "node:fs";
import { join } from "node:path";
import { InodeType, SquashImage } from "../image/squashfs-read.ts";

/** Larger metadata than this is not read (Charliecloud's are a few KiB). */
export const METADATA_MAX = 1 << 20;

export interface ImageDefaults {
  /** ENTRYPOINT + CMD; empty if the image has neither. */
  argv: string[];
  /** WORKDIR; null if none (or not absolute). */
  cwd: string | null;
  warnings: string[];
}

function lstatOrNull(p: string): Stats | null {
  try {
    return lstatSync(p);
  } catch {
    return null;
  }
}

/** ch/metadata.json's text, or null (with a warning if it is there but not usable). */
function readMetadata(root: string, warnings: string[]): string | null {
  const ch = join(root, "ch");
  const chSt = lstatOrNull(ch);
  if (!chSt) return null;
  if (!chSt.isDirectory()) {
    warnings.push(`ignoring ${ch}: not a directory`);
    return null;
  }
  const file = join(ch, "metadata.json");
  const st = lstatOrNull(file);
  if (!st) return null;
  if (!st.isFile()) {
    warnings.push(`ignoring ${file}: not a regular file`);
    return null;
  }
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    warnings.push(`ignoring ${file}: ${(e as Error).message}`);
    return null;
  }
  try {
    const fst = fstatSync(fd);
    if (!fst.isFile()) {
      warnings.push(`ignoring ${file}: not a regular file`);
      return null;
    }
    if (fst.size > METADATA_MAX) {
      warnings.push(`ignoring ${file}: larger than ${METADATA_MAX} bytes`);
      return null;
    }
    const buf = Buffer.alloc(METADATA_MAX + 1);
    let n = 0;
    for (let r = 1; r > 0 && n < buf.length; n += r) r = readSync(fd, buf, n, buf.length - n, null);
    if (n > METADATA_MAX) {
      warnings.push(`ignoring ${file}: larger than ${METADATA_MAX} bytes`);
      return null;
    }
    return buf.subarray(0, n).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

const isStrings = (x: unknown): x is string[] => Array.isArray(x) && x.every((s) => typeof s === "string");

/** Parses ch/metadata.json's text into the defaults (pure; `file` names it in warnings). */
export function parseDefaults(text: string, file: string): ImageDefaults {
  const warnings: string[] = [];
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    return { argv: [], cwd: null, warnings: [`ignoring ${file}: not JSON`] };
  }
  if (typeof j !== "object" || j === null || Array.isArray(j))
    return { argv: [], cwd: null, warnings: [`ignoring ${file}: not a JSON object`] };
  const m = j as Record<string, unknown>;
  const list = (k: string): string[] => {
    const v = m[k];
    if (v === undefined || v === null) return [];
    if (isStrings(v) && !v.some((s) => s.includes("\0"))) return v;
    warnings.push(`ignoring ${k} in ${file}: not a list of strings`);
    return [];
  };
  const argv = [...list("entrypoint"), ...list("cmd")];
  let cwd: string | null = null;
  if (typeof m.cwd === "string" && m.cwd.startsWith("/") && !m.cwd.includes("\0")) cwd = m.cwd;
  else if (m.cwd !== undefined && m.cwd !== null) warnings.push(`ignoring cwd in ${file}: not an absolute path`);
  return { argv, cwd, warnings };
}

/** The defaults of the directory image at `root` (the host's path to it). */
export function imageDefaults(root: string): ImageDefaults {
  const warnings: string[] = [];
  const text = readMetadata(root, warnings);
  if (text === null) return { argv: [], cwd: null, warnings };
  const d = parseDefaults(text, join(root, "ch", "metadata.json"));
  return { ...d, warnings: [...warnings, ...d.warnings] };
}

/** The defaults of the SquashFS image `file`, read from the file (not mounted). A corrupt image,
 * or one whose compression can't be read here, is a warning and no defaults. */
export function squashDefaults(file: string): ImageDefaults {
  const warnings: string[] = [];
  const none = (): ImageDefaults => ({ argv: [], cwd: null, warnings });
  const meta = `${file}:/ch/metadata.json`;
  let img: SquashImage;
  try {
    img = new SquashImage(file);
  } catch (e) {
    warnings.push(`ignoring ${meta}: can't read ${file}: ${(e as Error).message}`);
    return none();
  }
  try {
    const ch = img.lookup(["ch"]);
    if (!ch) return none();
    if (ch.type !== InodeType.Dir) {
      warnings.push(`ignoring ${file}:/ch: not a directory`);
      return none();
    }
    const m = img.lookup(["ch", "metadata.json"]);
    if (!m) return none();
    if (m.type !== InodeType.File) {
      warnings.push(`ignoring ${meta}: not a regular file`);
      return none();
    }
    if (img.fileSize(m) > METADATA_MAX) {
      warnings.push(`ignoring ${meta}: larger than ${METADATA_MAX} bytes`);
      return none();
    }
    const d = parseDefaults(img.readFile(m, METADATA_MAX).toString("utf8"), meta);
    return { ...d, warnings: [...warnings, ...d.warnings] };
  } catch (e) {
    warnings.push(`ignoring ${meta}: can't read ${file}: ${(e as Error).message}`);
    return none();
  } finally {
    img.close();
  }
}
