// Manifests and indexes (Docker v2 schema 2 and OCI), and picking an architecture from an index.
import { ChError } from "../sys/errors.ts";

export const MT = {
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  schema1: "application/vnd.docker.distribution.manifest.v1+json",
  schema1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
} as const;

/** Sent with every manifest request: without the list and OCI types some registries answer 404
 * or convert to the old schema 1. */
export const ACCEPT_MANIFESTS = [MT.ociIndex, MT.dockerList, MT.ociManifest, MT.dockerManifest].join(", ");

export interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  platform?: { architecture?: string; os?: string; variant?: string };
}

export type Parsed = { kind: "index"; manifests: Descriptor[] } | { kind: "manifest"; config: Descriptor; layers: Descriptor[] };

const DIGEST = /^sha256:[0-9a-f]{64}$/;

function checkDescriptor(d: unknown, what: string): Descriptor {
  if (typeof d !== "object" || d === null) throw new ChError(`invalid manifest: ${what} is not an object`);
  const digest = (d as { digest?: unknown }).digest;
  if (typeof digest !== "string" || !DIGEST.test(digest))
    throw new ChError(`invalid manifest: ${what}: unsupported or missing digest: ${String(digest)}`);
  const size = (d as { size?: unknown }).size;
  if (size !== undefined && (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0))
    throw new ChError(`invalid manifest: ${what}: invalid size`);
  return d as Descriptor;
}

/** Parses a manifest or index, by the Content-Type the registry sent, else by its mediaType
 * field, else by its shape. */
export function parseManifest(body: Buffer, contentType: string | null): Parsed {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(body.toString("utf8"));
  } catch {
    throw new ChError("invalid manifest: not JSON");
  }
  if (typeof j !== "object" || j === null) throw new ChError("invalid manifest: not a JSON object");
  const ct = contentType?.split(";")[0].trim() || null;
  const mt = ct && ct !== "application/json" && ct !== "text/plain" ? ct : typeof j.mediaType === "string" ? j.mediaType : null;
  if (j.schemaVersion === 1 || mt === MT.schema1 || mt === MT.schema1Signed)
    throw new ChError(
      "unsupported manifest: Docker schema 1 (an image pushed by a very old Docker); re-push it with a newer tool",
    );
  const isIndex = mt === MT.ociIndex || mt === MT.dockerList || (mt === null && Array.isArray(j.manifests));
  const isManifest = mt === MT.ociManifest || mt === MT.dockerManifest || (mt === null && Array.isArray(j.layers));
  if (isIndex) {
    if (!Array.isArray(j.manifests)) throw new ChError("invalid manifest: index without manifests");
    return { kind: "index", manifests: j.manifests.map((d, i) => checkDescriptor(d, `manifests[${i}]`)) };
  }
  if (isManifest) {
    if (!Array.isArray(j.layers)) throw new ChError("invalid manifest: no layers");
    return {
      kind: "manifest",
      config: checkDescriptor(j.config, "config"),
      layers: j.layers.map((d, i) => checkDescriptor(d, `layers[${i}]`)),
    };
  }
  throw new ChError(`unsupported manifest media type: ${mt ?? "none"}`);
}

// ---- Architectures ----

/** The registry name of the host's architecture (Node's process.arch). */
export function hostArch(nodeArch: string = process.arch): string {
  const map: Record<string, string> = {
    x64: "amd64",
    arm64: "arm64/v8",
    arm: "arm/v7",
    ia32: "386",
    ppc64: "ppc64le",
    s390x: "s390x",
    riscv64: "riscv64",
    loong64: "loong64",
    mips64el: "mips64le",
  };
  return map[nodeArch] ?? nodeArch;
}

/** "arm64/v8" from a platform. */
export function platformArch(p: Descriptor["platform"]): string {
  if (!p?.architecture) return "unknown";
  return p.variant ? `${p.architecture}/${p.variant}` : p.architecture;
}

/** Architectures acceptable for `wanted`, best first: arm64 and arm64/v8 are the same; an
 * arm/v7 host runs arm/v6 and arm/v5 too; amd64 takes amd64/v1 (and any amd64 last). */
export function archCandidates(wanted: string): string[] {
  const [arch, variant] = wanted.split("/");
  if (arch === "arm64") return variant && variant !== "v8" ? [wanted, "arm64/v8", "arm64"] : ["arm64/v8", "arm64"];
  if (arch === "arm") {
    const v = Number((variant ?? "v7").slice(1)) || 7;
    const out: string[] = [];
    for (let i = v; i >= 5; i--) out.push(`arm/v${i}`);
    if (!variant) out.unshift("arm");
    else out.push("arm");
    return out;
  }
  if (arch === "amd64") return variant ? [wanted, "amd64"] : ["amd64", "amd64/v1"];
  return [wanted];
}

