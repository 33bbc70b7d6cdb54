// ch-fromhost: gathers the files to inject (--cmd, --file, --path, --nvidia, --cray-*), plans
// where each goes, injects them all or none, and runs the image's ldconfig.
import { existsSync, readFileSync, realpathSync, statSync } from "node:fs";
import { posix } from "node:path";
import { info, verbose } from "../cli/log.ts";
import { realFs } from "../container/hostfs.ts";
import { forgetBuiltState, Storage, storageDir } from "../image/storage.ts";
import { hostArch } from "../sys/arch.ts";
import { ChError, sysError, warn } from "../sys/errors.ts";
import {
  type CacheEntry,
  findProgram,
  lastLine,
  NVIDIA_BINS,
  nvidiaLibraries,
  parseLdconfigP,
  parseLdd,
  runProgram,
} from "./host.ts";
import { findTarget, imageLd, imageLdconfig, runInImage, type TargetImage } from "./image.ts";
import { resolveInImage } from "./imagepath.ts";
import { inject } from "./inject.ts";
import {
  type HostFacts,
  type ImageFacts,
  imageLibDir,
  imageLibfabricDir,
  type Plan,
  planInjection,
  providerDir,
  type Request,
} from "./plan.ts";

export type Source =
  | { kind: "cmd"; cmd: string; dest: string | null }
  | { kind: "file"; file: string; dest: string | null }
  | { kind: "path"; path: string; dest: string | null }
  | { kind: "nvidia" | "cray-cxi" | "cray-gni"; dest: string | null };

export type PrintWhat = "lib" | "fi" | "cray-fi";

export interface FromhostOptions {
  image: string;
  sources: Source[];
  print: PrintWhat[];
  noLdconfig: boolean;
}

/** The usual library directories, besides those in the ld.so cache. */
const USUAL_LIB_DIRS = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"];

function realOrNull(p: string): string | null {
  try {
    return realpathSync(p);
  } catch {
    return null;
  }
}

/** `ldconfig -p` on the host; $CH_FROMHOST_LD_CACHE names another cache to read (tests, and
 * sites whose driver libraries are listed in a cache of their own). */
export function hostCache(env: Record<string, string | undefined>): CacheEntry[] {
  const ldconfig = findProgram("ldconfig", env.PATH);
  if (!ldconfig) throw new ChError("ldconfig not found on the host (needed to list its libraries)");
  const args = ["-p", ...(env.CH_FROMHOST_LD_CACHE ? ["-C", env.CH_FROMHOST_LD_CACHE] : [])];
  const r = runProgram(ldconfig, args);
  if (r.status !== 0) throw new ChError(`${ldconfig} ${args.join(" ")} failed (exit ${r.status}): ${lastLine(r.stderr)}`);
  return parseLdconfigP(r.stdout);
}

export function realHost(env: Record<string, string | undefined>): HostFacts {
  let libDirs: string[] | null = null;
  return {
    libDirs() {
      if (libDirs === null) {
        const dirs = new Set<string>();
        for (const d of [...USUAL_LIB_DIRS, ...hostCache(env).map((e) => posix.dirname(e.path))]) {
          const r = realOrNull(d);
          if (r) dirs.add(r);
        }
        libDirs = [...dirs];
      }
      return libDirs;
    },
    stat(path) {
      const st = statSync(path, { throwIfNoEntry: false });
      if (!st) return null;
      return { type: st.isFile() ? "file" : st.isDirectory() ? "dir" : "other", mode: st.mode };
    },
    realpath: realOrNull,
    ldd(path) {
      const ldd = findProgram("ldd", env.PATH);
      if (!ldd) return [];
      const r = runProgram(ldd, [path]);
      return r.status === 0 ? parseLdd(r.stdout).found : [];
    },
    env,
    cray: existsSync("/etc/opt/cray/release/cle-release"),
  };
}

/** The NVIDIA driver's files: nvidia-container-cli's list where it exists, else the driver's
 * libraries in the ld.so cache and its programs in $PATH. */
export function nvidiaFiles(env: Record<string, string | undefined>): string[] {
  const cli = findProgram("nvidia-container-cli", env.PATH);
  if (cli) {
    const r = runProgram(cli, ["list", "--binaries", "--libraries"]);
    if (r.status !== 0)
      throw new ChError(`nvidia-container-cli failed (exit ${r.status}); does this host have GPUs?: ${lastLine(r.stderr)}`);
    verbose(`--nvidia: files listed by ${cli}`);
    return lines(r.stdout);
  }
  const libs = nvidiaLibraries(hostCache(env), hostArch(), realOrNull);
  if (!libs.length)
    throw new ChError(
      "--nvidia: no NVIDIA driver libraries found: no nvidia-container-cli, and none in the ld.so cache (ldconfig -p); is the driver installed?",
    );
  const bins: string[] = [];
  for (const b of NVIDIA_BINS) {
    const p = findProgram(b, env.PATH);
    if (p) bins.push(p);
  }
  verbose(`--nvidia: ${libs.length} driver libraries from the ld.so cache, ${bins.length} programs from $PATH`);
  return [...bins, ...libs];
}

