// ch-fromhost's plan: which host file goes where in the image, worked out completely (every
// source checked, every destination resolved inside the image) before anything is written. A
// pure function of the requests, the host's facts and the image's; inject.ts carries it out.
//
// Where files go, unless --dest says:
//   - shared libraries (NAME.so, NAME.so.N): the image's library directory, the one where its
//     ldconfig finds libc; a library in a subdirectory of a host library directory keeps that
//     subdirectory (plugin directories such as OpenMPI's), and the image's ldconfig is told
//     about it (/etc/ld.so.conf.d/ch-fromhost.conf) when it is a library others link to;
//   - libfabric providers (NAME-fi.so): the provider directory beside the image's libfabric
//     (LIBDIR/libfabric, libfabric's default provider path); the directories of the libraries
//     they load go into /etc/ld.so.conf.d/ch-ofi.conf when the image's ldconfig does not search
//     them (Cray's, bind-mounted by ch-run at run time);
//   - Cray's libfabric (linked with libcxi): over the image's libfabric, with the libraries it
//     loads that the image lacks;
//   - files in a bin or sbin directory: /usr/bin;
//   - anything else needs --dest.
import { posix } from "node:path";
import { missingDirs } from "../container/binds.ts";
import type { HostFs } from "../container/hostfs.ts";
import { ChError } from "../sys/errors.ts";
import { inBinDir, isLibfabric, isProvider, isSharedLibrary, type LdDir } from "./host.ts";
import { type InImage, resolveInImage } from "./imagepath.ts";

export interface Request {
  /** The host path as listed (absolute). */
  path: string;
  /** The --dest in effect for it, or null to infer one. */
  dest: string | null;
  /** Where it was listed, for messages: "--path", "--cmd 'dpkg -L foo'", ... */
  origin: string;
}

export type Kind = "exe" | "lib" | "provider" | "cray-libfabric" | "other";

export interface HostFacts {
  /** The host's library directories (real paths): the ld.so cache's, and the usual ones. */
  libDirs(): string[];
  /** stat(2), following symlinks. */
  stat(path: string): { type: "file" | "dir" | "other"; mode: number } | null;
  realpath(path: string): string | null;
  /** The libraries a file loads (ldd), as host paths. */
  ldd(path: string): string[];
  env: Record<string, string | undefined>;
  /** A Cray system: the mount points ch-run binds Cray's directories to are made. */
  cray: boolean;
}

export interface ImageFacts {
  /** The image directory (real path). */
  root: string;
  fs: HostFs;
  /** The image's ldconfig -Nv, asked only when needed; throws a ChError if it can't be had. */
  ld(): LdDir[];
}

export interface Copy {
  /** The file to read on the host (symlinks dereferenced by reading it). */
  src: string;
  /** Destination in the image, every symlink resolved. */
  dst: string;
  /** The same on the host. */
  host: string;
  /** Permission bits to give it (setuid and setgid dropped, as cp does for another owner). */
  mode: number;
  kind: Kind;
  inferred: boolean;
  /** Instead of a copy, a symlink to this file beside it: the listed file was a link to another
   * file injected into the same directory (a library's soname link, which ldconfig would make). */
  link: string | null;
}

export interface Write {
  dst: string;
  host: string;
  content: string;
}

export interface Plan {
  copies: Copy[];
  /** Directories to make, outermost first (image path, host path). */
  mkdirs: { path: string; host: string }[];
  writes: Write[];
  /** Whether the image's ldconfig runs afterwards. */
  ldconfig: boolean;
  warnings: string[];
  /** Lines for -v. */
  log: string[];
}

export interface PlanOptions {
  noLdconfig: boolean;
}

/** Mount points of Cray's directories that ch-run binds when the image has them. */
export const CRAY_MOUNT_POINTS = [
  "/var/lib/hugetlbfs",
  "/var/opt/cray/alps/spool",
  "/opt/cray/wlm_detect",
  "/etc/opt/cray/wlm_detect",
  "/opt/cray/udreg",
  "/opt/cray/xpmem",
  "/opt/cray/ugni",
  "/opt/cray/alps",
  "/var/spool/slurmd",
];

