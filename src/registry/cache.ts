// The download cache, STORAGE/dlcache: blobs named by digest (sha256-HEX). A blob is written to
// HEX.partial, hashed while it streams, and renamed to its name only once its digest matches, so
// nothing unverified is ever used; a partial left by an interrupted run is resumed (HTTP Range)
// and still verified whole. A mismatch deletes the partial and is an error naming the blob.
// A cached blob is not trusted by its name either: its size and digest are checked again before
// each use, and one that doesn't match is removed (with a warning) and downloaded again.
import { createHash, type Hash } from "node:crypto";
import {
  closeSync,
  createReadStream,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  type Stats,
  statSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { verbose } from "../cli/log.ts";
import type { Bar } from "../cli/progress.ts";
import { ChError, sysError, warn } from "../sys/errors.ts";
import { drain, type Registry, retrying, TransientError } from "./http.ts";
import type { Descriptor } from "./manifest.ts";

export function shortDigest(digest: string): string {
  return digest.replace(/^sha256:/, "").slice(0, 7);
}

/** Data that isn't what its digest says. */
export class DigestMismatch extends ChError {}

/** Hashes a blob's bytes as they come and, at the end, checks them against the expected digest
 * and size (more bytes than expected fail at once). Start from a hash of bytes already had, to
 * resume. */
export class Digester {
  readonly expected: string;
  readonly size: number | null;
  readonly what: string;
  bytes: number;
  private hash: Hash;

  constructor(expected: string, size: number | null, what: string, start: { hash: Hash; bytes: number } | null = null) {
    this.expected = expected;
    this.size = size;
    this.what = what;
    this.hash = start?.hash ?? createHash("sha256");
    this.bytes = start?.bytes ?? 0;
  }

  /** Takes the next bytes; throws DigestMismatch if there are more than the size. */
  update(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (this.size !== null && this.bytes > this.size)
      throw new DigestMismatch(`${this.what}: more data than its size (${this.size} bytes): digest mismatch, not using it`);
    this.hash.update(chunk);
  }

  /** Throws unless the bytes were the whole blob: TransientError if short, else DigestMismatch. */
  finish(): void {
    if (this.size !== null && this.bytes < this.size)
      throw new TransientError(`${this.what}: truncated: ${this.bytes} of ${this.size} bytes`);
    const got = `sha256:${this.hash.digest("hex")}`;
    if (got !== this.expected) throw new DigestMismatch(`${this.what}: digest mismatch: got ${got}, not using it`);
  }
}

/** Checks a whole buffer against a digest. */
export function checkDigest(data: Buffer, digest: string, what: string): void {
  const got = `sha256:${createHash("sha256").update(data).digest("hex")}`;
  if (got !== digest) throw new DigestMismatch(`${what}: digest mismatch: expected ${digest}, got ${got}`);
}

function writeAll(fd: number, chunk: Buffer, path: string): void {
  try {
    for (let off = 0; off < chunk.length; ) off += writeSync(fd, chunk, off, chunk.length - off);
  } catch (e) {
    throw sysError(`can't write download cache: ${path}`, e);
  }
}

function rename(partial: string, final: string): void {
  try {
    renameSync(partial, final);
  } catch (e) {
    throw sysError(`can't write download cache: ${final}`, e);
  }
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
  /** Downloads in progress, by digest: a layer listed twice is fetched once (two writers of one
   * partial would corrupt it). */
  private inFlight = new Map<string, Promise<string>>();

  constructor(root: string) {
    this.root = root;
  }

  path(digest: string): string {
    return join(this.root, digest.replace(":", "-"));
  }

  private partial(digest: string): string {
    return `${this.path(digest)}.partial`;
  }

  /** Whether a blob of this name is there (not whether it is right: see cachedOk()). */
  has(digest: string): boolean {
    try {
      return lstatSync(this.path(digest)).isFile();
    } catch {
      return false;
    }
  }

  /** Whether the cached blob of desc is there and is what desc says: a regular file of its size
   * (when known) and digest. One that isn't is removed, with a warning, so that it is downloaded
   * again. */
  async cachedOk(desc: Descriptor, what: string): Promise<boolean> {
    const path = this.path(desc.digest);
    let st: Stats;
    try {
      st = lstatSync(path);
    } catch {
      return false;
    }
    let bad: string | null = null;
    if (!st.isFile()) bad = "not a regular file";
    else if (typeof desc.size === "number" && st.size !== desc.size) bad = `${st.size} bytes, expected ${desc.size}`;
    else {
      const got = `sha256:${(await hashFile(path)).digest("hex")}`;
      if (got !== desc.digest) bad = `digest ${got}`;
    }
    if (bad === null) return true;
    warn(`${what}: cached download is wrong (${bad}); downloading it again`);
    try {
      rmSync(path, { force: true, recursive: st.isDirectory() });
    } catch (e) {
      throw sysError(`can't remove from download cache: ${path}`, e);
    }
    return false;
  }

  /** Removes a verified blob (--always-download). */
  forget(digest: string): void {
    rmSync(this.path(digest), { force: true });
  }

  /** The blob desc of reg's repository, from the cache or downloaded and verified. `what` names
   * it in messages ("layer 2/3 sha256:..."). */
  fetch(reg: Registry, desc: Descriptor, what: string, bar: Bar | null = null): Promise<string> {
    const pending = this.inFlight.get(desc.digest);
    if (pending)
      return pending.then((path) => {
        bar?.done();
        return path;
      });
    const p = this.download(reg, desc, what, bar).finally(() => this.inFlight.delete(desc.digest));
    this.inFlight.set(desc.digest, p);
    return p;
  }

  private async download(reg: Registry, desc: Descriptor, what: string, bar: Bar | null): Promise<string> {
    const final = this.path(desc.digest);
    if (await this.cachedOk(desc, what)) {
      verbose(`${what}: using cached download`);
      bar?.done();
      return final;
    }
    try {
      // Not recursive: the storage directory is made (and checked) by its owner, Storage.
      mkdirSync(this.root, { mode: 0o755 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw sysError(`can't create download cache: ${this.root}`, e);
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
              rename(partial, final);
              return;
            }
            rmSync(partial, { force: true });
            have = 0;
            start = null;
          }
        }
        const headers: Record<string, string> = have > 0 ? { Range: `bytes=${have}-` } : {};
        const get = (h: Record<string, string>, accept?: number[]) =>
          reg.request("GET", `blobs/${desc.digest}`, { headers: h, what: `blob ${desc.digest}`, fast: true, accept });
        let res = await get(headers, have > 0 ? [416] : undefined);
        if (res.status === 416) {
          // The partial is no prefix of this blob (longer than it, when the manifest gave no
          // size): start over, or every later pull would fail the same way.
          verbose(`${what}: registry refused the range (HTTP 416); downloading it all again`);
          await drain(res);
          rmSync(partial, { force: true });
          have = 0;
          start = null;
          res = await get({});
        }
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
        // Hashed and written as it comes, from the buffer it was read into: no copy, no
        // stream, no promise per chunk.
        const digester = new Digester(desc.digest, size, `${label}: blob ${desc.digest}`, start);
        let fd: number;
        try {
          fd = openSync(partial, have > 0 ? "a" : "w", 0o644);
        } catch (e) {
          res.body.destroy();
          throw sysError(`can't write download cache: ${partial}`, e);
        }
        try {
          let done = have;
          await res.body.consume((chunk) => {
            digester.update(chunk);
            writeAll(fd, chunk, partial);
            done += chunk.length;
            bar?.update(done);
          });
          digester.finish();
          fsyncSync(fd);
        } catch (e) {
          if (e instanceof DigestMismatch) {
            rmSync(partial, { force: true });
            // The bytes kept from an earlier run may be what was wrong: once more from the start.
            if (have > 0) throw new TransientError(`${what}: resumed download doesn't match its digest; starting over`);
          }
          throw e;
        } finally {
          closeSync(fd);
        }
        rename(partial, final);
      },
      reg.signal,
    );
    bar?.done();
    return final;
  }
}
