// Special files in an image directory (FIFOs, sockets, device files), copied the way GNU cp -a
// and tar treat them, as far as an unprivileged user can:
//   - a FIFO is made again with mkfifo(3) in a copied directory, and is a FIFO member of a
//     tarball or SquashFS image;
//   - a socket is left out with a warning (GNU tar's "socket ignored": it means nothing once
//     its server is gone);
//   - a device file can't be made without privilege (mknod(2) needs CAP_MKNOD): left out of a
//     copied directory with a warning; a tarball or SquashFS image stores it, with a warning
//     that unpacking it needs privilege.
import { chmodSync, constants, cpSync, type Dirent, lstatSync, readdirSync, type Stats, utimesSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { Header, Pax } from "tar";
import { sysError, warn } from "../sys/errors.ts";
import { libc, loadLibc } from "../sys/libc.ts";

export type SpecialKind = "fifo" | "socket" | "char" | "block";

/** What kind of special file st is; null for a regular file, directory or symbolic link. */
export function specialKind(st: Stats): SpecialKind | null {
  if (st.isFIFO()) return "fifo";
  if (st.isSocket()) return "socket";
  if (st.isCharacterDevice()) return "char";
  if (st.isBlockDevice()) return "block";
  return null;
}

function deviceName(kind: SpecialKind, st: Stats): string {
  return `${kind === "char" ? "character" : "block"} device ${major(st.rdev)},${minor(st.rdev)}`;
}

// glibc's gnu_dev_major/minor.
const major = (dev: number) => Number(((BigInt(dev) >> 8n) & 0xfffn) | ((BigInt(dev) >> 32n) & ~0xfffn));
const minor = (dev: number) => Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & ~0xffn));

/** Copies the image directory src to dst (which must not exist), as cp -a does (hard links
 * become copies): FIFOs made again, sockets and device files left out with a warning. */
export async function copyTree(src: string, dst: string): Promise<void> {
  const fifos: [string, Stats][] = [];
  try {
    cpSync(src, dst, {
      recursive: true,
      verbatimSymlinks: true,
      preserveTimestamps: true,
      mode: constants.COPYFILE_FICLONE, // a reflink where the file system has them (XFS, Btrfs)
      filter: (path) => {
        const st = lstatSync(path, { throwIfNoEntry: false });
        const kind = st && specialKind(st);
        if (!st || !kind) return true;
        const rel = relative(src, path);
        if (kind === "fifo") fifos.push([rel, st]);
        else warnLeftOut(rel, st, kind);
        return false;
      },
    });
  } catch (e) {
    throw sysError(`can't copy image: ${src}`, e);
  }
  if (fifos.length === 0) return;
  await loadLibc();
  const dirs = new Map<string, [string, Stats][]>();
  for (const f of fifos) dirs.set(dirname(f[0]), [...(dirs.get(dirname(f[0])) ?? []), f]);
  for (const [dir, inside] of dirs) {
    const parent = join(dst, dir);
    // cp has given the directory its mode, maybe without write permission: lent for a moment.
    const mode = lstatSync(parent).mode & 0o7777;
    try {
      if (!(mode & 0o200)) chmodSync(parent, mode | 0o200);
      for (const [rel, st] of inside) {
        const to = join(dst, rel);
        try {
          makeFifo(to, st);
        } catch (e) {
          throw sysError(`can't make FIFO: ${to}`, e);
        }
      }
    } finally {
      if (!(mode & 0o200)) chmodSync(parent, mode);
    }
    // mkfifo(3) changed the directory's times, which cp had kept.
    const st = lstatSync(join(src, dir));
    utimesSync(parent, st.atime, st.mtime);
  }
}

/** Makes a FIFO at `to` like `st` (mode past the umask, times); libc must be loaded. */
export function makeFifo(to: string, st: Stats): void {
  libc().mkfifo(to, st.mode & 0o7777);
  chmodSync(to, st.mode & 0o7777);
  utimesSync(to, st.atime, st.mtime);
}

/** Warns that a socket or device file (`kind`) is left out of a copied directory. */
export function warnLeftOut(rel: string, st: Stats, kind: Exclude<SpecialKind, "fifo">): void {
  if (kind === "socket") warn(`socket ignored: ${rel}`);
  else warn(`device file ignored (making one needs privilege): ${rel} (${deviceName(kind, st)})`);
}

/** Special files under root, by path relative to it (directories not followed through
 * symbolic links; only they are stat'd). */
export function specialFiles(root: string): [string, Stats, SpecialKind][] {
  const out: [string, Stats, SpecialKind][] = [];
  const walk = (rel: string) => {
    let entries: Dirent[];
    try {
      entries = readdirSync(join(root, rel), { withFileTypes: true });
    } catch (e) {
      throw sysError(`can't read image: ${join(root, rel)}`, e);
    }
    for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else if (e.isFIFO() || e.isSocket() || e.isCharacterDevice() || e.isBlockDevice()) {
        const st = lstatSync(join(root, r));
        const kind = specialKind(st);
        if (kind) out.push([r, st, kind]);
      }
    }
  };
  walk("");
  return out;
}

/** Warns that a device file is kept in an image file (tarball, SquashFS). */
export function warnDeviceKept(rel: string, st: Stats, kind: SpecialKind): void {
  warn(`device file kept: ${rel} (${deviceName(kind, st)}; unpacking it needs privilege)`);
}

/** Tar members for the special files node-tar leaves out (FIFOs, device files; owned by root).
 * They go first in the archive: tar makes their directories as it needs them, and the
 * directories' own members, later, give them their modes (a read-only one too) and times. */
export function specialMembers(files: [string, Stats][], reproducible = false): Buffer {
  const blocks: Buffer[] = [];
  for (const [path, st] of files) {
    const kind = specialKind(st);
    if (kind !== "fifo" && kind !== "char" && kind !== "block") continue;
    const fields = {
      path,
      mode: st.mode & 0o7777,
      uid: 0,
      gid: 0,
      size: 0,
      mtime: st.mtime,
      atime: reproducible ? st.mtime : st.atime,
      ctime: reproducible ? st.mtime : st.ctime,
      type: kind === "fifo" ? "FIFO" : kind === "char" ? "CharacterDevice" : "BlockDevice",
      uname: "",
      gname: "",
      devmaj: kind === "fifo" ? 0 : major(st.rdev),
      devmin: kind === "fifo" ? 0 : minor(st.rdev),
    } as const;
    const block = Buffer.alloc(512);
    // Too long for ustar: a pax header before it carries the whole path, as node-tar writes it.
    if (new Header(fields).encode(block, 0)) blocks.push(new Pax({ path, mtime: st.mtime }).encode());
    blocks.push(block);
  }
  return Buffer.concat(blocks);
}
