// Converting images between formats. Each conversion goes the shortest way: tarballs unpack
// straight into their destination, directories pack or squash straight from where they are;
// otherwise the image passes through a directory (or tarball) in a temporary directory.
import { lstatSync, mkdtempSync, renameSync, rmSync, type Stats } from "node:fs";
import { join, resolve } from "node:path";
import { info } from "../cli/log.ts";
import { ChError, warn } from "../sys/errors.ts";
import type { Format } from "./formats.ts";
import { cleanLeftovers, forceRemove, installImage, partialPath } from "./install.ts";
import { checkTarOutput, packImage } from "./pack.ts";
import { copyTree, specialFiles, warnDeviceKept } from "./special.ts";
import type { Storage } from "./storage.ts";
import { requireCommand, runCommand } from "./tools.ts";
import { type UnpackOptions, unpackImage } from "./unpack.ts";
import { copyXattrs, loadXattrs, XattrReport } from "./xattrs.ts";

export interface Endpoint {
  fmt: Format;
  desc: string;
}

export interface ConvertContext {
  /** Storage for the ch-image format, initialized and (for output) locked by the caller. */
  storage: Storage | null;
  /** Where temporary directories go. */
  tmp: string;
  noClobber: boolean;
  /** Keep extended attributes (--xattrs). */
  xattrs?: boolean;
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
}

function storageOf(ctx: ConvertContext): Storage {
  if (!ctx.storage) throw new ChError("internal: no storage for ch-image format");
  return ctx.storage;
}

/** The directory an input image already is, if it is one. */
function directoryOf(src: Endpoint, ctx: ConvertContext): string | null {
  if (src.fmt === "dir") return src.desc;
  if (src.fmt === "ch-image") {
    const s = storageOf(ctx);
    if (!s.has(src.desc)) throw new ChError(`no such image in storage: ${src.desc}`);
    return s.imagePath(src.desc);
  }
  return null;
}

function checkFileOut(out: string, ctx: ConvertContext): void {
  const st = lstatOrNull(out);
  if (!st) return;
  if (ctx.noClobber) throw new ChError(`exists, not replacing per --no-clobber: ${out}`);
  if (st.isDirectory()) throw new ChError(`exists and is a directory, not replacing: ${out}`);
}

/** dir → SquashFS, atomically. */
export async function squashImage(dir: string, out: string, ctx: ConvertContext): Promise<void> {
  const exe = requireCommand("mksquashfs", "to make SquashFS images", "install squashfs-tools");
  out = resolve(out);
  checkFileOut(out, ctx);
  cleanLeftovers(out);
  const partial = partialPath(out);
  // Special files as tar has them: FIFOs and device files kept, sockets left out. They are left
  // out by name after -e, which mksquashfs takes literally; its exclude file (-ef) is not: it
  // strips leading spaces and skips "#" lines, so a socket " x" there would leave out file "x".
  const sockets: string[] = [];
  for (const [rel, st, kind] of specialFiles(dir)) {
    if (kind === "fifo") continue;
    if (kind !== "socket") warnDeviceKept(rel, st, kind);
    else {
      warn(`socket ignored: ${rel}`);
      sockets.push(rel);
    }
  }
  try {
    const xattrs = ctx.xattrs ? "-xattrs" : "-no-xattrs";
    const args = [dir, partial, "-noappend", "-all-root", xattrs, "-no-progress", "-quiet"];
    // -e takes the rest of the command line: last.
    if (sockets.length) args.push("-e", ...sockets);
    await runCommand(exe, args, true);
    renameSync(partial, out);
  } catch (e) {
    rmSync(partial, { force: true });
    throw e;
  }
}

/** SquashFS → dir, atomically. */
export async function unsquashImage(sqfs: string, target: string, opts: UnpackOptions): Promise<void> {
  const exe = requireCommand("unsquashfs", "to unpack SquashFS images", "install squashfs-tools");
  await installImage(
    target,
    async (partial) => {
      const root = join(partial, "img");
      // Only user.* (others fail unprivileged, and security.capability is never wanted).
      const xattrs = opts.xattrs ? "-user-xattrs" : "-no-xattrs";
      await runCommand(exe, [xattrs, "-quiet", "-no-progress", "-d", root, sqfs], true);
      return root;
    },
    opts,
  );
}

/** dir → dir, atomically (hard links become copies; FIFOs made again, sockets and device files
 * left out with a warning); with xattrs, user.* attributes kept. */
