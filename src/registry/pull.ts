// ch-image pull: manifest (an index first, if the image has one, then the architecture's
// manifest), config, layers (downloaded in parallel into the download cache, verified), each
// unpacked as soon as it and the layers below it are verified, in order, with whiteouts, into a
// partial directory that replaces the image only once everything succeeded; the config is kept
// in ch/metadata.json and its environment in ch/environment.
import { lstatSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, posix } from "node:path";
import { info, verbose } from "../cli/log.ts";
import { startBars } from "../cli/progress.ts";
import { installImage } from "../image/install.ts";
import type { Storage } from "../image/storage.ts";
import { emptyDev, extractTar, reportStats } from "../image/unpack.ts";
import { ChError, warn } from "../sys/errors.ts";
import { BlobCache, checkDigest, shortDigest } from "./cache.ts";
import { Registry, type RegistryOptions, readBody, retrying, Transport } from "./http.ts";
import {
  ACCEPT_MANIFESTS,
  archCompatible,
  checkSkinnyArch,
  type Descriptor,
  environmentFile,
  type ImageConfig,
  metadataFromConfig,
  type Parsed,
  parseManifest,
  platformArch,
  selectArch,
} from "./manifest.ts";
import { type ImageRef, version } from "./reference.ts";

/** Downloads at once. */
const PARALLEL = 4;

/** Most bytes of an image config (read whole into memory). */
const CONFIG_MAX = 16 << 20;

export interface ClientOptions {
  tlsVerify: boolean;
  auth: boolean;
}

export interface PullOptions extends ClientOptions {
  /** "host", "yolo" or a registry architecture ("arm64/v8"). */
  arch: string;
  alwaysDownload: boolean;
  /** Unpack only this many layers, the lowest (--last-layer N, for debugging); null: all. */
  lastLayer?: number | null;
  /** Keep the layers' extended attributes (--xattrs, $CH_XATTRS). */
  xattrs?: boolean;
}

/** Runs tasks with at most `limit` at once; every promise is settled (no unhandled rejection). */
export function bounded<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R>[] {
  let running = 0;
  const queue: (() => void)[] = [];
  const out = items.map(
    (item, i) =>
      new Promise<R>((resolve, reject) => {
        const start = () => {
          running++;
          fn(item, i)
            .then(resolve, reject)
            .finally(() => {
              running--;
              queue.shift()?.();
            });
        };
        if (running < limit) start();
        else queue.push(start);
      }),
  );
  for (const p of out) p.catch(() => {});
  return out;
}

export interface Fetched {
  /** The image manifest chosen (after the index, if any). */
  manifest: Extract<Parsed, { kind: "manifest" }>;
  /** The index entries, if the image has an index. */
  index: Descriptor[] | null;
}

/** GETs a manifest by tag or digest; verified when asked for by digest. */
export async function getManifest(reg: Registry, ver: string): Promise<{ parsed: Parsed; body: Buffer; digest: string | null }> {
  return retrying(
    `manifest of ${reg.refText}`,
    async () => {
      const res = await reg.request("GET", `manifests/${ver}`, { headers: { Accept: ACCEPT_MANIFESTS }, what: "manifest" });
      const body = await readBody(res, 4 << 20);
      const header = res.headers["docker-content-digest"];
      if (ver.startsWith("sha256:")) checkDigest(body, ver, `manifest ${ver} of ${reg.refText}`);
      else if (typeof header === "string" && header.startsWith("sha256:"))
        checkDigest(body, header, `manifest of ${reg.refText} (Docker-Content-Digest)`);
      const ct = res.headers["content-type"];
      return {
        parsed: parseManifest(body, typeof ct === "string" ? ct : null),
        body,
        digest: ver.startsWith("sha256:") ? ver : typeof header === "string" ? header : null,
      };
    },
    reg.signal,
  );
}

/** The manifest for wanted architecture ("yolo": whatever comes first). */
export async function fetchManifest(reg: Registry, ref: ImageRef, arch: string): Promise<Fetched> {
  const top = await getManifest(reg, version(ref));
  if (top.parsed.kind === "manifest") return { manifest: top.parsed, index: null };
  const entry = selectArch(top.parsed.manifests, arch, reg.refText);
  verbose(`manifest list: picked ${platformArch(entry.platform)}: ${entry.digest}`);
  const m = await getManifest(reg, entry.digest);
  if (m.parsed.kind !== "manifest") throw new ChError(`manifest list entry is another list: ${entry.digest}: ${reg.refText}`);
  return { manifest: m.parsed, index: top.parsed.manifests };
}

/** The registry architecture for --arch (host: ours). */
export function resolveArch(arch: string, host: string): string {
  return arch === "host" ? host : arch;
}

/** Makes directory rel (absolute in the image) under root without following any symlink; false
 * (with a warning) if something in the way isn't a directory. */
function mkdirInImage(root: string, rel: string): boolean {
  const parts = posix.normalize(`/${rel}`).split("/").filter(Boolean);
  let cur = root;
  for (const p of parts) {
    if (p === "..") return false;
    cur = join(cur, p);
    let st: ReturnType<typeof lstatSync> | null = null;
    try {
      st = lstatSync(cur);
    } catch {
      mkdirSync(cur, 0o755);
      continue;
    }
    if (!st.isDirectory()) {
      warn(`not creating volume mount point ${rel}: ${cur.slice(root.length)} is not a directory`);
      return false;
    }
  }
  return true;
}

/** Writes ch/metadata.json, ch/config.pulled.json and ch/environment into an unpacked image
 * (untrusted: nothing is written through a symlink), and makes VOLUME mount points. */
