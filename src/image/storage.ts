// ch-image storage: where images live and how names map to directories.
import { posix } from "node:path";

/** The storage directory: -s, else $CH_IMAGE_STORAGE, else /var/tmp/$USER.ch. */
export function storageDir(option: string | null, env: Record<string, string | undefined>, user: string): string {
  if (option) return posix.resolve(option);
  if (env.CH_IMAGE_STORAGE) return posix.resolve(env.CH_IMAGE_STORAGE);
  return `/var/tmp/${user}.ch`;
}

/** Directory name of an image reference in storage: "/" becomes "%", ":" becomes "+". */
export function nameToDir(name: string): string {
  return name.replaceAll("/", "%").replaceAll(":", "+");
}

export function dirToName(dir: string): string {
  return dir.replaceAll("%", "/").replaceAll("+", ":");
}

export function imagePath(storage: string, name: string): string {
  return posix.join(storage, "img", nameToDir(name));
}
