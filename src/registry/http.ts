// Talking to a registry: HTTPS (plain HTTP only for loopback registries that don't speak TLS, or
// any with --tls-no-verify, as Docker treats "insecure registries": found out once per run with
// a TLS handshake that checks nothing, so the CA list is read only if TLS is used), keep-alive
// connections, timeouts, retries with backoff, redirects, and authentication: anonymous first,
// then Bearer tokens from the WWW-Authenticate challenge (anonymous, then with credentials) or
// Basic. Blob bodies come through rawhttp.ts, read into reused buffers. Credentials are never
// logged or written anywhere. HTTP proxies come from the environment as curl reads them
// (proxy.ts); registry credentials never go to a proxy.
import { setMaxListeners } from "node:events";
import type { ClientRequestArgs, IncomingHttpHeaders, IncomingMessage } from "node:http";
import * as http from "node:http";
import * as https from "node:https";
import * as net from "node:net";
import type { Duplex } from "node:stream";
import * as tls from "node:tls";
import { getCACertificates } from "node:tls";
import { info, verbose } from "../cli/log.ts";
import { ChError } from "../sys/errors.ts";
import { type Credentials, credentialsFrom } from "./credentials.ts";
import {
  type HttpProxy,
  ProxyError,
  type ProxySettings,
  proxyAuthError,
  proxyConnectError,
  proxyFor,
  proxySettings,
  type TunnelOptions,
  tunnel,
} from "./proxy.ts";
import { RawClient, type RawResponse } from "./rawhttp.ts";
import { canonical, fullRef, type ImageRef, repository } from "./reference.ts";

// ---- Settings ----

const TRIES = 4;

/** Base delay of the retry backoff (CH_IMAGE_RETRY_DELAY_MS, default 1 s): waits are 1, 2, 4 x. */
export function retryDelayMs(env: Record<string, string | undefined> = process.env): number {
  const v = env.CH_IMAGE_RETRY_DELAY_MS;
  if (v !== undefined && /^\d+$/.test(v)) return Number(v);
  return 1000;
}

/** Idle timeout of a connection (CH_IMAGE_TIMEOUT_S, default 60 s). */
function timeoutMs(env: Record<string, string | undefined> = process.env): number {
  const v = env.CH_IMAGE_TIMEOUT_S;
  if (v !== undefined && /^\d+$/.test(v) && Number(v) > 0) return Number(v) * 1000;
  return 60_000;
}

// ---- Errors and their classification ----

/** A registry's answer that isn't what we asked for. */
export class StatusError extends ChError {
  readonly status: number;
  constructor(message: string, status: number) {
    super(message);
    this.status = status;
  }
}

/** An HTTP status that a retry may cure (5xx). */
export class ServerError extends StatusError {}

/** A network failure of ours (timeout, cut body) that a retry may cure. */
export class TransientError extends ChError {}