export async function copyImage(src: string, target: string, opts: UnpackOptions): Promise<void> {
  if (!lstatOrNull(src)?.isDirectory()) throw new ChError(`not a directory: ${src}`);
  if (opts.xattrs) await loadXattrs();
  await installImage(
    target,
    async (partial) => {
      const root = join(partial, "img");
      await copyTree(src, root);
      if (opts.xattrs) {
        const report = new XattrReport();
        copyXattrs(src, root, report);
        report.report(src);
      }
      return root;
    },
    opts,
  );
}

async function dockerExport(tool: "docker" | "podman", ref: string, tarball: string): Promise<void> {
  const exe = requireCommand(tool, `for the ${tool} image format`);
  const id = (await runCommand(exe, ["create", ref, "/bin/true"])).trim();
  try {
    await runCommand(exe, ["export", "-o", tarball, id]);
  } finally {
    await runCommand(exe, ["rm", id]).catch(() => "");
  }
}

async function dockerImport(tool: "docker" | "podman", tarball: string, ref: string): Promise<void> {
  const exe = requireCommand(tool, `for the ${tool} image format`);
  await runCommand(exe, ["import", tarball, ref], true);
}

/** Runs conversions that need intermediates inside a temporary directory, removed at the end. */
class Scratch {
  private dir: string | null = null;
  private readonly base: string;

  constructor(base: string) {
    this.base = base;
  }

  path(name: string): string {
    if (!this.dir) {
      try {
        this.dir = mkdtempSync(join(this.base, "ch-convert."));
      } catch (e) {
        throw new ChError(`can't create temporary directory in ${this.base}: ${(e as Error).message}`);
      }
    }
    return join(this.dir, name);
  }

  cleanup(): void {
    if (this.dir) forceRemove(this.dir);
  }
}

/** The input as a directory: itself, or unpacked into scratch space. */
async function asDir(src: Endpoint, ctx: ConvertContext, scratch: Scratch): Promise<string> {
  const dir = directoryOf(src, ctx);
  if (dir) return dir;
  const tmp = scratch.path("img");
  await toDirectory(src, tmp, ctx, scratch, { xattrs: ctx.xattrs });
  return tmp;
}

/** The input as a tarball: itself, or packed into scratch space. */
async function asTar(src: Endpoint, ctx: ConvertContext, scratch: Scratch): Promise<string> {
  if (src.fmt === "tar") return src.desc;
  if (src.fmt === "docker" || src.fmt === "podman") {
    const tar = scratch.path("export.tar");
    await dockerExport(src.fmt, src.desc, tar);
    return tar;
  }
  const tar = scratch.path("img.tar");
  await packImage(await asDir(src, ctx, scratch), tar, { xattrs: ctx.xattrs });
  return tar;
}

async function toDirectory(src: Endpoint, target: string, ctx: ConvertContext, scratch: Scratch, opts: UnpackOptions) {
  const dir = directoryOf(src, ctx);
  if (dir) await copyImage(dir, target, opts);
  else if (src.fmt === "squash") await unsquashImage(src.desc, target, opts);
  else await unpackImage(await asTar(src, ctx, scratch), target, opts);
}

/** Converts src to dst; formats must differ. */
export async function convert(src: Endpoint, dst: Endpoint, ctx: ConvertContext): Promise<void> {
  if (src.fmt === dst.fmt) throw new ChError(`input and output formats must be different: ${src.fmt}`);
  const scratch = new Scratch(ctx.tmp);
  const opts: UnpackOptions = { noClobber: ctx.noClobber, xattrs: ctx.xattrs };
  try {
    switch (dst.fmt) {
      case "dir":
        await toDirectory(src, dst.desc, ctx, scratch, opts);
        break;
      case "ch-image":
        await toDirectory(src, storageOf(ctx).imagePath(dst.desc), ctx, scratch, opts);
        break;
      case "tar":
        checkTarOutput(dst.desc);
        checkFileOut(resolve(dst.desc), ctx);
        await packImage(await asDir(src, ctx, scratch), dst.desc, { xattrs: ctx.xattrs });
        break;
      case "squash":
        await squashImage(await asDir(src, ctx, scratch), dst.desc, ctx);
        break;
      case "docker":
      case "podman":
        await dockerImport(dst.fmt, await asTar(src, ctx, scratch), dst.desc);
        break;
    }
  } finally {
    scratch.cleanup();
  }
  info(`${dst.fmt === "ch-image" ? "image" : dst.fmt} ${dst.desc}: done`);
}