export const LD_CONF_INCLUDE = "include /etc/ld.so.conf.d/*.conf";
const LIB_CONF = "/etc/ld.so.conf.d/ch-fromhost.conf";
const OFI_CONF = "/etc/ld.so.conf.d/ch-ofi.conf";

/** The image's library directory, where its ldconfig finds libc (else the first directory
 * with libraries in it). */
export function imageLibDir(ld: LdDir[]): string {
  const d = ld.find((x) => x.libs.some((l) => /^libc\.so\.\d+$/.test(l))) ?? ld.find((x) => x.libs.length > 0);
  if (!d) throw new ChError("can't find the image's library directory: its ldconfig -Nv lists no libraries (use --dest)");
  return d.dir;
}

/** The directory of the image's libfabric, or null. */
export function imageLibfabricDir(ld: LdDir[]): string | null {
  return ld.find((x) => x.libs.some(isLibfabric))?.dir ?? null;
}

/** Where libfabric providers go: libfabric's default provider directory, beside it. */
export function providerDir(ld: LdDir[]): string {
  const d = imageLibfabricDir(ld);
  if (!d) throw new ChError("can't place libfabric providers: the image has no libfabric (its ldconfig finds none; use --dest)");
  return posix.join(d, "libfabric");
}

/** The deepest host library directory that holds `dir` (a real path), and the rest of it. */
export function underLibDir(dir: string, libDirs: string[]): string | null {
  let best: string | null = null;
  for (const d of libDirs) if ((dir === d || dir.startsWith(`${d}/`)) && (best === null || d.length > best.length)) best = d;
  return best === null ? null : posix.relative(best, dir);
}

class Problems {
  readonly list: string[] = [];
  add(s: string): void {
    this.list.push(s);
  }
  throwIfAny(): void {
    if (!this.list.length) return;
    const more = this.list.length > 3 ? `; and ${this.list.length - 3} more` : "";
    throw new ChError(`nothing injected: ${this.list.slice(0, 3).join("; ")}${more}`);
  }
}