const RETRY_CODES = new Set([
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ECONNABORTED",
  "EAI_AGAIN",
  "ENETRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);

/** Why the failure e is worth another try, or null if it isn't. */
export function retryReason(e: unknown): string | null {
  if (e instanceof ServerError) return `HTTP ${e.status}`;
  if (e instanceof TransientError) return e.message;
  if (e instanceof ProxyError) return e.retry ? e.message : null;
  if (e instanceof ChError) return null;
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code && RETRY_CODES.has(code)) return code;
  if (e instanceof Error && /socket hang up|aborted|premature close/i.test(e.message)) return e.message;
  return null;
}

/** Whether an HTTP status is one to retry. */
export function retryStatus(status: number): boolean {
  return status >= 500 && status <= 599;
}

const CERT_CODES = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME|ERR_TLS_CERT/;

/** A TLS handshake failure that means the server speaks plain HTTP. */
export function notTls(e: unknown): boolean {
  const err = e as NodeJS.ErrnoException;
  const s = `${err?.code ?? ""} ${err?.message ?? ""}`;
  return /WRONG_VERSION_NUMBER|wrong version number|PACKET_LENGTH_TOO_LONG|packet length too long|http request|UNKNOWN_PROTOCOL/i.test(
    s,
  );
}

/** A one-line message for a network error talking to hostport. */
function networkMessage(e: unknown, hostport: string): string {
  const err = e as NodeJS.ErrnoException;
  const code = err?.code ?? "";
  if (code === "ECONNREFUSED") return `can't connect to registry ${hostport}: connection refused`;
  if (code === "ENOTFOUND") return `can't resolve registry host: ${hostport.replace(/:\d+$/, "")}`;
  if (CERT_CODES.test(code)) {
    const why = err.message.replace(/;\s*if the root CA is installed locally.*$/s, "");
    return `TLS certificate of ${hostport} not trusted: ${why} (add its CA to SSL_CERT_FILE, or use --tls-no-verify)`;
  }
  return `network error talking to ${hostport}: ${err?.message ?? String(e)}`;
}

/** Waits ms, less if signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((r) => {
    if (signal?.aborted) return r();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      r();
    }
    signal?.addEventListener("abort", done);
  });
}

/** The work was given up (another part of it failed). */
export class Cancelled extends ChError {}

/** Runs fn, again after a growing delay when it fails in a retryable way; stops when signal
 * aborts. */
export async function retrying<T>(
  what: string,
  fn: (attempt: number) => Promise<T>,
  signal?: AbortSignal,
  tries = TRIES,
): Promise<T> {
  const base = retryDelayMs();
  for (let attempt = 1; ; attempt++) {
    if (signal?.aborted) throw new Cancelled(`${what}: cancelled`);
    try {
      return await fn(attempt);
    } catch (e) {
      if (signal?.aborted) throw new Cancelled(`${what}: cancelled`);
      const why = retryReason(e);
      if (why === null || attempt >= tries) {
        if (why !== null && !(e instanceof ChError)) throw new ChError(`${what}: ${why} (gave up after ${tries} tries)`);
        if (why !== null) throw new ChError(`${(e as Error).message} (gave up after ${tries} tries)`);
        throw e;
      }
      const wait = base * 2 ** (attempt - 1);
      info(`${what}: ${why}; retrying in ${wait} ms (try ${attempt + 1} of ${tries})`);
      await sleep(wait, signal);
    }
  }
}

// ---- WWW-Authenticate ----

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses a WWW-Authenticate header (RFC 7235): one or more challenges, each a scheme and
 * comma-separated key=value or key="quoted \" value" parameters. */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const n = header.length;
  const skipWs = () => {
    while (i < n && /[\s,]/.test(header[i])) i++;
  };
  const token = () => {
    const start = i;
    while (i < n && /[!#$%&'*+\-.^_`|~0-9A-Za-z/]/.test(header[i])) i++;
    return header.slice(start, i);
  };
  skipWs();
  while (i < n) {
    const scheme = token();
    if (!scheme) break;
    const c: Challenge = { scheme, params: {} };
    out.push(c);
    for (;;) {
      skipWs();
      const save = i;
      const key = token();
      while (i < n && header[i] === " ") i++;
      if (!key || header[i] !== "=") {
        i = save; // next challenge's scheme (or the end)
        break;
      }
      i++;
      while (i < n && header[i] === " ") i++;
      let value = "";
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === "\\" && i + 1 < n) i++;
          value += header[i++];
        }
        i++;
      } else {
        const start = i;
        while (i < n && header[i] !== ",") i++;
        value = header.slice(start, i).trim();
      }
      c.params[key.toLowerCase()] = value;
    }
    if (i === n) break;
  }
  return out;
}

// ---- Transport ----

/** A response body: chunks to keep (async iteration), or every byte passed to a function in a
 * buffer that may be reused once it returns (consume: what blob downloads use). */
export interface ResponseBody extends AsyncIterable<Buffer> {
  consume(onData: (chunk: Buffer) => void): Promise<void>;
  destroy(): void;
}

export interface Response {
  status: number;
  headers: IncomingHttpHeaders;
  body: ResponseBody;
  url: URL;
}

function nodeBody(res: IncomingMessage): ResponseBody {
  return {
    [Symbol.asyncIterator]: () => res[Symbol.asyncIterator](),
    consume: async (onData) => {
      for await (const c of res) onData(c as Buffer);
    },
    destroy: () => res.destroy(),
  };
}

