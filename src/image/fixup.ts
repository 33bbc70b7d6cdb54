// What every image needs for ch-run, created if missing after unpacking: /etc/passwd and
// /etc/group (ch-run binds the host's over them), mount points, and the files ch-run binds.
// As Charliecloud does, only what is missing is created: whatever the image has at one of these
// paths, a symlink included (dangling, e.g. to systemd's resolver, or not), is left as it is
// (ch-run resolves it inside the image). The image is untrusted: nothing is created through a
// symlink.
import { lstatSync, mkdirSync, type Stats, writeFileSync } from "node:fs";
import { join } from "node:path";
import { warn } from "../sys/errors.ts";

const PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP = "root:x:0:\nnogroup:x:65534:\n";

export const MOUNT_DIRS = ["dev", "proc", "sys", "tmp", "home", "etc", "mnt", ...[...Array(10).keys()].map((i) => `mnt/${i}`)];
/** Files ch-run binds host files over. */
export const BIND_FILES = ["etc/hosts", "etc/resolv.conf"];

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
}

/** Whether every directory above rel is a real directory (no symlinks). */
function parentsReal(root: string, rel: string): boolean {
  const parts = rel.split("/").slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const st = lstatOrNull(join(root, ...parts.slice(0, i)));
    if (!st?.isDirectory()) {
      warn(`image fix-up: not creating /${rel}: /${parts.slice(0, i).join("/")} is not a directory`);
      return false;
    }
  }
  return true;
}

function ensureDir(root: string, rel: string): void {
  if (lstatOrNull(join(root, rel)) || !parentsReal(root, rel)) return;
  mkdirSync(join(root, rel), rel === "tmp" ? 0o1777 : 0o755);
}

function ensureFile(root: string, rel: string, content: string): void {
  if (lstatOrNull(join(root, rel)) || !parentsReal(root, rel)) return;
  writeFileSync(join(root, rel), content, { mode: 0o644, flag: "wx" });
}

/** Makes an unpacked image runnable by ch-run. */
export function fixupImage(root: string): void {
  const umask = process.umask(0);
  try {
    for (const d of MOUNT_DIRS) ensureDir(root, d);
    for (const f of BIND_FILES) ensureFile(root, f, "");
    ensureFile(root, "etc/passwd", PASSWD);
    ensureFile(root, "etc/group", GROUP);
  } finally {
    process.umask(umask);
  }
}

/** Top-level entries an image usually has; warns about those missing. */
export function checkImageShape(root: string, what: string): void {
  const missing = ["bin", "etc", "usr"].filter((d) => !lstatOrNull(join(root, d)));
  if (missing.length > 0)
    warn(`${what}: no ${missing.map((d) => `/${d}`).join(", ")} in image; is this really a container image?`);
}
