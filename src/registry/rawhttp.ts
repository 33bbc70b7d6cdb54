// HTTP/1.1 GET whose response body is read straight into a buffer reused for every read (the
// `onread` option of net and tls sockets), for blob downloads. Node's http client gets a fresh
// 64 kB buffer from the allocator for every read and passes each through two streams: on
// loopback that costs five times the transfer itself (49 MB: 360 ms against 60 ms). Connections
// are kept alive per origin; a kept one that turns out closed before answering is replaced at
// once. Bodies: Content-Length, chunked, or up to the end of the connection. Through a proxy
// (proxy.ts): HTTPS in a CONNECT tunnel, plain HTTP as absolute-form requests to the proxy.
import type { IncomingHttpHeaders } from "node:http";
import * as net from "node:net";
import { isIP, type Socket } from "node:net";
import * as tls from "node:tls";
import { type HttpProxy, proxyConnectError, tunnel } from "./proxy.ts";

/** Bytes per read. */
const READ_SIZE = 1 << 20;
/** Most bytes of a response's status line and headers. */
const MAX_HEAD = 64 << 10;
/** Kept-alive connections per origin. */
const MAX_IDLE = 8;

export interface RawOptions {
  /** TLS options for https: URLs (ca, rejectUnauthorized); asked for when first needed. */
  tls: () => tls.ConnectionOptions;
  /** Idle time after which a request fails. */
  timeoutMs: number;
  signal: AbortSignal;
  /** Makes the error for a stalled connection to host. */
  timeoutError: (ms: number, host: string) => Error;
  /** The proxy for a URL, or null to connect directly (default: direct). */
  proxy?: (url: URL) => HttpProxy | null;
}

type Framing = { kind: "length"; left: number } | { kind: "chunked" } | { kind: "close" } | { kind: "none" };

/** Called with each piece of body (in the connection's buffer: valid only during the call),
 * then once with null at the end of the body, or with an error. */
type Sink = (chunk: Buffer | null, error?: Error) => void;

/** One connection and the exchange in progress on it. */
class Conn {
  readonly socket: Socket;
  readonly origin: string;
  /** The proxy that requests on this connection are addressed to in absolute form (plain HTTP
   * through a proxy), or null. */
  readonly forward: HttpProxy | null;
  /** What to do with the bytes that arrive (null: none expected; they are an error). */
  private onBytes: ((buf: Buffer) => void) | null = null;
  private onEnd: ((error: Error | null) => void) | null = null;
  /** Whether any byte of the current response arrived. */
  answered = false;
  closed = false;
  reused = false;

  /** A connection for url: directly, through proxy (plain HTTP), or over tunnel, a connection to
   * the host that a proxy made (HTTPS). */
  constructor(
    url: URL,
    opts: RawOptions,
    proxy: HttpProxy | null,
    tunnel: Socket | null,
    session: Buffer | undefined,
    onSession: (s: Buffer) => void,
  ) {
    this.origin = url.origin;
    this.forward = url.protocol === "https:" ? null : proxy;
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
    const bytes = (buf: Buffer) => {
      this.answered = true;
      if (this.onBytes) this.onBytes(buf);
      else this.socket.destroy(new Error("unexpected data from server"));
    };
    const onread = () => ({
      buffer: Buffer.allocUnsafeSlow(READ_SIZE),
      callback: (n: number, buf: Buffer) => {
        bytes(buf.subarray(0, n));
        return true;
      },
    });
    if (url.protocol === "https:") {
      const options: tls.ConnectionOptions = {
        ...opts.tls(),
        host,
        port,
        servername: isIP(host) ? undefined : host,
        ALPNProtocols: ["http/1.1"],
        session,
      };
      if (tunnel) {
        // TLS on a connection that exists ignores onread (Node 24): its reads come as 'data'
        // events, in fresh buffers (the proxy bounds the speed there anyway).
        this.socket = tls.connect({ ...options, socket: tunnel });
        this.socket.on("data", bytes);
      } else {
        // onread works for TLS sockets too (Node 15.1), though @types/node doesn't say so.
        this.socket = tls.connect({ ...options, onread: onread() } as tls.ConnectionOptions & { onread: net.OnReadOpts });
      }
      this.socket.on("session", onSession);
    } else if (this.forward) {
      this.socket = net.connect({ host: this.forward.host, port: this.forward.port, onread: onread() });
    } else {
      this.socket = net.connect({ host, port, onread: onread() });
    }
    this.socket.setNoDelay(true);
    this.socket.setTimeout(opts.timeoutMs, () => this.socket.destroy(opts.timeoutError(opts.timeoutMs, url.host)));
    const via = this.forward;
    this.socket.on("error", (e) => this.finish((via && proxyConnectError(e, via)) || e));
    this.socket.on("end", () => this.finish(null));
    this.socket.on("close", () => this.finish(new Error("socket hang up")));
  }