/** Most bytes of a fast response's body read as chunks to keep (error messages, redirects). */
const RAW_KEEP = 16 << 20;

function rawBody(res: RawResponse): ResponseBody {
  return {
    async *[Symbol.asyncIterator]() {
      const chunks: Buffer[] = [];
      let n = 0;
      await res.consume((c) => {
        n += c.length;
        if (n > RAW_KEEP) throw new ChError(`response body too large: more than ${RAW_KEEP} bytes`);
        chunks.push(Buffer.from(c));
      });
      yield* chunks;
    },
    consume: (onData) => res.consume(onData),
    destroy: () => res.destroy(),
  };
}

type Body = Buffer | (() => NodeJS.ReadableStream) | null;

let caList: string[] | null = null;

/** Trusted CAs: Node's bundled roots and NODE_EXTRA_CA_CERTS, plus the system store (which
 * Node reads the OpenSSL way: SSL_CERT_FILE and SSL_CERT_DIR, else the system's files). */
function trustedCAs(): string[] {
  if (caList === null) caList = [...new Set([...getCACertificates("default"), ...getCACertificates("system")])];
  return caList;
}

export interface TransportOptions {
  tlsVerify: boolean;
  /** Where proxy settings come from (default: process.env). */
  env?: Record<string, string | undefined>;
}

/** An HTTPS agent whose connections go through a proxy's CONNECT tunnel. */
class TunnelAgent extends https.Agent {
  private proxy: HttpProxy;
  private tunnelOpts: TunnelOptions;
  private tlsOpts: () => tls.ConnectionOptions;

  constructor(proxy: HttpProxy, tunnelOpts: TunnelOptions, tlsOpts: () => tls.ConnectionOptions) {
    super({ keepAlive: true, maxSockets: 8 });
    this.proxy = proxy;
    this.tunnelOpts = tunnelOpts;
    this.tlsOpts = tlsOpts;
  }

  override createConnection(
    options: ClientRequestArgs,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    const host = String(options.hostname ?? options.host ?? "").replace(/^\[(.*)\]$/, "$1");
    const port = Number(options.port || 443);
    tunnel(this.proxy, host, port, this.tunnelOpts).then(
      (socket) =>
        callback?.(
          null,
          tls.connect({
            ...this.tlsOpts(),
            socket,
            host,
            servername: net.isIP(host) ? undefined : host,
            ALPNProtocols: ["http/1.1"],
          }),
        ),
      (e: Error) => callback?.(e, undefined as unknown as Duplex),
    );
    return undefined;
  }
}

/** Whether headers carry an Authorization header (any case). */
function hasAuthorization(headers: Record<string, string>): boolean {
  return Object.keys(headers).some((k) => k.toLowerCase() === "authorization");
}

/** Connections to every host, kept alive, with our TLS settings. */
export class Transport {
  private httpAgent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  /** Made when first needed: reading the system's CAs takes a while (~40 ms). */
  private httpsAgent_: https.Agent | null = null;
  private tunnelAgent_: TunnelAgent | null = null;
  private raw_: RawClient | null = null;
  private abort = new AbortController();
  private proxies: ProxySettings;
  /** Origins whose route was logged. */
  private routed = new Set<string>();
  readonly tlsVerify: boolean;

  constructor(opts: TransportOptions) {
    setMaxListeners(1000, this.abort.signal); // one per request in flight
    this.tlsVerify = opts.tlsVerify;
    this.proxies = proxySettings(opts.env ?? process.env);
  }

  /** The proxy for url, or null to go directly (said once per origin with -v). */
  route(url: URL): HttpProxy | null {
    const p = proxyFor(this.proxies, url);
    if (!this.routed.has(url.origin)) {
      this.routed.add(url.origin);
      if (p) verbose(`${url.origin}: through proxy ${p.shown} (${p.from})`);
      else if (url.protocol === "https:" ? this.proxies.https : this.proxies.http) verbose(`${url.origin}: direct (no_proxy)`);
    }
    return p;
  }

