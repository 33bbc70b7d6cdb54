// Fixture images made offline and written straight through the registry API (blob uploads,
// manifest PUTs), independently of ch-image push, so that pull is tested on its own: layers from
// directories (GNU tar, deterministic) or from crafted members (whiteouts), Docker schema 2 and
// OCI manifests, OCI indexes and Docker manifest lists.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { busyboxImage } from "../helpers.ts";
import { type Member, tarBytes } from "../tarballs.ts";
import { type Response, request } from "./http.ts";
import type { Registry } from "./registry.ts";

export const MT = {
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayer: "application/vnd.oci.image.layer.v1.tar+gzip",
  ociLayerTar: "application/vnd.oci.image.layer.v1.tar",
} as const;

export const sha256 = (b: Buffer | string) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

export interface Layer {
  /** The blob as stored (gzipped unless made with gzip false). */
  bytes: Buffer;
  digest: string;
  size: number;
  /** Digest of the uncompressed tar. */
  diffId: string;
  gzip: boolean;
}

function layerOf(tar: Buffer, gzip: boolean): Layer {
  const bytes = gzip ? gzipSync(tar) : tar;
  return { bytes, digest: sha256(bytes), size: bytes.length, diffId: sha256(tar), gzip };
}

/** A layer holding dir's contents (GNU tar, names sorted, owner root, mtime 0). */
export function layerFromDir(dir: string, gzip = true): Layer {
  const tar = execFileSync(
    "tar",
    ["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "--format=gnu", "-C", dir, "-cf", "-", "."],
    { maxBuffer: 1 << 30 },
  );
  return layerOf(tar, gzip);
}

/** A layer of crafted members (whiteouts, odd modes): see test/tarballs.ts. */
export function layerFromMembers(members: Member[], gzip = true): Layer {
  return layerOf(tarBytes(members), gzip);
}

/** A busybox image's tree (test/helpers.ts), without its /ch (the client writes that), as a layer. */
export function busyboxLayer(work: string): Layer {
  const img = busyboxImage(work, "busybox-layer");
  rmSync(join(img, "ch"), { recursive: true, force: true });
  const l = layerFromDir(img);
  rmSync(img, { recursive: true, force: true });
  return l;
}

export interface ImageConfig {
  Env?: string[];
  WorkingDir?: string;
  Entrypoint?: string[];
  Cmd?: string[];
  Labels?: Record<string, string>;
  User?: string;
}

export interface Image {
  /** "oci" or "docker" media types. */
  kind: "oci" | "docker";
  layers: Layer[];
  config: Buffer;
  configDigest: string;
  manifest: Buffer;
  digest: string;
  mediaType: string;
  architecture: string;
  variant?: string;
}

export interface ImageSpec {
  kind?: "oci" | "docker";
  layers: Layer[];
  config?: ImageConfig;
  architecture?: string;
  variant?: string;
  /** Leave mediaType out of an OCI manifest (optional there). */
  noMediaType?: boolean;
}

export function makeImage(spec: ImageSpec): Image {
  const kind = spec.kind ?? "docker";
  const architecture = spec.architecture ?? "amd64";
  const cfg: Record<string, unknown> = {
    architecture,
    os: "linux",
    config: spec.config ?? {},
    rootfs: { type: "layers", diff_ids: spec.layers.map((l) => l.diffId) },
    history: spec.layers.map((_, i) => ({ created: "2020-01-02T03:04:05Z", created_by: `fixture layer ${i}` })),
    created: "2020-01-02T03:04:05Z",
  };
  if (spec.variant) cfg.variant = spec.variant;
  const config = Buffer.from(JSON.stringify(cfg));
  const oci = kind === "oci";
  const manifestObj: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: oci ? MT.ociManifest : MT.dockerManifest,
    config: { mediaType: oci ? MT.ociConfig : MT.dockerConfig, size: config.length, digest: sha256(config) },
    layers: spec.layers.map((l) => ({
      mediaType: oci ? (l.gzip ? MT.ociLayer : MT.ociLayerTar) : MT.dockerLayer,
      size: l.size,
      digest: l.digest,
    })),
  };
  if (oci && spec.noMediaType) delete manifestObj.mediaType;
  const manifest = Buffer.from(JSON.stringify(manifestObj, null, 2));
  return {
    kind,
    layers: spec.layers,
    config,
    configDigest: sha256(config),
    manifest,
    digest: sha256(manifest),
    mediaType: oci ? MT.ociManifest : MT.dockerManifest,
    architecture,
    variant: spec.variant,
  };
}

export interface Index {
  kind: "oci" | "docker";
  images: Image[];
  manifest: Buffer;
  digest: string;
  mediaType: string;
}

