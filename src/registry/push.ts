// ch-image push: the image as one gzip tarball layer (everything owned by root), a config
// carrying all of the stored metadata (architecture, environment, working directory, entrypoint,
// command, labels, shell, user, volumes, history: manifest.ts configFromMetadata), and a Docker
// v2 schema 2 manifest. Blobs the registry already has are not sent;
// uploads are monolithic (POST, then PUT ?digest=). The tarball is made under STORAGE/ulcache (or
// a private temporary directory) and removed at the end.
import { createHash } from "node:crypto";
import { createReadStream, rmSync } from "node:fs";
import { join } from "node:path";
import { Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { info } from "../cli/log.ts";
import { startProgress } from "../cli/progress.ts";
import { packImage } from "../image/pack.ts";
import { ChError } from "../sys/errors.ts";
import { sha256, shortDigest } from "./cache.ts";
import { drain, Registry, retrying, Transport } from "./http.ts";
import { configFromMetadata, type Metadata, MT } from "./manifest.ts";
import type { ClientOptions } from "./pull.ts";
import { readMetadata } from "./pull.ts";
import type { ImageRef } from "./reference.ts";

interface Layer {
  path: string;
  digest: string;
  diffId: string;
  size: number;
}

/** Digest and size of a gzip tarball, and the digest of the tar inside (the diff ID). */
async function describeLayer(path: string): Promise<Layer> {
  const gz = createHash("sha256");
  const tar = createHash("sha256");
  let size = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _e, cb) {
      gz.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      tar.update(chunk);
      cb();
    },
  });
  await pipeline(createReadStream(path), tap, createGunzip(), sink);
  return { path, digest: `sha256:${gz.digest("hex")}`, diffId: `sha256:${tar.digest("hex")}`, size };
}

/** Uploads one blob unless the registry has it. body: the data, or a function opening it. */
async function uploadBlob(
  reg: Registry,
  digest: string,
  size: number,
  body: Buffer | (() => NodeJS.ReadableStream),
  what: string,
) {
  const label = `${what}: ${shortDigest(digest)}`;
  info(`${label}: checking if already in repository`);
  const head = await retrying(
    `${label}: checking`,
    () => reg.request("HEAD", `blobs/${digest}`, { accept: [404], what: `blob ${digest}` }),
    reg.signal,
  );
  await drain(head);
  if (head.status === 200) {
    info(`${label}: already present`);
    return;
  }
  info(`${label}: not present, uploading`);
  await retrying(
    `${label}: uploading`,
    async () => {
      const start = await reg.request("POST", "blobs/uploads/", { what: "upload" });
      await drain(start);
      const loc = start.headers.location;
      if (typeof loc !== "string") throw new ChError(`registry gave no upload location: ${reg.refText}`);
      const url = new URL(loc, start.url);
      url.searchParams.set("digest", digest);
      let stream = body;
      let progress: ReturnType<typeof startProgress> | null = null;
      if (!Buffer.isBuffer(body)) {
        const open = body;
        stream = () => {
          const s = open();
          const p = startProgress(`${label}: uploading`, size);
          progress = p;
          let n = 0;
          s.on("data", (c: Buffer) => {
            n += c.length;
            p.update(n, 0);
          });
          s.on("end", () => p.end());
          s.on("error", () => p.end());
          return s;
        };
      }
      try {
        const put = await reg.request("PUT", url, {
          body: stream,
          headers: { "Content-Type": "application/octet-stream", "Content-Length": String(size) },
          what: `blob ${digest}`,
        });
        await drain(put);
      } finally {
        (progress as ReturnType<typeof startProgress> | null)?.end();
      }
    },
    reg.signal,
  );
}

/** What of an image is never pushed: Charliecloud's build cache metadata (a Git worktree link
 * into the storage directory, and file metadata), as Charliecloud leaves it out. */
const NOT_PUSHED = ["ch/git", "ch/git.pickle"];

/** Pushes the image directory dir to ref; the layer tarball is made in the existing directory
 * work (STORAGE/ulcache, or a private temporary directory) and removed at the end. */
export async function pushImage(
  work: string,
  dir: string,
  ref: ImageRef,
  opts: ClientOptions & { xattrs?: boolean },
  hostArch: string,
): Promise<void> {
  if (ref.tag === null && ref.digest !== null) throw new ChError("can't push to a reference with a digest; give a tag");
  const tarball = join(work, "push-layer.tar.gz");
  const transport = new Transport({ tlsVerify: opts.tlsVerify });
  const reg = new Registry(ref, transport, { tlsVerify: opts.tlsVerify, auth: true, push: true });
  try {
    info("layer 1/1: gathering");
    await packImage(dir, tarball, { reproducible: true, omit: NOT_PUSHED, xattrs: opts.xattrs ?? false });
    info("layer 1/1: preparing");
    const layer = await describeLayer(tarball);
    info("preparing metadata");
    const meta = (readMetadata(dir) ?? {}) as Partial<Metadata>;
    const config = Buffer.from(JSON.stringify(configFromMetadata(meta, [layer.diffId], hostArch)));
    const configDigest = sha256(config);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MT.dockerManifest,
        config: { mediaType: MT.dockerConfig, size: config.length, digest: configDigest },
        layers: [{ mediaType: MT.dockerLayerGzip, size: layer.size, digest: layer.digest }],
      }),
    );
    info("starting upload");
    await uploadBlob(reg, layer.digest, layer.size, () => createReadStream(tarball), "layer 1/1");
    await uploadBlob(reg, configDigest, config.length, config, "config");
    info("manifest: uploading");
    const tag = ref.tag ?? "latest";
    await retrying(
      "manifest upload",
      async () => {
        const res = await reg.request("PUT", `manifests/${tag}`, {
          body: manifest,
          headers: { "Content-Type": MT.dockerManifest },
          what: "manifest",
        });
        await drain(res);
      },
      reg.signal,
    );
    info(`pushed: ${reg.refText} (${sha256(manifest)})`);
  } finally {
    transport.close();
    rmSync(tarball, { force: true });
  }
}