export function planInjection(reqs: Request[], host: HostFacts, img: ImageFacts, o: PlanOptions): Plan {
  const problems = new Problems();
  const warnings: string[] = [];
  const log: string[] = [];
  let ldCache: LdDir[] | null = null;
  const ld = () => {
    ldCache ??= img.ld();
    return ldCache;
  };
  /** The image's library search directories, resolved in the image. */
  const searched = () => new Set(ld().map((d) => resolveQuiet(img, d.dir)));

  // 1. Sources: what each is and where it goes (an image directory, before resolving).
  interface Want {
    src: string;
    listed: string;
    dir: string;
    name: string;
    mode: number;
    kind: Kind;
    inferred: boolean;
  }
  const wants: Want[] = [];
  const seen = new Set<string>();
  const ofiDirs: string[] = [];
  for (const r of reqs) {
    const key = `${r.path}\0${r.dest ?? ""}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const st = host.stat(r.path);
    if (!st) {
      problems.add(`not found: ${r.path} (from ${r.origin})`);
      continue;
    }
    if (st.type === "dir") {
      if (r.origin === "--path") problems.add(`a directory, not a file: ${r.path} (list its files with --cmd or --file)`);
      else log.push(`skipping directory ${r.path}`);
      continue;
    }
    if (st.type !== "file") {
      problems.add(`not a regular file: ${r.path}`);
      continue;
    }
    const name = posix.basename(r.path);
    const mode = st.mode & 0o1777;
    let kind: Kind = isProvider(name) ? "provider" : isSharedLibrary(name) ? "lib" : inBinDir(r.path) ? "exe" : "other";
    const deps = kind === "provider" || isLibfabric(name) ? host.ldd(r.path) : [];
    if (kind === "lib" && isLibfabric(name) && deps.some((d) => /^libcxi\.so/.test(posix.basename(d)))) kind = "cray-libfabric";
    if (kind === "provider") {
      for (const d of deps) {
        const dir = posix.dirname(host.realpath(d) ?? d);
        if (!isLibfabric(posix.basename(d)) && !ofiDirs.includes(dir)) ofiDirs.push(dir);
      }
    }
    if (r.dest !== null) {
      wants.push({ src: r.path, listed: r.path, dir: r.dest, name, mode, kind, inferred: false });
      continue;
    }
    try {
      switch (kind) {
        case "exe":
          wants.push({ src: r.path, listed: r.path, dir: "/usr/bin", name, mode, kind, inferred: true });
          break;
        case "lib": {
          const realDir = host.realpath(posix.dirname(r.path)) ?? posix.dirname(r.path);
          const sub = underLibDir(realDir, host.libDirs()) ?? "";
          wants.push({ src: r.path, listed: r.path, dir: posix.join(imageLibDir(ld()), sub), name, mode, kind, inferred: true });
          break;
        }
        case "provider": {
          if (host.env.FI_PROVIDER_PATH)
            throw new ChError(
              `FI_PROVIDER_PATH is set (${host.env.FI_PROVIDER_PATH}): libfabric will look there; use --dest for ${r.path}`,
            );
          wants.push({ src: r.path, listed: r.path, dir: providerDir(ld()), name, mode, kind, inferred: true });
          break;
        }
        case "cray-libfabric": {
          const dir = imageLibfabricDir(ld());
          if (!dir) throw new ChError(`can't replace the image's libfabric with ${r.path}: the image has none`);
          // Over the image's own soname, which its programs load.
          const soname = ld()
            .find((d) => d.dir === dir)
            ?.libs.find((l) => /^libfabric\.so\.\d+$/.test(l));
          wants.push({ src: r.path, listed: r.path, dir, name: soname ?? name, mode, kind, inferred: true });
          // What it loads that the image lacks.
          const have = new Set(ld().flatMap((d) => d.libs));
          for (const dep of deps) {
            const base = posix.basename(dep);
            if (have.has(base) || isLibfabric(base) || /^(libc|libm|libdl|libpthread|librt|ld-linux.*)\.so/.test(base)) continue;
            const real = host.realpath(dep) ?? dep;
            const dst = host.stat(real);
            if (dst?.type === "file")
              wants.push({
                src: real,
                listed: dep,
                dir: imageLibDir(ld()),
                name: base,
                mode: dst.mode & 0o1777,
                kind: "lib",
                inferred: true,
              });
          }
          break;
        }
        case "other":
          problems.add(`no destination for ${r.path} (not a library, not in a bin directory): use --dest`);
          break;
      }
    } catch (e) {
      if (!(e instanceof ChError)) throw e;
      problems.add(e.message);
    }
  }
  if (host.env.FI_PROVIDER && wants.some((w) => w.kind === "provider"))
    warnings.push(`FI_PROVIDER=${host.env.FI_PROVIDER} is set: libfabric will prefer that provider`);
  if (wants.some((w) => w.kind === "provider")) {
    const env = img.fs.readFile(posix.join(img.root, "ch/environment"));
    if (env && /^FI_PROVIDER_PATH=/m.test(env))
      warnings.push(
        `the image's /ch/environment sets FI_PROVIDER_PATH; libfabric may not look where providers were put (consider --dest)`,
      );
  }
  problems.throwIfAny();

  // 2. Destinations, resolved in the image; directories to make.
  const mkdirs: Plan["mkdirs"] = [];
  const making = new Set<string>();
  const dirOf = (dir: string, why: string): InImage | null => {
    let r: InImage;
    try {
      r = resolveInImage(img.root, posix.resolve("/", dir), img.fs, why);
    } catch (e) {
      if (!(e instanceof ChError)) throw e;
      problems.add(e.message);
      return null;
    }
    if (r.type === null) {
      for (const d of missingDirs(r)) {
        if (making.has(d)) continue;
        making.add(d);
        mkdirs.push({ path: d, host: posix.join(img.root, d) });
      }
      return { ...r, type: "dir" };
    }
    if (r.type !== "dir") {
      problems.add(`not a directory in the image: ${dir}${r.path !== dir ? ` (${r.path})` : ""}`);
      return null;
    }
    return r;
  };
  const copies: Copy[] = [];
  const byHost = new Map<string, Want>();
  for (const w of wants) {
    const d = dirOf(w.dir, `${posix.join(w.dir, w.name)} (for ${w.listed})`);
    if (!d) continue;
    const dst = posix.join(d.path, w.name);
    const hostDst = posix.join(d.host, w.name);
    const other = byHost.get(hostDst);
    if (other) {
      if (other.src !== w.src) problems.add(`two files would go to ${dst}: ${other.listed} and ${w.listed}`);
      continue;
    }
    byHost.set(hostDst, w);
    if (!making.has(d.path) && img.fs.lstat(hostDst)?.type === "dir") {
      problems.add(`a directory is in the way in the image: ${dst} (for ${w.listed})`);
      continue;
    }
    copies.push({ src: w.src, dst, host: hostDst, mode: w.mode, kind: w.kind, inferred: w.inferred, link: null });
  }
  problems.throwIfAny();
  // Links among the files injected into one directory stay links.
  const real = (p: string) => host.realpath(p) ?? p;
  const byReal = new Map<string, Copy>();
  for (const c of copies)
    if (real(c.src) === posix.join(real(posix.dirname(c.src)), posix.basename(c.src)))
      byReal.set(`${posix.dirname(c.host)}\0${real(c.src)}`, c);
  for (const c of copies) {
    const target = byReal.get(`${posix.dirname(c.host)}\0${real(c.src)}`);
    if (target && target !== c) c.link = posix.basename(target.dst);
  }

  // 3. The image's ldconfig: told about new library directories, run at the end.
  const writes: Write[] = [];
  const confLines = (conf: string, lines: string[]) => {
    if (!lines.length) return;
    const d = dirOf("/etc/ld.so.conf.d", conf);
    if (!d) return;
    const host = posix.join(d.host, posix.basename(conf));
    const old = (img.fs.readFile(host) ?? "").split("\n").filter(Boolean);
    const add = lines.filter((l) => !old.includes(l));
    if (!add.length) return;
    writes.push({ dst: posix.join(d.path, posix.basename(conf)), host, content: `${[...old, ...add].join("\n")}\n` });
    log.push(`${conf}: adding ${add.join(", ")}`);
  };
  const libSubdirs = [
    ...new Set(
      copies.filter((c) => c.kind === "lib" && c.inferred && /^lib/.test(posix.basename(c.dst))).map((c) => posix.dirname(c.dst)),
    ),
  ];
  if (libSubdirs.length || ofiDirs.length) {
    try {
      const s = searched();
      confLines(
        LIB_CONF,
        libSubdirs.filter((d) => !s.has(d)),
      );
      confLines(
        OFI_CONF,
        ofiDirs.filter((d) => !s.has(d) && !ld().some((x) => x.dir === d)),
      );
    } catch (e) {
      if (!(e instanceof ChError)) throw e;
      problems.add(e.message);
    }
  }
  if (writes.length) {
    const r = resolveInImage(img.root, "/etc/ld.so.conf", img.fs);
    const text = r.type === "file" ? (img.fs.readFile(r.host) ?? "") : r.type === null ? "" : null;
    if (text === null) problems.add(`not a regular file in the image: /etc/ld.so.conf (${r.path})`);
    else if (!/^\s*include\s+(\/etc\/)?ld\.so\.conf\.d\/\*\.conf\s*$/m.test(text)) {
      writes.push({
        dst: r.path,
        host: r.host,
        content: `${text}${text && !text.endsWith("\n") ? "\n" : ""}${LD_CONF_INCLUDE}\n`,
      });
      log.push(`/etc/ld.so.conf: adding "${LD_CONF_INCLUDE}"`);
    }
  }
  if (host.cray)
    for (const m of CRAY_MOUNT_POINTS) {
      const r = dirOf(m, m);
      if (r && r.path !== m) log.push(`Cray mount point ${m} is ${r.path}`);
    }
  problems.throwIfAny();

  const ldconfig = !o.noLdconfig && copies.some((c) => c.kind === "lib" || c.kind === "provider" || c.kind === "cray-libfabric");
  return { copies, mkdirs, writes, ldconfig, warnings, log };
}

/** Directories from the first missing component of `r` down to r.path. */
/** A directory resolved in the image, or as given if it can't be. */
function resolveQuiet(img: ImageFacts, dir: string): string {
  try {
    return resolveInImage(img.root, dir, img.fs).path;
  } catch {
    return dir;
  }
}