  private get tunnelOpts(): TunnelOptions {
    return {
      timeoutMs: timeoutMs(),
      timeoutError: (ms, what) => new TransientError(`${what}: no answer for ${ms / 1000} s (timed out)`),
    };
  }

  private tunnelAgent(proxy: HttpProxy): TunnelAgent {
    this.tunnelAgent_ ??= new TunnelAgent(proxy, this.tunnelOpts, () => this.tlsOptions());
    return this.tunnelAgent_;
  }

  /** Refuses to send an Authorization header in clear through a proxy (plain HTTP through a proxy
   * goes as a request the proxy reads and forwards), unless TLS checks are off (--tls-no-verify). */
  private checkClear(url: URL, proxy: HttpProxy | null, headers: Record<string, string>): void {
    if (proxy && url.protocol === "http:" && this.tlsVerify && hasAuthorization(headers))
      throw new ChError(
        `not sending credentials in clear through proxy ${proxy.shown} to ${url.origin} (plain HTTP): add ${url.hostname} to NO_PROXY, or use --tls-no-verify to allow`,
      );
  }

  private tlsOptions_: { rejectUnauthorized: boolean; ca?: string[] } | null = null;

  private tlsOptions(): { rejectUnauthorized: boolean; ca?: string[] } {
    this.tlsOptions_ ??= { rejectUnauthorized: this.tlsVerify, ...(this.tlsVerify ? { ca: trustedCAs() } : {}) };
    return this.tlsOptions_;
  }

  private get httpsAgent(): https.Agent {
    this.httpsAgent_ ??= new https.Agent({ keepAlive: true, maxSockets: 8, ...this.tlsOptions() });
    return this.httpsAgent_;
  }

  /** The client for GETs whose bodies are read into reused buffers (blobs). */
  private get raw(): RawClient {
    this.raw_ ??= new RawClient({
      tls: () => this.tlsOptions(),
      timeoutMs: timeoutMs(),
      signal: this.abort.signal,
      timeoutError: (ms, host) => new TransientError(`GET ${host}: no data for ${ms / 1000} s (timed out)`),
      proxy: (url) => this.route(url),
    });
    return this.raw_;
  }

