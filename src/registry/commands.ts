// The registry subcommands of ch-image (pull, push, list REF), from parsed arguments.
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, posix, resolve } from "node:path";
import { info } from "../cli/log.ts";
import { imageName, nameToDir, type Storage } from "../image/storage.ts";
import { ChError } from "../sys/errors.ts";
import { describeImage, localArch } from "./list.ts";
import { hostArch } from "./manifest.ts";
import { type ClientOptions, type PullOptions, pullImage } from "./pull.ts";
import { pushImage } from "./push.ts";
import { parseRef } from "./reference.ts";

/** A DEST that is a directory rather than a name in storage. */
function isPath(dest: string): boolean {
  return dest.startsWith("/") || dest.startsWith("./") || dest.startsWith("../") || dest === "." || dest === "..";
}

/** Whether $CH_IMAGE_AUTH asks for authentication. */
export function authFromEnv(env: Record<string, string | undefined>): boolean {
  return /^(yes|true|1|y)$/i.test(env.CH_IMAGE_AUTH ?? "");
}

export async function pull(storage: Storage, refText: string, dest: string | null, opts: PullOptions): Promise<void> {
  const ref = parseRef(refText);
  let target: string;
  let name: string | null = null;
  // A storage directory that is there must be usable before anything is fetched; one that isn't
  // is made only once there is something to write (pullImage).
  storage.exists();
  if (dest !== null && isPath(dest)) target = resolve(dest);
  else {
    name = imageName(dest ?? refText);
    // Where it is already, under any spelling (a Charliecloud image keeps its directory), else
    // under its storage name.
    target = storage.imagePath(dest ?? refText);
  }
  if (dest !== null) info(`destination:      ${name ?? target}`);
  await pullImage(storage, ref, target, opts, hostArch());
}

export async function push(
  storage: Storage,
  refText: string,
  dest: string | null,
  imageDir: string | null,
  opts: ClientOptions & { xattrs?: boolean },
): Promise<void> {
  let dir: string;
  if (imageDir !== null) {
    dir = resolve(imageDir);
    let ok = false;
    try {
      ok = statSync(dir).isDirectory() && readdirSync(dir).length > 0;
    } catch {
      ok = false;
    }
    if (!ok) throw new ChError(`can't push: not an image directory: ${dir}`, { errno: 2 });
  } else {
    imageName(refText);
    const found = storage.exists() ? storage.find(refText) : null;
    if (found === null) throw new ChError(`can't push: no image in storage: ${refText}`);
    dir = found;
  }
  const destRef = parseRef(dest ?? refText);
  // The layer tarball is made in STORAGE/ulcache, as Charliecloud does; for an image directory
  // outside storage with no storage directory there, in a private temporary directory instead:
  // no storage directory is made just for it.
  let work: string;
  let scratch: string | null = null;
  if (imageDir === null || storage.exists()) {
    storage.init();
    work = storage.uploadDir;
  } else {
    try {
      scratch = mkdtempSync(join(tmpdir(), "ch-image-push."));
    } catch (e) {
      throw new ChError(`can't create a temporary directory in ${tmpdir()}: ${(e as Error).message}`);
    }
    work = scratch;
  }
  try {
    info(`pushing image:   ${refText}`);
    if (dest !== null) info(`destination:     ${dest}`);
    if (imageDir !== null) info(`image path:      ${dir}`);
    await pushImage(work, dir, destRef, { ...opts, xattrs: opts.xattrs ?? false }, hostArch());
    info("done");
  } finally {
    if (scratch !== null) rmSync(scratch, { recursive: true, force: true });
  }
}

/** list REF: local and remote details. */
export async function listOne(storage: Storage, refText: string, opts: ClientOptions): Promise<string> {
  const ref = parseRef(refText);
  const local = storage.exists() ? storage.find(refText) : null;
  return describeImage(ref, local, opts, hostArch());
}

/** list -l: name, architecture, last change. */
export function listLong(storage: Storage): string {
  const names = storage.list();
  const width = Math.max(0, ...names.map((n) => n.length));
  return names
    .map((n) => {
      const dir = posix.join(storage.imgDir, nameToDir(n));
      let when = "";
      try {
        when = statSync(dir)
          .mtime.toISOString()
          .replace(/\.\d+Z$/, "Z");
      } catch {
        when = "?";
      }
      return `${n.padEnd(width)}  ${(localArch(dir) ?? "unknown").padEnd(9)}  ${when}\n`;
    })
    .join("");
}
