// What ch-fromhost learns from the host and from the image's own tools: the output of
// ldconfig -p, ldconfig -Nv and ldd, parsed here (pure functions), and the programs that print
// them, run through a small interface that tests replace.
import { spawnSync } from "node:child_process";
import { posix } from "node:path";
import { ChError } from "../sys/errors.ts";
import { findExecutable } from "../sys/which.ts";

export interface CacheEntry {
  /** The name the dynamic linker looks up (a soname, or a development link's name). */
  name: string;
  /** ldconfig's flags, e.g. "libc6,x86-64". */
  flags: string;
  path: string;
}

/** `ldconfig -p`: the libraries in the ld.so cache. */
export function parseLdconfigP(text: string): CacheEntry[] {
  const out: CacheEntry[] = [];
  for (const m of text.matchAll(/^\s+(\S+) \(([^)]*)\)(?: OS ABI: [^=]*)? => (\/.*)$/gm))
    out.push({ name: m[1], flags: m[2], path: m[3] });
  return out;
}

/** Whether a cache entry is for this architecture (ldconfig -p lists 32-bit libraries too). */
export function entryForArch(e: CacheEntry, arch: string): boolean {
  const flags = e.flags.split(",");
  if (arch === "x64") return flags.includes("x86-64");
  if (arch === "arm64") return flags.includes("AArch64");
  return true;
}

export interface LdDir {
  /** A directory the image's ldconfig searches, as it names it. */
  dir: string;
  /** The library names it found there (sonames, as links it would make). */
  libs: string[];
}

/** `ldconfig -Nv`: the directories searched, in order, and the libraries in each. */
export function parseLdconfigV(text: string): LdDir[] {
  const dirs: LdDir[] = [];
  for (const line of text.split("\n")) {
    const d = /^(\/[^\t:]*):(?: \(from .*\))?$/.exec(line);
    if (d) {
      dirs.push({ dir: d[1].replace(/\/+$/, "") || "/", libs: [] });
      continue;
    }
    const l = /^\t(\S+) -> /.exec(line);
    if (l && dirs.length) dirs[dirs.length - 1].libs.push(l[1]);
  }
  return dirs;
}

/** `ldd FILE`: the paths of the libraries it loads (those found), and the names not found. */
export function parseLdd(text: string): { found: string[]; missing: string[] } {
  const found: string[] = [];
  const missing: string[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*(\S+) => (\/\S*) \(0x/.exec(line);
    if (m) found.push(m[2]);
    const n = /^\s*(\S+) => not found/.exec(line);
    if (n) missing.push(n[1]);
  }
  return { found, missing };
}

/** Whether a file name is a shared library's: NAME.so, or NAME.so.VERSION. */
export function isSharedLibrary(name: string): boolean {
  return /\.so(\.[0-9][0-9A-Za-z._-]*)?$/.test(name);
}

/** A libfabric provider: NAME-fi.so (libfabric loads these from its provider directory). */
export function isProvider(name: string): boolean {
  return /-fi\.so$/.test(name);
}

export function isLibfabric(name: string): boolean {
  return /^libfabric\.so(\.|$)/.test(name);
}

/** Whether a path is in a bin or sbin directory (an executable, put in /usr/bin). */
export function inBinDir(path: string): boolean {
  return posix
    .dirname(path)
    .split("/")
    .some((c) => c === "bin" || c === "sbin");
}

// The NVIDIA driver's user-space files, as libnvidia-container lists them (utility, compute,
// video, graphics): library base names (before .so), and programs.
export const NVIDIA_LIBS = [
  "libnvidia-ml",
  "libnvidia-cfg",
  "libnvidia-nscq",
  "libcuda",
  "libcudadebugger",
  "libnvidia-opencl",
  "libnvidia-gpucomp",
  "libnvidia-ptxjitcompiler",
  "libnvidia-fatbinaryloader",
  "libnvidia-allocator",
  "libnvidia-compiler",
  "libnvidia-pkcs11",
  "libnvidia-pkcs11-openssl3",
  "libnvidia-nvvm",
  "libnvidia-ngx",
  "libvdpau_nvidia",
  "libnvidia-encode",
  "libnvidia-opticalflow",
  "libnvcuvid",
  "libnvidia-eglcore",
  "libnvidia-glcore",
  "libnvidia-tls",
  "libnvidia-glsi",
  "libnvidia-fbc",
  "libnvidia-ifr",
  "libnvidia-rtcore",
  "libnvoptix",
  "libGLX_nvidia",
  "libEGL_nvidia",
  "libGLESv2_nvidia",
  "libGLESv1_CM_nvidia",
  "libnvidia-glvkspirv",
  "libnvidia-cbl",
];

export const NVIDIA_BINS = [
  "nvidia-smi",
  "nvidia-debugdump",
  "nvidia-persistenced",
  "nv-fabricmanager",
  "nvidia-cuda-mps-control",
  "nvidia-cuda-mps-server",
];

/** The driver's files among the ld.so cache's entries: the real files (links resolved by
 * `realpath`), each once. */
export function nvidiaLibraries(entries: CacheEntry[], arch: string, realpath: (p: string) => string | null): string[] {
  const names = new Set(NVIDIA_LIBS);
  const out = new Set<string>();
  for (const e of entries) {
    const base = e.name.replace(/\.so(\..*)?$/, "");
    if (!names.has(base) || !entryForArch(e, arch)) continue;
    const real = realpath(e.path);
    if (real) out.add(real);
  }
  return [...out];
}

// ---- Running host programs ----

export interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion (no shell), with its output. */
export function runProgram(file: string, args: string[], opts: { argv0?: string; env?: NodeJS.ProcessEnv } = {}): Ran {
  const r = spawnSync(file, args, {
    encoding: "utf8",
    maxBuffer: 256 << 20,
    stdio: ["ignore", "pipe", "pipe"],
    argv0: opts.argv0,
    env: opts.env ?? process.env,
  });
  if (r.error)
    throw new ChError(`can't run ${file}: ${r.error.message}`, {
      errno: Math.abs((r.error as NodeJS.ErrnoException).errno ?? 0),
    });
  return { status: r.status ?? (r.signal ? 128 : null), stdout: r.stdout, stderr: r.stderr };
}

/** The last non-empty line of a program's stderr, for error messages. */
export function lastLine(text: string): string {
  return text.trim().split("\n").filter(Boolean).pop() ?? "";
}

/** An executable found in PATH (and the sbin directories, where ldconfig lives), or null. */
export function findProgram(name: string, path = process.env.PATH ?? ""): string | null {
  return findExecutable(name, path, ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]);
}