/** Entries of an index that are images for some OS/architecture (not attestations). */
export function imageEntries(index: Descriptor[]): Descriptor[] {
  return index.filter((d) => {
    const os = d.platform?.os;
    const arch = d.platform?.architecture;
    return arch !== "unknown" && os !== "unknown" && (os === undefined || os === "linux");
  });
}

/** Picks the manifest for `wanted` ("yolo": the first image entry) from an index, or errors
 * listing what the index has. */
export function selectArch(index: Descriptor[], wanted: string, ref: string): Descriptor {
  const entries = imageEntries(index);
  if (wanted === "yolo") {
    if (entries.length === 0) throw new ChError(`no image in manifest list: ${ref}`);
    return entries.find((d) => platformArch(d.platform) === "amd64") ?? entries[0];
  }
  for (const c of archCandidates(wanted)) {
    const hit = entries.find((d) => platformArch(d.platform) === c);
    if (hit) return hit;
  }
  const avail = [...new Set(entries.map((d) => platformArch(d.platform)))].sort();
  throw new ChError(`requested arch unavailable: ${wanted}: ${ref}; available: ${avail.join(" ") || "none"}`);
}

/** Whether an image of architecture a runs where b is wanted, or the other way round. */
export function archCompatible(a: string, b: string): boolean {
  return archCandidates(a).includes(b) || archCandidates(b).includes(a);
}

/** For an image without an index: errors if its config names another architecture. */
export function checkSkinnyArch(configArch: string | null, wanted: string, ref: string): void {
  if (wanted === "yolo" || !configArch) return;
  if (archCompatible(configArch, wanted)) return;
  throw new ChError(
    `requested arch unavailable: ${wanted}: ${ref} is architecture-unaware (no manifest list) and is ${configArch}; consider --arch=yolo`,
  );
}

// ---- Image config ----

export interface ImageConfig {
  architecture?: string;
  variant?: string;
  os?: string;
  config?: {
    Env?: string[] | null;
    WorkingDir?: string;
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    Labels?: Record<string, string> | null;
    Volumes?: Record<string, unknown> | null;
    Shell?: string[] | null;
    User?: string;
    ExposedPorts?: Record<string, unknown> | null;
    Healthcheck?: Healthcheck | null;
    StopSignal?: string;
    OnBuild?: string[] | null;
  };
  history?: unknown[];
  rootfs?: { type: string; diff_ids: string[] };
}

/** HEALTHCHECK as Docker's config has it (durations in nanoseconds; absent: Docker's default). */
export interface Healthcheck {
  /** ["CMD", ARG...], ["CMD-SHELL", COMMAND] or ["NONE"]. */
  Test: string[];
  Interval?: number;
  Timeout?: number;
  StartPeriod?: number;
  StartInterval?: number;
  Retries?: number;
}

/** What we keep of an image's config, as Charliecloud's ch/metadata.json (expose, healthcheck,
 * stopsignal and onbuild are ours: Docker's fields, kept so that push and pull lose nothing). */
export interface Metadata {
  arch: string;
  cwd: string;
  env: Record<string, string>;
  entrypoint: string[];
  cmd: string[];
  labels: Record<string, string>;
  shell: string[];
  /** USER: "name", "uid", "name:group"...; "" for none. */
  user: string;
  /** Sorted (a set, as Docker's config has it). */
  volumes: string[];
  /** EXPOSE: "PORT/PROTO", sorted. */
  expose: string[];
  healthcheck: Healthcheck | null;
  /** STOPSIGNAL; "" for none. */
  stopsignal: string;
  /** ONBUILD triggers, as written. */
  onbuild: string[];
  history: unknown[];
}

/** A Healthcheck from untrusted JSON, or null. */
export function healthcheck(x: unknown): Healthcheck | null {
  if (typeof x !== "object" || x === null || Array.isArray(x)) return null;
  const o = x as Record<string, unknown>;
  const test = strings(o.Test);
  if (test.length === 0) return null;
  const out: Healthcheck = { Test: test };
  for (const k of ["Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"] as const) {
    const v = o[k];
    if (typeof v === "number" && Number.isSafeInteger(v) && v > 0) out[k] = v;
  }
  return out;
}

/** SHELL when an image doesn't say. */
export const DEFAULT_SHELL = ["/bin/sh", "-c"];