  private finish(error: Error | null): void {
    this.closed = true;
    const f = this.onEnd;
    this.onEnd = null;
    this.onBytes = null;
    f?.(error);
  }

  /** Sets where the bytes and the end of the connection go. */
  attach(onBytes: ((buf: Buffer) => void) | null, onEnd: ((error: Error | null) => void) | null): void {
    this.onBytes = onBytes;
    this.onEnd = onEnd;
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }
}

/** A response whose head was read; its body is read by consume(). */
export class RawResponse {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  private conn: Conn;
  private framing: Framing;
  /** Body bytes that came with the head or before consume(). */
  private early: Buffer[];
  /** How the connection ended before consume(), if it did. */
  private ended: Error | "eof" | null = null;
  private client: RawClient;
  private used = false;
  // Chunked decoding.
  private chunkLeft = 0;
  private state: "size" | "data" | "crlf" | "trailer" = "size";
  private line = "";

  constructor(client: RawClient, conn: Conn, status: number, headers: IncomingHttpHeaders, framing: Framing, early: Buffer) {
    this.client = client;
    this.conn = conn;
    this.status = status;
    this.headers = headers;
    this.framing = framing;
    // Until consume(): the connection is paused; what still comes is kept.
    const stash: Buffer[] = early.length > 0 ? [Buffer.from(early)] : [];
    this.early = stash;
    conn.attach(
      (buf) => stash.push(Buffer.from(buf)),
      (error) => {
        this.ended = error ?? "eof";
      },
    );
  }

