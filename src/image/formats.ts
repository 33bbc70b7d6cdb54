// Image formats of ch-convert, and inferring them from descriptors the way Charliecloud does:
// by name, so that outputs that don't exist yet infer the same way.
//   1. *.sqfs, *.squash, *.squashfs: squash
//   2. *.tar, *.t?z, *.tar.?, *.tar.?? (Charliecloud's globs), *.tar.zst, *.tar.bz2, ...: tar
//   3. a path: absolute, ./ or ../, ending in /, or an existing directory: dir
//   4. otherwise an image reference: ch-image (an input must be in storage)
import { isTarName } from "./pack.ts";

export const FORMATS = ["ch-image", "dir", "docker", "podman", "squash", "tar"] as const;
export type Format = (typeof FORMATS)[number];

export function isFormat(s: string): s is Format {
  return (FORMATS as readonly string[]).includes(s);
}

export function isSquashName(name: string): boolean {
  return /\.(sqfs|squash|squashfs)$/.test(name);
}

/** Facts about the host that inference needs, injected so that it stays pure. */
export interface InferFacts {
  isDir: (path: string) => boolean;
  inStorage: (name: string) => boolean;
}

/** Format of an input or output descriptor, or an explanation of why none can be inferred. */
export function inferFormat(desc: string, input: boolean, facts: InferFacts): Format | { error: string } {
  if (isSquashName(desc)) return "squash";
  if (isTarName(desc)) return "tar";
  if (/^(\/|\.\/|\.\.\/)/.test(desc) || desc.endsWith("/") || desc === "." || desc === ".." || facts.isDir(desc)) return "dir";
  if (!input || facts.inStorage(desc)) return "ch-image";
  return {
    error: `can't infer format of ${desc}: not a tarball, SquashFS or directory name, nor an image in ch-image storage; use -i`,
  };
}
