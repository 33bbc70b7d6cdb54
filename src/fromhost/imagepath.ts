// Paths inside an image directory, as the container will see them: symlinks are followed, an
// absolute one from the image's root. A path that climbs out of the image through ".." (of a
// symlink, or its own) is refused: on the host it would lead outside the image, where
// ch-fromhost must never write.
import { posix } from "node:path";
import type { FileType, HostFs } from "../container/hostfs.ts";
import { ChError } from "../sys/errors.ts";

export interface InImage {
  /** The path in the image with every symlink resolved. */
  path: string;
  /** Where that is on the host. */
  host: string;
  type: FileType | null;
  /** First missing component, when the path does not exist. */
  missing: string | null;
}

const MAX_LINKS = 40;

/** Resolves `path` inside the image at `root`. `what` names the path in error messages. */
export function resolveInImage(root: string, path: string, fs: HostFs, what = path): InImage {
  if (!path.startsWith("/")) throw new ChError(`not an absolute path: ${what}`);
  let rest = path.split("/").filter(Boolean);
  let cur = "/";
  let links = 0;
  let via: string | null = null; // the last symlink followed, for the message
  const outside = () =>
    new ChError(
      via
        ? `refusing ${what}: it resolves outside the image ${root} through symlink ${via}`
        : `refusing ${what}: it climbs outside the image ${root}`,
      { errno: 18 /* EXDEV */ },
    );
  while (rest.length) {
    const comp = rest.shift() as string;
    if (comp === ".") continue;
    if (comp === "..") {
      if (cur === "/") throw outside();
      cur = posix.dirname(cur);
      continue;
    }
    const next = posix.join(cur, comp);
    const host = posix.join(root, next);
    const st = fs.lstat(host);
    if (!st) {
      // The rest does not exist either: lexically, and it must not climb out.
      let full = next;
      for (const c of rest) {
        if (c === "..") {
          if (full === "/") throw outside();
          full = posix.dirname(full);
        } else if (c !== ".") full = posix.join(full, c);
      }
      if (full !== next && !full.startsWith(`${next}/`)) return resolveInImage(root, full, fs, what); // back among existing ones
      return { path: full, host: posix.join(root, full), type: null, missing: next };
    }
    if (st.type === "link") {
      if (++links > MAX_LINKS) throw new ChError(`too many levels of symlinks: ${what}`, { errno: 40 });
      via = next;
      const target = fs.readlink(host);
      if (target.startsWith("/")) cur = "/";
      rest = [...target.split("/").filter(Boolean), ...rest];
      continue;
    }
    if (rest.length && st.type !== "dir")
      throw new ChError(`not a directory in image ${root}: ${next} (in ${what})`, { errno: 20 });
    cur = next;
  }
  const st = fs.lstat(posix.join(root, cur));
  return { path: cur, host: posix.join(root, cur), type: st ? st.type : null, missing: null };
}
