// Image directory to tarball: node-tar's Pack, compressed by what the output's name says,
// written atomically (OUT.partial-HOST.PID, renamed at the end). Members are relative
// ("./bin/..."), owned by root, hard links kept; FIFOs and device files as such, sockets left
// out (special.ts). Progress (bytes packed, entries) on a terminal.
import { spawn } from "node:child_process";
import { closeSync, createWriteStream, openSync, readdirSync, renameSync, rmSync, Stats } from "node:fs";
import { basename, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { createGzip, createZstdCompress } from "node:zlib";
import { create, type ReadEntry } from "tar";
import { startProgress } from "../cli/progress.ts";
import { ChError, sysError, warn } from "../sys/errors.ts";
import { cleanLeftovers, partialPath } from "./install.ts";
import { specialFiles, specialKind, specialMembers, warnDeviceKept } from "./special.ts";
import { requireCommand } from "./tools.ts";
import type { Compression } from "./unpack.ts";
import { loadXattrs, withXattrs } from "./xattrs.ts";

/** Compressions we write tarballs in. */
export type WritableCompression = Extract<Compression, "none" | "gzip" | "xz" | "zstd" | "bzip2">;

/** Compression implied by a tarball's name, if it is one we write; else null. */
export function tarCompression(name: string): WritableCompression | null {
  const rules: [RegExp, WritableCompression][] = [
    [/\.(tar\.gz|tgz|tar\.gzip)$/, "gzip"],
    [/\.(tar\.xz|txz)$/, "xz"],
    [/\.(tar\.zst|tzst|tar\.zstd)$/, "zstd"],
    [/\.(tar\.bz2|tbz2?|tar\.bzip2)$/, "bzip2"],
    [/\.tar$/, "none"],
  ];
  for (const [re, c] of rules) if (re.test(name)) return c;
  return null;
}

/** Whether name is a tarball's: one we write, or any Charliecloud infers as a tarball (*.tar,
 * *.t?z, *.tar.?, *.tar.??, e.g. .tar.Z, .tar.lz). */
export function isTarName(name: string): boolean {
  return tarCompression(name) !== null || /\.(tar|t[^/]z|tar\.[^/]{1,2})$/.test(name);
}

/** Errors if out names a tarball in a compression we can't write (before any work is done). */
export function checkTarOutput(out: string): void {
  if (isTarName(out) && tarCompression(out) === null)
    throw new ChError(
      `can't write tarball ${out}: unsupported compression for output; use .tar, .tar.gz, .tgz, .tar.xz, .tar.zst or .tar.bz2`,
    );
}

async function compressChild(tool: string, pack: AsyncIterable<Buffer>, partial: string): Promise<void> {
  const exe = requireCommand(tool, `to write ${tool} tarballs`, "or write another kind of tarball");
  const fd = openSync(partial, "w", 0o644);
  const child = spawn(exe, ["-c"], { stdio: ["pipe", fd, "inherit"] });
  closeSync(fd);
  const exited = new Promise<number | null>((res) => child.on("close", (code) => res(code)));
  if (!child.stdin) throw new ChError(`can't run ${tool}`);
  await pipeline(pack, child.stdin);
  const code = await exited;
  if (code !== 0) throw new ChError(`${tool} failed (exit ${code}) writing ${partial}`);
}

export interface PackOptions {
  /** Write the user.* extended attributes of each file as SCHILY.xattr pax records. */
  xattrs?: boolean;
  /** Write access and change times as the modification time: the same files give the same tarball (push). */
  reproducible?: boolean;
  /** Paths relative to the image root left out, with what is below them. */
  omit?: string[];
}

async function* after(first: Buffer, rest: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  if (first.length) yield first;
  yield* rest;
}

/** Writes the image directory dir as the tarball out. */
export async function packImage(dir: string, out: string, opts: PackOptions = {}): Promise<void> {
  out = resolve(out);
  checkTarOutput(out);
  const compression = tarCompression(out) ?? "gzip";
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (e) {
    throw sysError(`can't read image: ${dir}`, e);
  }
  cleanLeftovers(out);
  const partial = partialPath(out);
  let entries = 0;
  if (opts.xattrs) await loadXattrs();
  // FIFOs and device files, which node-tar leaves out: first in the archive (special.ts).
  const omitted = (rel: string) => (opts.omit ?? []).some((o) => rel === o || rel.startsWith(`${o}/`));
  const specials: [string, Stats][] = [];
  for (const [rel, st, kind] of specialFiles(dir)) {
    if (omitted(rel)) continue;
    if (kind === "socket") warn(`socket ignored: ${rel}`);
    else {
      if (kind !== "fifo") warnDeviceKept(rel, st, kind);
      specials.push([`./${rel}`, st]);
    }
  }
  const created = create(
    {
      cwd: dir,
      filter: (p: string, st: Stats | ReadEntry) => !omitted(p.replace(/^\.\//, "")) && !(st instanceof Stats && specialKind(st)),
      onWriteEntry: (e) => {
        entries++;
        if (e.stat) {
          e.stat.uid = 0;
          e.stat.gid = 0;
          if (opts.reproducible) {
            e.stat.atime = e.stat.mtime;
            e.stat.ctime = e.stat.mtime;
          }
        }
      },
    },
    names.map((n) => `./${n}`),
  ) as unknown as AsyncIterable<Buffer>;
  const whole = after(specialMembers(specials, opts.reproducible), created);
  const packed = opts.xattrs ? withXattrs(whole, dir) : whole;
  const progress = startProgress(`packing ${basename(out)}`);
  async function* counted(): AsyncGenerator<Buffer> {
    let bytes = 0;
    for await (const chunk of packed) {
      bytes += chunk.length;
      progress.update(bytes, entries);
      yield chunk;
    }
  }
  const pack = counted();
  try {
    if (compression === "xz" || compression === "bzip2") await compressChild(compression, pack, partial);
    else {
      const file = createWriteStream(partial, { mode: 0o644 });
      if (compression === "none") await pipeline(pack, file);
      else await pipeline(pack, compression === "gzip" ? createGzip() : createZstdCompress(), file);
    }
    progress.end();
    renameSync(partial, out);
  } catch (e) {
    progress.end();
    rmSync(partial, { force: true });
    if (e instanceof ChError) throw e;
    throw sysError(`can't write tarball: ${out}`, e);
  }
}
