// ADD's URL sources: downloaded over HTTP(S) with the registry client's transport (its proxies,
// TLS settings, timeouts and retries), redirects followed (at most 10, http and https only),
// never unpacked. With --checksum=ALGO:HEX (sha256, sha384, sha512) the bytes are checked, a
// mismatch an error, and the file is kept in the download cache, STORAGE/dlcache, named by that
// digest (ALGO-HEX, as registry blobs are) and checked again before each use; without a
// checksum nothing is cached (the URL's content may change) and the download goes to a temporary
// file beside its destination in the image being built (removed with it on failure). The
// server's Last-Modified, when it sends one, becomes the file's mtime (as Docker does).
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
  utimesSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { info, verbose } from "../cli/log.ts";
import { drain, readBody, retrying, ServerError, Transport } from "../registry/http.ts";
import { ChError, sysError, warn } from "../sys/errors.ts";
import { lstatOrNull } from "./paths.ts";

const REDIRECTS = 10;
const ALGOS: Record<string, number> = { sha256: 64, sha384: 96, sha512: 128 };

/** A URL that ADD downloads (http, https), as Docker tells it from a path. */
export function isUrl(src: string): boolean {
  return /^https?:\/\//i.test(src);
}

/** A git source (ADD of a repository), which ADD doesn't do here. */
export function isGitSource(src: string): boolean {
  if (/^git@|^git:\/\//i.test(src)) return true;
  if (!isUrl(src)) return false;
  try {
    return new URL(src).pathname.endsWith(".git");
  } catch {
    return false;
  }
}

/** The file name Docker gives a URL's download in a destination directory: the last element of
 * its path, else __unnamed__. */
export function urlFileName(src: string): string {
  let path = "";
  try {
    path = decodeURIComponent(new URL(src).pathname);
  } catch {
    path = "";
  }
  const base = path.split("/").filter(Boolean).at(-1) ?? "";
  return base === "" || base === "." || base === ".." || base.includes("\0") ? "__unnamed__" : base;
}

export interface Checksum {
  algo: string;
  hex: string;
}

/** --checksum's value, ALGO:HEX; an error naming `what` if it isn't one. */
export function parseChecksum(v: string, what: string): Checksum {
  const m = /^(sha256|sha384|sha512):([0-9a-fA-F]+)$/.exec(v);
  if (!m || m[2].length !== ALGOS[m[1]])
    throw new ChError(`${what}: --checksum: invalid digest (sha256:HEX, sha384:HEX or sha512:HEX expected): ${v}`);
  return { algo: m[1], hex: m[2].toLowerCase() };
}

export interface Downloaded {
  /** The file: in the download cache (copy it), or a temporary file (rename it). */
  path: string;
  cached: boolean;
  mtime: Date | null;
}

async function hashFile(path: string, algo: string): Promise<string> {
  const h = createHash(algo);
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest("hex");
}

/** Downloads for one build; close() when done. */
export class Downloader {
  private transport_: Transport | null = null;
  private readonly cacheDir: string;
  private readonly tlsVerify: boolean;

  constructor(cacheDir: string, tlsVerify: boolean) {
    this.cacheDir = cacheDir;
    this.tlsVerify = tlsVerify;
  }

  private get transport(): Transport {
    this.transport_ ??= new Transport({ tlsVerify: this.tlsVerify });
    return this.transport_;
  }

  close(): void {
    this.transport_?.close();
  }

  /** url's content, checked against sum if given; `tmp` is where a download not cached is
   * written; `what` (FILE:LINE: ADD) begins every message. */
  async fetch(url: string, sum: Checksum | null, tmp: string, what: string): Promise<Downloaded> {
    // Before the URL is printed anywhere: it must not carry a password to stderr or a log file.
    let parsed: URL | null = null;
    try {
      parsed = new URL(url);
    } catch {}
    if (parsed && (parsed.username || parsed.password))
      throw new ChError(`${what}: credentials in a URL are not supported: ${parsed.origin}`);
    if (sum === null) {
      await this.download(url, null, tmp, what);
      return { path: tmp, cached: false, mtime: lstatSync(tmp).mtime };
    }
    const final = join(this.cacheDir, `${sum.algo}-${sum.hex}`);
    const st = lstatOrNull(final);
    if (st) {
      if (st.isFile() && (await hashFile(final, sum.algo)) === sum.hex) {
        info(`${what}: using cached download of ${url}`);
        return { path: final, cached: true, mtime: st.mtime };
      }
      warn(`${what}: cached download of ${url} is wrong; downloading it again`);
      rmSync(final, { force: true, recursive: true });
    }
    try {
      // Not recursive: the storage directory is made (and checked) by its owner, Storage.
      mkdirSync(this.cacheDir, { mode: 0o755 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw sysError(`can't create download cache: ${this.cacheDir}`, e);
    }
    const partial = `${final}.partial`;
    await this.download(url, sum, partial, what);
    try {
      renameSync(partial, final);
    } catch (e) {
      throw sysError(`can't write download cache: ${final}`, e);
    }
    return { path: final, cached: true, mtime: lstatSync(final).mtime };
  }

  /** Downloads url to path (replaced), checking sum; retried as registry requests are. */
  private async download(url: string, sum: Checksum | null, path: string, what: string): Promise<void> {
    info(`${what}: downloading ${url}`);
    const t = this.transport;
    try {
      await this.attempts(t, url, sum, path, what);
    } catch (e) {
      rmSync(path, { force: true });
      if (e instanceof ChError) throw e;
      throw new ChError(`${what}: can't download ${url}: ${(e as Error)?.message ?? String(e)}`);
    }
  }

  private attempts(t: Transport, url: string, sum: Checksum | null, path: string, what: string): Promise<void> {
    return retrying(
      `${what}: downloading ${url}`,
      async () => {
        let u: URL;
        try {
          u = new URL(url);
        } catch {
          throw new ChError(`${what}: invalid URL: ${url}`);
        }
        let res = await this.get(t, u, what);
        for (let n = 0; [301, 302, 303, 307, 308].includes(res.status); n++) {
          const loc = res.headers.location;
          await drain(res);
          if (typeof loc !== "string" || n >= REDIRECTS)
            throw new ChError(
              `${what}: can't download ${url}: ${n >= REDIRECTS ? "too many redirects" : "redirect without a location"}`,
            );
          const from = u;
          u = new URL(loc, u);
          if (u.protocol !== "http:" && u.protocol !== "https:")
            throw new ChError(`${what}: can't download ${url}: redirected to a URL that isn't http or https: ${u.href}`);
          // Without a checksum, HTTPS is all that vouches for the file that goes into the image.
          if (u.protocol === "http:" && from.protocol === "https:" && this.tlsVerify)
            throw new ChError(
              `${what}: can't download ${url}: redirected from HTTPS to plain HTTP (${u.href}); use --tls-no-verify to allow it`,
            );
          verbose(`${what}: redirected to ${u.href}`);
          res = await this.get(t, u, what);
        }
        if (res.status !== 200) {
          const text = (await readBody(res, 4096).catch(() => Buffer.alloc(0))).toString("utf8").split("\n")[0].trim();
          const msg = `${what}: can't download ${url}: HTTP ${res.status}${text && text.length < 200 ? ` (${text})` : ""}`;
          if (res.status >= 500 && res.status <= 599) throw new ServerError(msg, res.status);
          throw new ChError(msg);
        }
        const hash: Hash | null = sum ? createHash(sum.algo) : null;
        let fd: number;
        try {
          rmSync(path, { force: true });
          fd = openSync(path, "wx", 0o600);
        } catch (e) {
          res.body.destroy();
          throw sysError(`${what}: can't write download`, e);
        }
        try {
          await res.body.consume((chunk) => {
            hash?.update(chunk);
            for (let off = 0; off < chunk.length; ) off += writeSync(fd, chunk, off, chunk.length - off);
          });
          fsyncSync(fd);
        } catch (e) {
          closeSync(fd);
          rmSync(path, { force: true });
          throw e;
        }
        closeSync(fd);
        if (sum && hash) {
          const got = hash.digest("hex");
          if (got !== sum.hex) {
            rmSync(path, { force: true });
            throw new ChError(`${what}: --checksum mismatch for ${url}: expected ${sum.algo}:${sum.hex}, got ${sum.algo}:${got}`);
          }
        }
        const lm = res.headers["last-modified"];
        const when = typeof lm === "string" ? new Date(lm) : null;
        if (when && !Number.isNaN(when.getTime())) utimesSync(path, when, when);
      },
      t.signal,
    );
  }

  private async get(t: Transport, u: URL, what: string) {
    if (u.username || u.password) throw new ChError(`${what}: credentials in a URL are not supported: ${u.origin}`);
    try {
      return await t.send("GET", u, {}, null, true);
    } catch (e) {
      if (e instanceof ChError) throw e;
      const err = e as NodeJS.ErrnoException;
      // Retried (by retrying) when it is a network error worth another try.
      if (err?.code && ["ECONNREFUSED", "ENOTFOUND"].includes(err.code))
        throw new ChError(
          `${what}: can't download ${u.href}: ${err.code === "ENOTFOUND" ? "host not found" : "connection refused"}`,
        );
      throw e;
    }
  }
}