  /** Whether host:port speaks TLS: a handshake that checks nothing (cheap: no CA list), for
   * deciding the scheme of a registry that may be plain HTTP. Network errors are thrown. */
  async probeTls(url: URL): Promise<boolean> {
    const h = url.hostname.replace(/^\[(.*)\]$/, "$1");
    const port = Number(url.port || 443);
    const proxy = this.route(url);
    const socket = proxy ? await tunnel(proxy, h, port, this.tunnelOpts) : undefined;
    return new Promise((resolve, reject) => {
      const s = tls.connect({
        host: h,
        port,
        rejectUnauthorized: false,
        ALPNProtocols: ["http/1.1"],
        ...(socket ? { socket } : {}),
      });
      s.setTimeout(timeoutMs(), () => s.destroy(new TransientError(`TLS probe of ${url.host}: no answer (timed out)`)));
      s.on("secureConnect", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", (e) => (notTls(e) ? resolve(false) : reject(e)));
    });
  }

  /** Aborted when the transport is closed: work in flight stops. */
  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /** Ends every connection and request in flight. */
  close(): void {
    this.abort.abort();
    this.httpAgent.destroy();
    this.httpsAgent_?.destroy();
    this.tunnelAgent_?.destroy();
  }

  /** One request; the response body is left to the caller. Follows no redirects. */
  send(method: string, url: URL, headers: Record<string, string>, body: Body = null, fast = false): Promise<Response> {
    let proxy: HttpProxy | null;
    try {
      proxy = this.route(url);
      this.checkClear(url, proxy, headers);
    } catch (e) {
      return Promise.reject(e);
    }
    // Plain HTTP through a proxy: a 407 is the proxy's.
    const checked = (res: Response): Response => {
      if (proxy && url.protocol === "http:" && res.status === 407) {
        res.body.destroy();
        throw proxyAuthError(proxy, 407);
      }
      return res;
    };
    if (fast && method === "GET" && body === null) {
      if (this.abort.signal.aborted) return Promise.reject(new Cancelled(`${method} ${url.host}: cancelled`));
      return this.raw
        .get(url, { "User-Agent": "charliecloud", ...headers })
        .then((res) => checked({ status: res.status, headers: res.headers, body: rawBody(res), url }));
    }
    const ms = timeoutMs();
    if (this.abort.signal.aborted) return Promise.reject(new Cancelled(`${method} ${url.host}: cancelled`));
    return new Promise((resolve, reject) => {
      const h: Record<string, string> = { "User-Agent": "charliecloud", ...headers };
      if (Buffer.isBuffer(body)) h["Content-Length"] = String(body.length);
      let req: http.ClientRequest;
      if (url.protocol === "https:") {
        const agent = proxy ? this.tunnelAgent(proxy) : this.httpsAgent;
        req = https.request(url, { method, headers: h, agent, signal: this.abort.signal });
      } else if (proxy) {
        // Absolute form, to the proxy; its credentials (and only its) go with the request.
        if (proxy.auth) h["Proxy-Authorization"] = proxy.auth;
        h.Host = url.host;
        req = http.request({
          host: proxy.host,
          port: proxy.port,
          method,
          path: `${url.origin}${url.pathname}${url.search}`,
          headers: h,
          agent: this.httpAgent,
          signal: this.abort.signal,
        });
      } else {
        req = http.request(url, { method, headers: h, agent: this.httpAgent, signal: this.abort.signal });
      }
      let settled = false;
      req.setTimeout(ms, () => {
        const err = new TransientError(`${method} ${url.host}: no data for ${ms / 1000} s (timed out)`);
        req.destroy(err);
      });
      req.on("error", (e) => {
        if (!settled) {
          settled = true;
          reject((proxy && url.protocol === "http:" && proxyConnectError(e, proxy)) || e);
        }
      });
      req.on("response", (res) => {
        settled = true;
        try {
          resolve(checked({ status: res.statusCode ?? 0, headers: res.headers, body: nodeBody(res), url }));
        } catch (e) {
          reject(e);
        }
      });
      if (body === null) req.end();
      else if (Buffer.isBuffer(body)) req.end(body);
      else {
        const src = body();
        src.on("error", (e) => req.destroy(e));
        src.pipe(req);
      }
    });
  }
}

/** Reads a whole (small) response body. */
export async function readBody(res: Response, limit = 64 << 20): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res.body) {
    n += (c as Buffer).length;
    if (n > limit) {
      res.body.destroy();
      throw new ChError(`response too large from ${res.url.host}: more than ${limit} bytes`);
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Discards a response body, keeping the connection usable. */
export async function drain(res: Response): Promise<void> {
  try {
    for await (const _ of res.body);
  } catch {
    // the connection is gone; nothing to keep
  }
}

// ---- Registry client ----

export interface RegistryOptions {
  tlsVerify: boolean;
  /** Authenticate with credentials from the start (--auth, $CH_IMAGE_AUTH). */
  auth: boolean;
  /** Pushing: tokens need pull,push scope; credentials may be asked for. */
  push: boolean;
  env?: Record<string, string | undefined>;
  /** Where credentials come from (tests); default: environment, else a prompt. */
  credentials?: Credentials;
}

export interface RequestOptions {
  headers?: Record<string, string>;
  body?: Body;
  /** Statuses returned to the caller instead of raising. */
  accept?: number[];
  /** What this is, for messages: "manifest", "blob sha256:...". */
  what?: string;
  /** A GET whose body is big and read with consume() (blobs): the fast client. */
  fast?: boolean;
}

function isLoopback(host: string): boolean {
  return host === "localhost" || /^127\.\d+\.\d+\.\d+$/.test(host) || host === "::1";
}

type Auth =
  | { kind: "none" }
  | { kind: "basic"; header: string }
  | { kind: "bearer"; token: string; scope: string; authed: boolean; at: number };

/** A Bearer token older than this that is refused has probably expired: get a fresh one. */
const TOKEN_FRESH_MS = 60_000;

/** One registry and repository: requests against /v2/REPO/..., with authentication. */
export class Registry {
  readonly ref: ImageRef;
  readonly repo: string;
  readonly hostport: string;
  private scheme: "https" | "http" = "https";
  private schemeKnown = false;
  private authState: Auth = { kind: "none" };
  private triedAnon = false;
  private usedCreds = false;
  private creds: Credentials;
  private transport: Transport;
  private opts: RegistryOptions;

  constructor(ref: ImageRef, transport: Transport, opts: RegistryOptions) {
    this.ref = canonical(ref);
    this.repo = repository(this.ref);
    this.hostport = `${this.ref.host}:${this.ref.port}`;
    this.transport = transport;
    this.opts = opts;
    this.creds = opts.credentials ?? credentialsFrom(opts.env ?? process.env, opts.auth || opts.push);
  }

  get signal(): AbortSignal {
    return this.transport.signal;
  }

  get refText(): string {
    return fullRef(this.ref);
  }

  url(path: string): URL {
    return new URL(`${this.scheme}://${this.hostport}/v2/${this.repo}/${path}`);
  }

  private authorization(url: URL): Record<string, string> {
    // The origin, scheme included: not to the same host over plain HTTP after a redirect.
    if (url.origin !== new URL(`${this.scheme}://${this.hostport}`).origin) return {};
    const a = this.authState;
    if (a.kind === "basic") return { Authorization: a.header };
    if (a.kind === "bearer" && a.token) return { Authorization: `Bearer ${a.token}` };
    return {};
  }

  /** Sends with the scheme decided (HTTPS, or HTTP where allowed and the server isn't TLS). */
  private async sendOnce(method: string, url: URL, headers: Record<string, string>, body: Body, fast = false): Promise<Response> {
    try {
      const ours = url.protocol === "https:" && url.host === new URL(`https://${this.hostport}`).host;
      if (ours && !this.schemeKnown && (isLoopback(this.ref.host ?? "") || !this.opts.tlsVerify)) {
        // May be plain HTTP: ask with a cheap handshake first.
        if (!(await this.transport.probeTls(url))) {
          verbose(`${this.hostport} does not speak TLS; using plain HTTP`);
          this.scheme = "http";
          this.schemeKnown = true;
          return this.sendOnce(method, new URL(url.href.replace(/^https:/, "http:")), headers, body, fast);
        }
        this.schemeKnown = true;
      }
      const res = await this.transport.send(method, url, headers, body, fast);
      if (url.host === new URL(`${this.scheme}://${this.hostport}`).host) this.schemeKnown = true;
      return res;
    } catch (e) {
      if (retryReason(e) !== null || e instanceof ChError) throw e;
      throw new ChError(networkMessage(e, url.host));
    }
  }

  /** A request to the registry (path relative to /v2/REPO/, or a full URL), authenticating
   * as challenged and following redirects. 5xx raise ServerError (callers retry); other
   * unexpected statuses raise a one-line error. */
  async request(method: string, path: string | URL, opts: RequestOptions = {}): Promise<Response> {
    let url = typeof path === "string" ? this.url(path) : path;
    const what = opts.what ?? url.pathname;
    let body = opts.body ?? null;
    let headers = opts.headers ?? {};
    for (let hops = 0, escalations = 0; ; ) {
      if (url.protocol === "https:" && this.scheme === "http" && url.host === new URL(`https://${this.hostport}`).host)
        url = new URL(url.href.replace(/^https:/, "http:"));
      // Query strings left out: a CDN redirect carries a signature there.
      verbose(`${method} ${url.origin}${url.pathname}${url.search ? "?..." : ""}`);
      const res = await this.sendOnce(method, url, { ...headers, ...this.authorization(url) }, body, opts.fast);
      verbose(`  HTTP ${res.status}`);
      if (res.status === 401 && !opts.accept?.includes(401)) {
        const header = res.headers["www-authenticate"];
        await drain(res);
        if (escalations++ < 4 && (await this.escalate(typeof header === "string" ? header : null, what))) continue;
        throw this.authFailure(what);
      }
      if ([301, 302, 303, 307, 308].includes(res.status) && res.headers.location && hops < 5) {
        await drain(res);
        hops++;
        url = new URL(res.headers.location, url);
        if (res.status === 303) {
          // "See other": a GET, without the body we were sending.
          method = "GET";
          body = null;
          headers = Object.fromEntries(Object.entries(headers).filter(([k]) => !/^content-/i.test(k)));
        }
        continue;
      }
      if (res.status >= 200 && res.status < 300) return res;
      if (opts.accept?.includes(res.status)) return res;
      const text = (await readBody(res, 1 << 16).catch(() => Buffer.alloc(0))).toString("utf8");
      throw this.statusError(res.status, what, text, res.headers);
    }
  }

  private authFailure(what: string): ChError {
    if (this.usedCreds) return new StatusError(`authentication failed (HTTP 401): ${what}: ${this.refText}`, 401);
    const hint =
      this.opts.auth || this.opts.push
        ? "set CH_IMAGE_USERNAME and CH_IMAGE_PASSWORD, or run on a terminal to be asked"
        : "try --auth (or set CH_IMAGE_USERNAME and CH_IMAGE_PASSWORD)";
    return new StatusError(`authentication required (HTTP 401), or not found: ${what}: ${this.refText}: ${hint}`, 401);
  }

  statusError(status: number, what: string, body: string, headers: IncomingHttpHeaders): StatusError {
    const detail = registryErrorText(body);
    const tail = detail ? ` (${detail})` : "";
    if (retryStatus(status)) return new ServerError(`registry error (HTTP ${status}): ${what}: ${this.refText}${tail}`, status);
    if (status === 404) return new StatusError(`not found: ${what}: ${this.refText}${tail}`, 404);
    if (status === 403) return new StatusError(`access denied (HTTP 403): ${what}: ${this.refText}${tail}`, 403);
    if (status === 429) {
      const after = headers["retry-after"] ? `, retry after ${headers["retry-after"]} s` : "";
      const hint = this.usedCreds ? "" : "; try --auth";
      return new StatusError(`registry rate limit exceeded (HTTP 429${after}): ${this.refText}${hint}`, 429);
    }
    return new StatusError(`unexpected HTTP ${status}: ${what}: ${this.refText}${tail}`, status);
  }

  /** The scope this client needs for its repository. */
  private neededScope(challenged: string | undefined): string {
    const actions = this.opts.push ? "pull,push" : "pull";
    const mine = `repository:${this.repo}:${actions}`;
    if (!challenged) return mine;
    // Keep what the registry asked for, and make sure our repository's actions are in it.
    const scopes = challenged.split(" ").filter((s) => !s.startsWith(`repository:${this.repo}:`));
    return [...scopes, mine].join(" ");
  }

  /** Moves to the next authentication level after a 401; false when there is none. */
  private async escalate(header: string | null, what: string): Promise<boolean> {
    if (!header) throw new ChError(`registry answered HTTP 401 without a WWW-Authenticate challenge: ${what}: ${this.refText}`);
    const challenges = parseChallenges(header);
    verbose(`  challenge: ${challenges.map((c) => c.scheme).join(", ")}`);
    const bearer = challenges.find((c) => c.scheme.toLowerCase() === "bearer");
    const basic = challenges.find((c) => c.scheme.toLowerCase() === "basic");
    if (bearer) {
      const realm = bearer.params.realm;
      if (!realm) throw new ChError(`WWW-Authenticate Bearer challenge without realm: ${this.refText}`);
      const scope = this.neededScope(bearer.params.scope);
      const cur = this.authState;
      if (cur.kind === "bearer" && cur.scope === scope && Date.now() - cur.at > TOKEN_FRESH_MS) {
        verbose("  token expired? getting a fresh one");
        const token = await this.token(realm, bearer.params.service, scope, cur.authed ? await this.creds.get() : null);
        if (token !== null) {
          this.authState = { ...cur, token, at: Date.now() };
          return true;
        }
      }
      // A new scope (e.g. push after pull) is asked for at the level we have.
      const newScope = cur.kind === "bearer" && cur.scope !== scope;
      if (!this.opts.auth && !this.opts.push && (!this.triedAnon || (newScope && cur.kind === "bearer" && !cur.authed))) {
        this.triedAnon = true;
        const token = await this.token(realm, bearer.params.service, scope, null);
        if (token !== null && !(cur.kind === "bearer" && cur.token === token && !newScope)) {
          this.authState = { kind: "bearer", token, scope, authed: false, at: Date.now() };
          return true;
        }
      }
      if (cur.kind === "bearer" && cur.authed && !newScope) return false;
      const creds = await this.creds.get();
      if (!creds) return false;
      this.usedCreds = true;
      const token = await this.token(realm, bearer.params.service, scope, creds);
      if (token === null)
        throw new ChError(`authentication failed: token request refused by ${new URL(realm).host}: ${this.refText}`);
      this.authState = { kind: "bearer", token, scope, authed: true, at: Date.now() };
      return true;
    }
    if (basic) {
      if (this.authState.kind === "basic") return false;
      const creds = await this.creds.get();
      if (!creds) return false;
      this.usedCreds = true;
      this.authState = { kind: "basic", header: basicHeader(creds.username, creds.password) };
      return true;
    }
    throw new ChError(
      `unsupported authentication scheme: ${challenges.map((c) => c.scheme).join(", ") || header}: ${this.refText}`,
    );
  }

  /** Gets a Bearer token from realm; null if refused. */
  private async token(
    realm: string,
    service: string | undefined,
    scope: string,
    creds: { username: string; password: string } | null,
  ): Promise<string | null> {
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new ChError(`invalid token realm in WWW-Authenticate: ${realm}`);
    }
    // Credentials never cross the network in clear: a plain-HTTP realm gets them only on loopback
    // (or with --tls-no-verify, which gives up on that protection anyway).
    if (creds && url.protocol === "http:" && !isLoopback(url.hostname.replace(/^\[|\]$/g, "")) && this.opts.tlsVerify)
      throw new ChError(
        `not sending credentials in clear to token server ${url.origin} (plain HTTP): ${this.refText}; use --tls-no-verify to allow`,
      );
    if (service) url.searchParams.set("service", service);
    for (const s of scope.split(" ")) if (s) url.searchParams.append("scope", s);
    const headers: Record<string, string> = creds ? { Authorization: basicHeader(creds.username, creds.password) } : {};
    verbose(`requesting ${creds ? "authenticated" : "anonymous"} token: ${url.origin}${url.pathname}`);
    return retrying(
      `token request to ${url.host}`,
      async () => {
        let res: Response;
        try {
          res = await this.transport.send("GET", url, headers);
        } catch (e) {
          if (retryReason(e) !== null || e instanceof ChError) throw e;
          throw new ChError(networkMessage(e, url.host));
        }
        if (res.status === 401 || res.status === 403) {
          await drain(res);
          verbose(`  token refused: HTTP ${res.status}`);
          return null;
        }
        const body = await readBody(res, 1 << 20);
        verbose(`  token response: HTTP ${res.status}`);
        if (retryStatus(res.status)) throw new ServerError(`token request to ${url.host}: HTTP ${res.status}`, res.status);
        if (res.status !== 200) throw new ChError(`token request to ${url.host} failed: HTTP ${res.status}`);
        let j: { token?: unknown; access_token?: unknown };
        try {
          j = JSON.parse(body.toString("utf8"));
        } catch {
          throw new ChError(`token request to ${url.host}: response is not JSON`);
        }
        const t = typeof j.token === "string" ? j.token : typeof j.access_token === "string" ? j.access_token : null;
        if (!t) throw new ChError(`token request to ${url.host}: no token in response`);
        return t;
      },
      this.signal,
    );
  }
}

function basicHeader(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`, "utf8").toString("base64")}`;
}

/** The message of a registry's JSON error body ({"errors":[{"code","message"}]}), if any. */
export function registryErrorText(body: string): string {
  try {
    const j = JSON.parse(body) as { errors?: { code?: string; message?: string }[] };
    if (Array.isArray(j.errors) && j.errors.length > 0)
      return j.errors
        .map((e) => [e.code, e.message].filter(Boolean).join(": "))
        .join("; ")
        .slice(0, 300);
  } catch {
    // not JSON
  }
  return "";
}
