// The registry subcommands of ch-image (pull, push, list REF), from parsed arguments.
import { readdirSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { info } from "../cli/log.ts";
import type { Storage } from "../image/storage.ts";
import { validImageName } from "../image/storage.ts";
import { ChError } from "../sys/errors.ts";
import { describeImage, localArch } from "./list.ts";
import { hostArch } from "./manifest.ts";
import { type ClientOptions, type PullOptions, pullImage } from "./pull.ts";
import { pushImage } from "./push.ts";
import { parseRef, refString, storageName } from "./reference.ts";

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
  if (dest !== null && isPath(dest)) target = resolve(dest);
  else {
    name = dest === null ? storageName(ref) : storageName(parseRef(dest));
    if (!validImageName(name)) throw new ChError(`invalid image name: ${name}`);
    target = storage.imagePath(name);
  }
  storage.init();
  storage.lock();
  if (name !== null && name !== refString(ref)) info(`destination:      ${name}`);
  else if (name === null) info(`destination:      ${target}`);
  await pullImage(storage, ref, target, opts, hostArch());
}

export async function push(
  storage: Storage,
  refText: string,
  dest: string | null,
  imageDir: string | null,
  opts: ClientOptions,
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
    if (!validImageName(refText)) throw new ChError(`invalid image name: ${refText}`);
    storage.init();
    if (!storage.has(refText)) throw new ChError(`can't push: no image in storage: ${refText}`);
    dir = storage.imagePath(refText);
  }
  const destRef = parseRef(dest ?? refText);
  storage.init();
  storage.lock();
  info(`pushing image:   ${refText}`);
  if (dest !== null) info(`destination:     ${dest}`);
  if (imageDir !== null) info(`image path:      ${dir}`);
  await pushImage(storage, dir, destRef, opts, hostArch());
  info("done");
}

/** list REF: local and remote details. */
export async function listOne(storage: Storage, refText: string, opts: ClientOptions): Promise<string> {
  storage.init();
  const local = validImageName(refText) && storage.has(refText) ? storage.imagePath(refText) : null;
  let ref: ReturnType<typeof parseRef>;
  try {
    ref = parseRef(refText);
  } catch (e) {
    if (!local) throw e;
    return `details of image:    ${refText}\nin local storage:    yes${localArch(local) ? ` (${localArch(local)})` : ""}\n`;
  }
  return describeImage(ref, local, opts, hostArch());
}

/** list -l: name, architecture, last change. */
export function listLong(storage: Storage): string {
  const names = storage.list();
  const width = Math.max(0, ...names.map((n) => n.length));
  return names
    .map((n) => {
      const dir = storage.imagePath(n);
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