function strings(x: unknown): string[] {
  return Array.isArray(x) ? x.filter((s): s is string => typeof s === "string") : [];
}

export function metadataFromConfig(c: ImageConfig): Metadata {
  const cfg = c.config ?? {};
  const env: Record<string, string> = {};
  for (const e of strings(cfg.Env)) {
    const eq = e.indexOf("=");
    if (eq > 0) env[e.slice(0, eq)] = e.slice(eq + 1);
  }
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(cfg.Labels ?? {})) if (typeof v === "string") labels[k] = v;
  return {
    arch: c.architecture ? (c.variant ? `${c.architecture}/${c.variant}` : c.architecture) : "unknown",
    cwd: typeof cfg.WorkingDir === "string" && cfg.WorkingDir !== "" ? cfg.WorkingDir : "/",
    env,
    entrypoint: strings(cfg.Entrypoint),
    cmd: strings(cfg.Cmd),
    labels,
    shell: strings(cfg.Shell).length > 0 ? strings(cfg.Shell) : [...DEFAULT_SHELL],
    user: typeof cfg.User === "string" ? cfg.User : "",
    volumes: Object.keys(cfg.Volumes ?? {}).sort(),
    expose: Object.keys(cfg.ExposedPorts ?? {}).sort(),
    healthcheck: healthcheck(cfg.Healthcheck),
    stopsignal: typeof cfg.StopSignal === "string" ? cfg.StopSignal : "",
    onbuild: strings(cfg.OnBuild),
    history: Array.isArray(c.history) ? c.history : [],
  };
}

/** The image's ch/environment: NAME=VALUE lines, in the config's order. */
export function environmentFile(c: ImageConfig): string {
  return strings(c.config?.Env)
    .filter((e) => e.indexOf("=") > 0 && !e.includes("\n"))
    .map((e) => `${e}\n`)
    .join("");
}

/** History for an image pushed as one layer: the entries as they are, except that only the last
 * one that made a layer still says so (that layer has everything up to it); Docker refuses a
 * config with more non-empty history entries than layers. */
export function squashHistory(history: unknown[]): Record<string, unknown>[] {
  const entries = history.filter((h): h is Record<string, unknown> => typeof h === "object" && h !== null && !Array.isArray(h));
  let last = -1;
  entries.forEach((h, i) => {
    if (h.empty_layer !== true) last = i;
  });
  return entries.map((h, i) => (i === last || h.empty_layer === true ? { ...h } : { ...h, empty_layer: true }));
}

/** A config for pushing, from stored metadata: everything ch/metadata.json has that a config
 * can say (Docker's fields; SHELL only when not the default). */
export function configFromMetadata(m: Partial<Metadata>, diffIds: string[], fallbackArch: string): ImageConfig {
  const [architecture, variant] = (m.arch && m.arch !== "unknown" ? m.arch : fallbackArch).split("/");
  const config: NonNullable<ImageConfig["config"]> = {};
  const env = Object.entries(m.env ?? {}).map(([k, v]) => `${k}=${v}`);
  if (env.length > 0) config.Env = env;
  if (m.cwd && m.cwd !== "/") config.WorkingDir = m.cwd;
  if (m.entrypoint?.length) config.Entrypoint = m.entrypoint;
  if (m.cmd?.length) config.Cmd = m.cmd;
  if (m.labels && Object.keys(m.labels).length > 0) config.Labels = m.labels;
  const shell = strings(m.shell);
  if (shell.length > 0 && JSON.stringify(shell) !== JSON.stringify(DEFAULT_SHELL)) config.Shell = shell;
  if (typeof m.user === "string" && m.user !== "") config.User = m.user;
  const volumes = strings(m.volumes);
  if (volumes.length > 0) config.Volumes = Object.fromEntries([...volumes].sort().map((v) => [v, {}]));
  const expose = strings(m.expose);
  if (expose.length > 0) config.ExposedPorts = Object.fromEntries([...expose].sort().map((p) => [p, {}]));
  const hc = healthcheck(m.healthcheck);
  if (hc) config.Healthcheck = hc;
  if (typeof m.stopsignal === "string" && m.stopsignal !== "") config.StopSignal = m.stopsignal;
  const onbuild = strings(m.onbuild);
  if (onbuild.length > 0) config.OnBuild = onbuild;
  const out: ImageConfig = { architecture, os: "linux", config, rootfs: { type: "layers", diff_ids: diffIds } };
  if (Array.isArray(m.history) && m.history.length > 0) out.history = squashHistory(m.history);
  if (variant) out.variant = variant;
  return out;
}