/** An OCI image index or Docker manifest list of images (their kind must match). */
export function makeIndex(kind: "oci" | "docker", images: Image[]): Index {
  const mediaType = kind === "oci" ? MT.ociIndex : MT.dockerList;
  const manifest = Buffer.from(
    JSON.stringify(
      {
        schemaVersion: 2,
        mediaType,
        manifests: images.map((i) => ({
          mediaType: i.mediaType,
          size: i.manifest.length,
          digest: i.digest,
          platform: { architecture: i.architecture, os: "linux", ...(i.variant ? { variant: i.variant } : {}) },
        })),
      },
      null,
      2,
    ),
  );
  return { kind, images, manifest, digest: sha256(manifest), mediaType };
}

export interface Credentials {
  user: string;
  pass: string;
}

/** Writes to a registry through its API, answering Basic and Bearer challenges with creds. */
export class Pusher {
  readonly reg: Registry;
  readonly creds: Credentials | undefined;
  /** Base URL used: the registry's, or a proxy's in front of it. */
  readonly base: string;
  private tokens = new Map<string, string>();
  private basic = false;

  constructor(reg: Registry, creds?: Credentials, base?: string) {
    this.reg = reg;
    this.creds = creds;
    this.base = base ?? reg.url;
  }

  private async send(
    repo: string,
    method: string,
    url: string,
    headers: Record<string, string> = {},
    body?: Buffer,
  ): Promise<Response> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const h = { ...headers };
      const tok = this.tokens.get(repo);
      if (tok) h.Authorization = `Bearer ${tok}`;
      else if (this.basic && this.creds)
        h.Authorization = `Basic ${Buffer.from(`${this.creds.user}:${this.creds.pass}`).toString("base64")}`;
      const r = await request(url, { method, headers: h, body, ca: this.reg.caPem });
      if (r.status !== 401 || attempt > 0) return r;
      const challenge = String(r.headers["www-authenticate"] ?? "");
      if (/^Basic/i.test(challenge)) this.basic = true;
      else if (/^Bearer/i.test(challenge)) {
        const p = Object.fromEntries([...challenge.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
        const u = new URL(p.realm);
        if (p.service) u.searchParams.set("service", p.service);
        u.searchParams.set("scope", `repository:${repo}:pull,push`);
        const th: Record<string, string> = {};
        if (this.creds) th.Authorization = `Basic ${Buffer.from(`${this.creds.user}:${this.creds.pass}`).toString("base64")}`;
        const t = await request(u.toString(), { headers: th, ca: this.reg.caPem });
        if (t.status !== 200) throw new Error(`token server: ${t.status} ${t.body}`);
        this.tokens.set(repo, JSON.parse(t.body.toString()).token);
      } else return r;
    }
    throw new Error("unreachable");
  }

  /** Uploads a blob (monolithic POST then PUT), unless the registry has it already. */
  async blob(repo: string, bytes: Buffer): Promise<string> {
    const digest = sha256(bytes);
    const head = await this.send(repo, "HEAD", `${this.base}/v2/${repo}/blobs/${digest}`);
    if (head.status === 200) return digest;
    const start = await this.send(repo, "POST", `${this.base}/v2/${repo}/blobs/uploads/`, {}, Buffer.alloc(0));
    if (start.status !== 202) throw new Error(`upload start ${repo}: ${start.status} ${start.body}`);
    const loc = new URL(String(start.headers.location), this.base);
    loc.searchParams.set("digest", digest);
    const put = await this.send(repo, "PUT", loc.toString(), { "Content-Type": "application/octet-stream" }, bytes);
    if (put.status !== 201) throw new Error(`upload ${repo} ${digest}: ${put.status} ${put.body}`);
    return digest;
  }

  async manifest(repo: string, ref: string, mediaType: string, body: Buffer): Promise<void> {
    const r = await this.send(repo, "PUT", `${this.base}/v2/${repo}/manifests/${ref}`, { "Content-Type": mediaType }, body);
    if (r.status !== 201) throw new Error(`manifest ${repo}:${ref}: ${r.status} ${r.body}`);
  }

  /** Pushes an image's blobs and manifest, tagged tag (and always reachable by digest). */
  async image(repo: string, tag: string | null, img: Image): Promise<void> {
    for (const l of img.layers) await this.blob(repo, l.bytes);
    await this.blob(repo, img.config);
    await this.manifest(repo, tag ?? img.digest, img.mediaType, img.manifest);
  }

  /** Pushes every image of an index by digest, then the index under tag. */
  async index(repo: string, tag: string, idx: Index): Promise<void> {
    for (const i of idx.images) await this.image(repo, null, i);
    await this.manifest(repo, tag, idx.mediaType, idx.manifest);
  }

  /** GET of anything under /v2/ with the pusher's credentials (for checks after a push). */
  async get(repo: string, path: string, accept?: string): Promise<Response> {
    return this.send(repo, "GET", `${this.base}/v2/${repo}/${path}`, accept ? { Accept: accept } : {});
  }
}