export function writeMetadata(root: string, config: ImageConfig, rawConfig: Buffer): void {
  const ch = join(root, "ch");
  let st: ReturnType<typeof lstatSync> | null = null;
  try {
    st = lstatSync(ch);
  } catch {
    st = null;
  }
  if (st && !st.isDirectory()) rmSync(ch, { force: true, recursive: true });
  if (!st?.isDirectory()) mkdirSync(ch, 0o755);
  const meta = metadataFromConfig(config);
  const files: [string, string | Buffer][] = [
    ["metadata.json", `${JSON.stringify(meta, null, 2)}\n`],
    ["config.pulled.json", rawConfig],
    ["environment", environmentFile(config)],
  ];
  for (const [name, data] of files) {
    const p = join(ch, name);
    rmSync(p, { force: true, recursive: true });
    writeFileSync(p, data, { mode: 0o644, flag: "wx" });
  }
  for (const v of meta.volumes) mkdirInImage(root, v);
}

/** Reads an image's ch/metadata.json; null if it has none. */
export function readMetadata(dir: string): Record<string, unknown> | null {
  try {
    const j = JSON.parse(readFileSync(join(dir, "ch", "metadata.json"), "utf8"));
    return typeof j === "object" && j !== null ? j : null;
  } catch {
    return null;
  }
}

/** Pulls ref into target (an image directory, usually in storage); the storage directory
 * (download cache) is created and locked once the manifest is there. */
export async function pullImage(
  storage: Storage,
  ref: ImageRef,
  target: string,
  opts: PullOptions,
  hostArch: string,
): Promise<void> {
  const arch = resolveArch(opts.arch, hostArch);
  const transport = new Transport({ tlsVerify: opts.tlsVerify });
  const reg = new Registry(ref, transport, { tlsVerify: opts.tlsVerify, auth: opts.auth, push: false } satisfies RegistryOptions);
  const cache = new BlobCache(join(storage.root, "dlcache"));
  const bars = startBars();
  try {
    info(`pulling image:    ${reg.refText}`);
    if (arch !== "yolo") info(`requesting arch:  ${arch}`);
    const { manifest, index } = await fetchManifest(reg, ref, arch);
    // Only now, with something to write, is the storage directory made (if need be) and locked.
    storage.init();
    // Config.
    if (opts.alwaysDownload) cache.forget(manifest.config.digest);
    const tooBig = (n: number) =>
      new ChError(`image config too large: ${n} bytes, more than ${CONFIG_MAX}: ${manifest.config.digest}: ${reg.refText}`);
    if ((manifest.config.size ?? 0) > CONFIG_MAX) throw tooBig(manifest.config.size ?? 0);
    const configPath = await cache.fetch(reg, manifest.config, `config ${shortDigest(manifest.config.digest)}`);
    const configSize = statSync(configPath).size;
    if (configSize > CONFIG_MAX) throw tooBig(configSize);
    const rawConfig = readFileSync(configPath);
    let config: ImageConfig;
    try {
      config = JSON.parse(rawConfig.toString("utf8"));
    } catch {
      throw new ChError(`image config is not JSON: ${manifest.config.digest}: ${reg.refText}`);
    }
    const configArch = config.architecture
      ? config.variant
        ? `${config.architecture}/${config.variant}`
        : config.architecture
      : null;
    if (index === null) checkSkinnyArch(configArch, arch, reg.refText);
    // Layers, in parallel; with --last-layer N, only the lowest N are downloaded and unpacked.
    const all = manifest.layers;
    const layers = opts.lastLayer != null ? all.slice(0, Math.max(0, opts.lastLayer)) : all;
    if (layers.length < all.length)
      info(`--last-layer: unpacking ${layers.length} of ${all.length} layers (an incomplete image)`);
    const n = all.length;
    let cached = 0;
    for (const l of layers) {
      if (opts.alwaysDownload) cache.forget(l.digest);
      else if (cache.has(l.digest)) cached++;
    }
    info(`${n} layer${n === 1 ? "" : "s"}${cached > 0 ? ` (${cached} already downloaded)` : ""}`);
    // Each layer is unpacked, lowest first, as soon as it and every layer below it are
    // downloaded and verified, while the others download; its progress is one more line.
    await installImage(target, async (partial) => {
      const downloads = bounded(layers, PARALLEL, (l, i) => {
        const what = `layer ${i + 1}/${n} ${shortDigest(l.digest)}`;
        const bar = cache.has(l.digest) ? null : bars.add(what, typeof l.size === "number" ? l.size : null);
        return cache.fetch(reg, l, what, bar);
      });
      // The first download to fail fails the pull, without waiting for the layers below it.
      const failed = new Promise<never>((_, reject) => {
        for (const d of downloads) d.catch(reject);
      });
      failed.catch(() => {});
      for (let i = 0; i < layers.length; i++) {
        const path = await Promise.race([downloads[i], failed]);
        const what = `layer ${i + 1}/${n} ${shortDigest(layers[i].digest)}`;
        verbose(`${what}: extracting`);
        const stats = await extractTar(path, partial, {
          layer: true,
          xattrs: opts.xattrs ?? false,
          progress: (_label, total) => bars.progress(`${what}: unpacking`, total),
        });
        reportStats(what, stats);
      }
      bars.end();
      emptyDev(partial); // as Charliecloud does: /dev is ch-run's, never the image's
      writeMetadata(partial, config, rawConfig);
      return partial;
    });
    const mismatch = configArch && !archCompatible(configArch, hostArch) ? ` (may not match host ${hostArch})` : "";
    info(`image arch: ${configArch ?? "unknown"}${mismatch}`);
    info("done");
  } finally {
    bars.end();
    transport.close();
  }
}