  /** Passes every byte of the body to onData, in a buffer that is reused once it returns;
   * resolves at the end of the body. An exception from onData ends the transfer with it. */
  consume(onData: (chunk: Buffer) => void): Promise<void> {
    if (this.used) return Promise.reject(new Error("response body already read"));
    this.used = true;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const done = (error: Error | null) => {
        if (settled) return;
        settled = true;
        this.conn.attach(null, null);
        if (error) {
          this.conn.socket.destroy();
          reject(error);
        } else {
          // Not kept: a body up to the end of the connection, the server's "close", or bytes
          // beyond the body (which are no answer to anything we asked).
          const connection = String(this.headers.connection ?? "");
          this.client.release(
            this.conn,
            this.framing.kind !== "close" && !/\bclose\b/i.test(connection) && this.early.length === 0,
          );
          resolve();
        }
      };
      const sink: Sink = (chunk, error) => {
        if (error) return done(error);
        if (chunk === null) return done(null);
        try {
          onData(chunk);
        } catch (e) {
          done(e as Error);
        }
      };
      const feed = (buf: Buffer) => {
        try {
          this.body(buf, sink);
        } catch (e) {
          done(e as Error);
        }
      };
      this.conn.attach(feed, (error) => {
        if (this.framing.kind === "close" && error === null) done(null);
        else done(error ?? new Error("socket hang up: connection closed before the end of the body"));
      });
      if (this.framing.kind === "none" || (this.framing.kind === "length" && this.framing.left === 0)) {
        done(null);
        return;
      }
      while (this.early.length > 0 && !settled) feed(this.early.shift() as Buffer);
      if (settled) return;
      if (this.ended !== null) {
        if (this.ended === "eof" && this.framing.kind === "close") done(null);
        else done(this.ended === "eof" ? new Error("socket hang up: connection closed before the end of the body") : this.ended);
      } else {
        this.conn.resume();
      }
    });
  }

  /** Drops the rest of the body and the connection. */
  destroy(): void {
    this.used = true;
    this.conn.attach(null, null);
    this.conn.socket.destroy();
  }

  /** The body's bytes in buf, unframed. */
  private body(buf: Buffer, sink: Sink): void {
    const f = this.framing;
    if (f.kind === "close") {
      sink(buf);
      return;
    }
    if (f.kind === "length") {
      if (buf.length > f.left) throw new Error("server sent more than its Content-Length");
      f.left -= buf.length;
      sink(buf);
      if (f.left === 0) sink(null);
      return;
    }
    if (f.kind === "none") throw new Error("unexpected data from server");
    let i = 0;
    while (i < buf.length) {
      if (this.state === "data") {
        const k = Math.min(this.chunkLeft, buf.length - i);
        sink(buf.subarray(i, i + k));
        i += k;
        this.chunkLeft -= k;
        if (this.chunkLeft === 0) this.state = "crlf";
        continue;
      }
      const nl = buf.indexOf(10, i);
      const end = nl < 0 ? buf.length : nl;
      this.line += buf.toString("latin1", i, end);
      if (this.line.length > 4096) throw new Error("bad chunked encoding from server");
      i = end + 1;
      if (nl < 0) break;
      const line = this.line.replace(/\r$/, "");
      this.line = "";
      if (this.state === "crlf") {
        if (line !== "") throw new Error("bad chunked encoding from server");
        this.state = "size";
      } else if (this.state === "size") {
        const m = /^([0-9a-fA-F]+)\s*(;.*)?$/.exec(line);
        if (!m) throw new Error("bad chunked encoding from server");
        this.chunkLeft = Number.parseInt(m[1], 16);
        this.state = this.chunkLeft === 0 ? "trailer" : "data";
      } else if (line === "") {
        if (i < buf.length) throw new Error("unexpected data from server");
        this.state = "size";
        sink(null);
        return;
      }
    }
  }
}

/** Parses a response head (status line and header lines, without the blank line). */
export function parseHead(text: string): { status: number; headers: IncomingHttpHeaders } {
  const lines = text.split("\r\n");
  const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0]);
  if (!m) throw new Error(`malformed HTTP response: ${JSON.stringify(lines[0].slice(0, 80))}`);
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const c = l.indexOf(":");
    if (c <= 0) throw new Error(`malformed HTTP header: ${JSON.stringify(l.slice(0, 80))}`);
    const name = l.slice(0, c).trim().toLowerCase();
    const value = l.slice(c + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  return { status: Number(m[1]), headers };
}

/** How the body of a response to GET is delimited. */
export function framing(status: number, headers: IncomingHttpHeaders): Framing {
  if (status === 204 || status === 304) return { kind: "none" };
  const te = headers["transfer-encoding"];
  if (typeof te === "string" && /chunked\s*$/i.test(te)) return { kind: "chunked" };
  const cl = headers["content-length"];
  if (typeof cl === "string") {
    if (!/^\d+$/.test(cl)) throw new Error(`bad Content-Length from server: ${cl}`);
    return { kind: "length", left: Number(cl) };
  }
  return { kind: "close" };
}

/** GET requests with bodies read into reused buffers. */
export class RawClient {
  private idle = new Map<string, Conn[]>();
  private sessions = new Map<string, Buffer>();
  private all = new Set<Conn>();
  private opts: RawOptions;

  constructor(opts: RawOptions) {
    this.opts = opts;
    opts.signal.addEventListener("abort", () => this.close());
  }

  /** Ends every connection. */
  close(): void {
    for (const c of this.all) c.socket.destroy();
    this.all.clear();
    this.idle.clear();
  }

