// Which image ch-run runs: a name in storage first, then a path (a directory, or a SquashFS
// file by its magic number), with Charliecloud's refusals.
import { realpathSync, statSync } from "node:fs";
import { Storage, validImageName } from "../image/storage.ts";
import { ChError } from "../sys/errors.ts";
import { isSquashFile } from "./squash.ts";

export type Image = { kind: "dir"; root: string } | { kind: "squash"; file: string };

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** Finds the image: a name in storage first (any spelling of its reference: busybox is
 * busybox:latest), then a path. An image is run from a storage directory only if that is safe,
 * i.e. no other user could have put it there. */
export function findImage(image: string, storage: string, write: boolean, unsafe: boolean): Image {
  const byName = validImageName(image) ? new Storage(storage).find(image) : null;
  if (byName !== null && isDirectory(byName)) {
    if (write && !unsafe) throw new ChError(`--write invalid when running by name: ${image}`);
    return { kind: "dir", root: realpathSync(byName) };
  }
  const st = statSync(image, { throwIfNoEntry: false });
  if (!st) throw new ChError(`can't find image: ${image}`, { errno: 2 });
  if (st.isDirectory()) {
    const root = realpathSync(image);
    const img = `${storage}/img/`;
    if (!unsafe && `${root}/`.startsWith(img)) throw new ChError("can't run directory images from storage (hint: run by name)");
    return { kind: "dir", root };
  }
  if (isSquashFile(image)) return { kind: "squash", file: image };
  throw new ChError(`unknown image type: ${image}`);
}
