// The download cache, STORAGE/dlcache: blobs named by digest (sha256-HEX). A blob is written to
// HEX.partial, hashed while it streams, and renamed to its name only once its digest matches, so
// nothing unverified is ever used; a partial left by an interrupted run is resumed (HTTP Range)
// and still verified whole. A mismatch deletes the partial and is an error naming the blob.
import { createHash, type Hash } from "node:crypto";
import {
  closeSync,
  createReadStream,
  createWriteStream,
  fsyncSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import { Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { verbose } from "../cli/log.ts";
import type { Bar } from "../cli/progress.ts";
import { ChError, sysError } from "../sys/errors.ts";
import { type Registry, retrying, TransientError } from "./http.ts";
import type { Descriptor } from "./manifest.ts";

export function shortDigest(digest: string): string {
  return digest.replace(/^sha256:/, "").slice(0, 7);
}

/** Data that isn't what its digest says. */
export class DigestMismatch extends ChError {}

/** Hashes what passes through and, at the end, checks it against the expected digest and size
 * (more bytes than expected fail at once). Start from a hash of bytes already had, to resume. */
export class Verifier extends Transform {
  readonly expected: string;
  readonly size: number | null;
  readonly what: string;
  bytes: number;
  private hash: Hash;

  constructor(expected: string, size: number | null, what: string, start: { hash: Hash; bytes: number } | null = null) {
    super();
    this.expected = expected;
    this.size = size;
    this.what = what;
    this.hash = start?.hash ?? createHash("sha256");
    this.bytes = start?.bytes ?? 0;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.size !== null && this.bytes > this.size) {
      cb(new DigestMismatch(`${this.what}: more data than its size (${this.size} bytes): digest mismatch, not using it`));
      return;
    }
    this.hash.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.size !== null && this.bytes < this.size) {
      cb(new TransientError(`${this.what}: truncated: ${this.bytes} of ${this.size} bytes`));
      return;
    }
    const got = `sha256:${this.hash.digest("hex")}`;
    if (got !== this.expected) {
      cb(new DigestMismatch(`${this.what}: digest mismatch: got ${got}, not using it`));
      return;
    }
    cb();
  }
}

/** Checks a whole buffer against a digest. */
export function checkDigest(data: Buffer, digest: string, what: string): void {
  const got = `sha256:${createHash("sha256").update(data).digest("hex")}`;
  if (got !== digest) throw new DigestMismatch(`${what}: digest mismatch: expected ${digest}, got ${got}`);
}

export function sha256(data: Buffer): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

async function hashFile(path: string): Promise<Hash> {
  const h = createHash("sha256");
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h;
}

export class BlobCache {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
  }

  path(digest: string): string {
    return join(this.root, digest.replace(":", "-"));
  }

  private partial(digest: string): string {
    return `${this.path(digest)}.partial`;
  }

  has(digest: string): boolean {
    try {
      return statSync(this.path(digest)).isFile();
    } catch {
      return false;
    }
  }

  /** Removes a verified blob (--always-download). */
  forget(digest: string): void {
    rmSync(this.path(digest), { force: true });
  }

  /** The blob desc of reg's repository, from the cache or downloaded and verified. `what` names
   * it in messages ("layer 2/3 sha256:..."). */
  async fetch(reg: Registry, desc: Descriptor, what: string, bar: Bar | null = null): Promise<string> {
    const final = this.path(desc.digest);
    if (this.has(desc.digest)) {
      verbose(`${what}: using cached download`);
      bar?.done();
      return final;
    }
    try {
      mkdirSync(this.root, { recursive: true, mode: 0o755 });
    } catch (e) {
      throw sysError(`can't create download cache: ${this.root}`, e);
    }
    const partial = this.partial(desc.digest);
    const size = typeof desc.size === "number" ? desc.size : null;
    const label = `${what} (${reg.refText})`;
    await retrying(
      `downloading ${what}`,
      async () => {
        let have = 0;
        try {
          have = statSync(partial).size;
        } catch {
          have = 0;
        }
        if (size !== null && have > size) {
          rmSync(partial, { force: true });
          have = 0;
        }
        let start: { hash: Hash; bytes: number } | null = null;
        if (have > 0) {
          start = { hash: await hashFile(partial), bytes: have };
          if (size !== null && have === size) {
            // Complete but not renamed when interrupted: verify it as is.
            const got = `sha256:${start.hash.copy().digest("hex")}`;
            if (got === desc.digest) {
              renameSync(partial, final);
              return;
            }
            rmSync(partial, { force: true });
            have = 0;
            start = null;
          }
        }
        const headers: Record<string, string> = have > 0 ? { Range: `bytes=${have}-` } : {};
        const res = await reg.request("GET", `blobs/${desc.digest}`, { headers, what: `blob ${desc.digest}` });
        if (have > 0) {
          const range = res.headers["content-range"];
          if (res.status === 206 && typeof range === "string" && range.startsWith(`bytes ${have}-`)) {
            verbose(`${what}: resuming at byte ${have}`);
          } else {
            verbose(`${what}: registry ignored the range; downloading it all again`);
            have = 0;
            start = null;
          }
        }
        const verifier = new Verifier(desc.digest, size, `${label}: blob ${desc.digest}`, start);
        const file = createWriteStream(partial, { flags: have > 0 ? "a" : "w", mode: 0o644 });
        let done = have;
        const counter = new Transform({
          transform(chunk: Buffer, _e, cb) {
            done += chunk.length;
            bar?.update(done);
            cb(null, chunk);
          },
        });
        try {
          await pipeline(res.body, verifier, counter, file);
        } catch (e) {
          if (e instanceof DigestMismatch) rmSync(partial, { force: true });
          throw e;
        }
        const fd = openSync(partial, "r");
        try {
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        renameSync(partial, final);
      },
      reg.signal,
    );
    bar?.done();
    return final;
  }
}