  /** Puts a connection whose exchange ended back in the pool (or closes it). */
  release(conn: Conn, reusable: boolean): void {
    const list = this.idle.get(conn.origin) ?? [];
    if (!reusable || conn.closed || list.length >= MAX_IDLE || this.opts.signal.aborted) {
      conn.socket.destroy();
      this.all.delete(conn);
      return;
    }
    // Still read, so that a close by the server is noticed (and data it shouldn't send is an error).
    conn.attach(null, () => {
      this.all.delete(conn);
      const l = this.idle.get(conn.origin);
      if (l?.includes(conn)) l.splice(l.indexOf(conn), 1);
    });
    conn.resume(); // it is left paused when the body came whole with the head
    list.push(conn);
    this.idle.set(conn.origin, list);
  }

  private async connect(url: URL): Promise<Conn> {
    const kept = this.idle.get(url.origin)?.pop();
    if (kept && !kept.closed) {
      kept.reused = true;
      return kept;
    }
    const proxy = this.opts.proxy?.(url) ?? null;
    let tunneled: Socket | null = null;
    if (proxy && url.protocol === "https:") {
      const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
      tunneled = await tunnel(proxy, host, Number(url.port || 443), this.opts);
      if (this.opts.signal.aborted) {
        tunneled.destroy();
        throw Object.assign(new Error("The operation was aborted"), { name: "AbortError" });
      }
    }
    const c = new Conn(url, this.opts, proxy, tunneled, this.sessions.get(url.origin), (s) => this.sessions.set(url.origin, s));
    this.all.add(c);
    return c;
  }

  /** GET url; resolves with the response once its head arrived. */
  async get(url: URL, headers: Record<string, string>): Promise<RawResponse> {
    for (;;) {
      if (this.opts.signal.aborted) throw Object.assign(new Error("The operation was aborted"), { name: "AbortError" });
      const conn = await this.connect(url);
      try {
        return await this.exchange(conn, url, headers);
      } catch (e) {
        this.all.delete(conn);
        // A kept connection the server had closed meanwhile: try a new one.
        if (conn.reused && !conn.answered) continue;
        throw e;
      }
    }
  }

  private exchange(conn: Conn, url: URL, headers: Record<string, string>): Promise<RawResponse> {
    conn.answered = false;
    // Through a proxy, plain HTTP names the whole URL, and the proxy's credentials go with it.
    const target = conn.forward ? `${url.origin}${url.pathname}${url.search}` : `${url.pathname}${url.search}`;
    const lines = [`GET ${target} HTTP/1.1`, `Host: ${url.host}`];
    if (conn.forward?.auth) lines.push(`Proxy-Authorization: ${conn.forward.auth}`);
    for (const [k, v] of Object.entries(headers)) {
      // A line break in a value (a token server's token) would add headers or a request.
      if (/[\r\n]/.test(`${k}${v}`)) return Promise.reject(new Error(`invalid character in HTTP header ${k}`));
      lines.push(`${k}: ${v}`);
    }
    const request = `${lines.join("\r\n")}\r\n\r\n`;
    return new Promise<RawResponse>((resolve, reject) => {
      let head = Buffer.alloc(0);
      const onBytes = (buf: Buffer): void => {
        head = head.length === 0 ? Buffer.from(buf) : Buffer.concat([head, buf]);
        const end = head.indexOf("\r\n\r\n");
        if ((end < 0 ? head.length : end) > MAX_HEAD) {
          conn.socket.destroy(new Error(`HTTP response head too large: more than ${MAX_HEAD} bytes`));
          return;
        }
        if (end < 0) return;
        let parsed: { status: number; headers: IncomingHttpHeaders };
        let frame: Framing;
        try {
          parsed = parseHead(head.toString("latin1", 0, end));
          frame = framing(parsed.status, parsed.headers);
        } catch (e) {
          conn.socket.destroy(e as Error);
          return;
        }
        const rest = head.subarray(end + 4);
        if (parsed.status >= 100 && parsed.status < 200) {
          // Informational (103 Early Hints): the answer follows.
          head = Buffer.alloc(0);
          if (rest.length > 0) onBytes(rest);
          return;
        }
        conn.pause();
        resolve(new RawResponse(this, conn, parsed.status, parsed.headers, frame, rest));
      };
      conn.attach(onBytes, (error) => reject(error ?? new Error("socket hang up")));
      conn.resume();
      conn.socket.write(request);
    });
  }
}