function lines(text: string): string[] {
  return text.split("\n").filter((l) => l.trim() !== "");
}

/** The requests the sources make, in order, each with the --dest in effect. */
export function gather(sources: Source[], env: Record<string, string | undefined>, cwd: string): Request[] {
  const reqs: Request[] = [];
  const add = (paths: string[], dest: string | null, origin: string) => {
    for (const p of paths) reqs.push({ path: posix.resolve(cwd, p), dest, origin });
  };
  for (const s of sources) {
    switch (s.kind) {
      case "path":
        add([s.path], s.dest, "--path");
        break;
      case "file": {
        let text: string;
        try {
          text = readFileSync(s.file, "utf8");
        } catch (e) {
          throw sysError(`--file: can't read ${s.file}`, e);
        }
        add(lines(text), s.dest, `--file ${s.file}`);
        break;
      }
      case "cmd": {
        const r = runProgram("/bin/sh", ["-c", s.cmd]);
        if (r.status !== 0)
          throw new ChError(`--cmd: command failed (exit ${r.status}): ${s.cmd}${r.stderr ? `: ${lastLine(r.stderr)}` : ""}`);
        add(lines(r.stdout), s.dest, `--cmd '${s.cmd}'`);
        break;
      }
      case "nvidia":
        add(nvidiaFiles(env), s.dest, "--nvidia");
        break;
      case "cray-cxi":
      case "cray-gni": {
        const v = s.kind === "cray-cxi" ? "CH_FROMHOST_OFI_CXI" : "CH_FROMHOST_OFI_GNI";
        if (env.FI_PROVIDER) warn(`FI_PROVIDER=${env.FI_PROVIDER} is set: it will be the preferred provider at run time`);
        if (!env[v]) throw new ChError(`--${s.kind}: $${v} is not set (the path of Cray's libfabric files)`);
        add((env[v] as string).split(/[\n:]/).filter(Boolean), s.dest, `--${s.kind} ($${v})`);
        break;
      }
    }
  }
  return reqs;
}

function describeCopy(c: Plan["copies"][number]): string {
  return `${c.src} -> ${c.dst}${c.link !== null ? ` (symlink to ${c.link})` : c.inferred ? " (inferred)" : ""}`;
}

export function fromhost(o: FromhostOptions, env: Record<string, string | undefined>, cwd: string, user: string): number {
  const target: TargetImage = findTarget(o.image, storageDir(null, env, user));
  verbose(`image: ${target.root}${target.storage ? ` (in storage ${target.storage})` : ""}`);
  let ld: ReturnType<typeof imageLd> | null = null;
  const img: ImageFacts = {
    root: target.root,
    fs: realFs,
    ld: () => {
      if (ld === null) {
        verbose("asking the image's ldconfig for its library directories");
        ld = imageLd(target, realFs);
      }
      return ld;
    },
  };

  if (o.print.length) {
    // Where files go: the directories as the container sees them, symlinks resolved.
    const out = (dir: string) => process.stdout.write(`${resolveInImage(target.root, dir, realFs).path}\n`);
    for (const p of o.print) {
      if (p === "lib") out(imageLibDir(img.ld()));
      else if (p === "fi") out(providerDir(img.ld()));
      else {
        const d = imageLibfabricDir(img.ld());
        if (!d) throw new ChError("--print-cray-fi: the image has no libfabric (its ldconfig finds none)");
        out(d);
      }
    }
    return 0;
  }
  if (!o.sources.length)
    throw new ChError("nothing to inject: give --cmd, --file, --path, --nvidia, --cray-cxi or --cray-gni (see --help)");

  // Nothing is written before everything is known.
  if (target.storage) {
    new Storage(target.storage).lock();
    forgetBuiltState(target.storage, target.root); // the build cache no longer knows what it holds
  }
  const reqs = gather(o.sources, env, cwd);
  if (!reqs.length) throw new ChError("nothing to inject: the file lists are empty");
  const plan = planInjection(reqs, realHost(env), img, { noLdconfig: o.noLdconfig });
  for (const w of plan.warnings) warn(w);
  for (const l of plan.log) verbose(l);
  const ldconfig = plan.ldconfig ? imageLdconfig(target.root, realFs) : null;
  if (plan.ldconfig && !ldconfig)
    throw new ChError("nothing injected: the image has no ldconfig to update its cache (use --no-ldconfig)");
  for (const d of plan.mkdirs) verbose(`mkdir ${d.path}`);
  for (const c of plan.copies) verbose(describeCopy(c));
  for (const w of plan.writes) verbose(`write ${w.dst}`);

  inject(plan, () => {
    if (!ldconfig) return;
    verbose(`running the image's ldconfig: ${ldconfig}`);
    const r = runInImage(target, [ldconfig], true);
    if (r.status !== 0) throw new ChError(`the image's ldconfig failed (exit ${r.status}): ${lastLine(r.stderr)}`);
    for (const l of lines(r.stderr)) verbose(`ldconfig: ${l}`);
  });
  info(
    `injected ${plan.copies.length} file${plan.copies.length === 1 ? "" : "s"} into ${target.root}${plan.ldconfig ? "; ran ldconfig" : ""}`,
  );
  return 0;
}
