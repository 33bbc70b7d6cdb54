// HTTP proxies from the environment, read as curl reads them: https_proxy or HTTPS_PROXY for
// https: URLs, http_proxy (or HTTP_PROXY, except in a CGI program) for http: ones, all_proxy or
// ALL_PROXY for both when those are unset; the lowercase name first. A proxy is http://[USER:
// PASSWORD@]HOST[:PORT] (no scheme means http://; no port means 1080, as curl has it); its
// credentials go only to the proxy, as Proxy-Authorization. no_proxy or NO_PROXY lists the hosts
// reached directly (noProxyMatches()). HTTPS goes through a CONNECT tunnel (the proxy sees the
// host and port, nothing else); plain HTTP is asked of the proxy in absolute form.
import * as net from "node:net";
import { BlockList, isIP, type Socket } from "node:net";
import { ChError } from "../sys/errors.ts";

export interface HttpProxy {
  host: string;
  port: number;
  /** Proxy-Authorization header value, or null. */
  auth: string | null;
  /** http://HOST:PORT, without credentials: for messages. */
  shown: string;
  /** The environment variable it came from. */
  from: string;
}

export interface ProxySettings {
  http: HttpProxy | null;
  https: HttpProxy | null;
  /** The no_proxy list, as given. */
  noProxy: string;
}

/** A proxy's refusal or failure: retried when the proxy says the far side failed (502-504). */
export class ProxyError extends ChError {
  readonly retry: boolean;
  constructor(message: string, retry = false) {
    super(message);
    this.retry = retry;
  }
}

const DEFAULT_PORT = 1080;

type Env = Record<string, string | undefined>;

function first(env: Env, names: string[]): { name: string; value: string } | null {
  for (const name of names) {
    const value = env[name]?.trim();
    if (value) return { name, value };
  }
  return null;
}

/** Parses a proxy setting; throws ChError for what we can't use (the value, which may hold a
 * password, is not repeated). */
export function parseProxy(value: string, from: string): HttpProxy {
  const text = /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ChError(`${from}: not a proxy URL (http://[USER:PASSWORD@]HOST[:PORT])`);
  }
  if (url.protocol !== "http:")
    throw new ChError(`${from}: ${url.protocol.slice(0, -1)}:// proxies are not supported, only http://`);
  if (!url.hostname) throw new ChError(`${from}: proxy URL without a host`);
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = url.port ? Number(url.port) : DEFAULT_PORT;
  let auth: string | null = null;
  if (url.username || url.password) {
    const dec = (s: string) => {
      try {
        return decodeURIComponent(s);
      } catch {
        return s;
      }
    };
    auth = `Basic ${Buffer.from(`${dec(url.username)}:${dec(url.password)}`, "utf8").toString("base64")}`;
  }
  return { host, port, auth, shown: `http://${isIP(host) === 6 ? `[${host}]` : host}:${port}`, from };
}

/** The proxies the environment asks for. */
export function proxySettings(env: Env = process.env): ProxySettings {
  const all = first(env, ["all_proxy", "ALL_PROXY"]);
  // HTTP_PROXY in a CGI program may come from a request's "HttpProxy:" header (httpoxy), so curl
  // reads only http_proxy; we read HTTP_PROXY too, except there.
  const httpNames = env.REQUEST_METHOD ? ["http_proxy"] : ["http_proxy", "HTTP_PROXY"];
  const h = first(env, httpNames) ?? all;
  const s = first(env, ["https_proxy", "HTTPS_PROXY"]) ?? all;
  return {
    http: h ? parseProxy(h.value, h.name) : null,
    https: s ? parseProxy(s.value, s.name) : null,
    noProxy: first(env, ["no_proxy", "NO_PROXY"])?.value ?? "",
  };
}

/** An entry of no_proxy split into host (or address, or CIDR) and optional port. */
function splitPort(entry: string): { name: string; port: number | null } {
  const v6 = /^\[([^\]]*)\](?::(\d+))?$/.exec(entry);
  if (v6) return { name: v6[1], port: v6[2] ? Number(v6[2]) : null };
  const m = /^([^:]*):(\d+)$/.exec(entry);
  if (m) return { name: m[1], port: Number(m[2]) };
  return { name: entry, port: null };
}

/** Whether the address ip (no brackets) is in entry: an address or address/bits. */
function ipMatches(ip: string, entry: string): boolean {
  const family = isIP(ip) === 6 ? "ipv6" : "ipv4";
  const slash = entry.indexOf("/");
  const addr = slash < 0 ? entry : entry.slice(0, slash);
  const entryFamily = isIP(addr) === 6 ? "ipv6" : isIP(addr) === 4 ? "ipv4" : null;
  if (entryFamily !== family) return false;
  const max = family === "ipv6" ? 128 : 32;
  const bits = slash < 0 ? max : Number(entry.slice(slash + 1));
  if (!/^\d+$/.test(slash < 0 ? String(max) : entry.slice(slash + 1)) || bits > max) return false;
  const list = new BlockList();
  list.addSubnet(addr, bits, family);
  return list.check(ip, family);
}

/** Whether host:port is to be reached directly per a no_proxy list, as curl matches it: entries
 * separated by commas (or spaces); "*" matches every host; a name matches itself and the names
 * under it (a leading dot, or "*.", is dropped: ".example.com" and "example.com" both match
 * example.com and www.example.com, not badexample.com), case-insensitively, a trailing dot
 * ignored; an address or CIDR (192.168.0.0/16, fe80::/10, IPv6 without brackets) matches a host
 * written as an address in it (no name is resolved: 127.0.0.1 doesn't cover localhost). Beyond
 * curl, an entry may end in :PORT ([::1]:5000 for IPv6), and then matches that port only. */
export function noProxyMatches(noProxy: string, host: string, port: number): boolean {
  const h = host
    .replace(/^\[(.*)\]$/, "$1")
    .replace(/\.$/, "")
    .toLowerCase();
  const hostIsIp = isIP(h) !== 0;
  for (const raw of noProxy.split(/[\s,]+/)) {
    if (!raw) continue;
    if (raw === "*") return true;
    const { name, port: p } = splitPort(raw.toLowerCase());
    if (p !== null && p !== port) continue;
    if (hostIsIp) {
      if (ipMatches(h, name)) return true;
      continue;
    }
    const pattern = name.replace(/^\*?\./, "").replace(/\.$/, "");
    if (!pattern) continue;
    if (h === pattern || h.endsWith(`.${pattern}`)) return true;
  }
  return false;
}

/** The proxy for url, or null to go direct. */
export function proxyFor(s: ProxySettings, url: URL): HttpProxy | null {
  const proxy = url.protocol === "https:" ? s.https : url.protocol === "http:" ? s.http : null;
  if (!proxy) return null;
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  return noProxyMatches(s.noProxy, url.hostname, port) ? null : proxy;
}

/** Host and port as written in a request target or Host header. */
export function authority(host: string, port: number): string {
  return `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}

/** A one-line message for a failure to reach the proxy. */
function connectMessage(e: NodeJS.ErrnoException, proxy: HttpProxy): string {
  const code = e.code ?? "";
  const where = `proxy ${proxy.shown} (${proxy.from})`;
  if (code === "ECONNREFUSED") return `can't connect to ${where}: connection refused`;
  if (code === "ENOTFOUND") return `can't resolve ${where}`;
  return `network error talking to ${where}: ${e.message}`;
}

/** The error for a proxy's refusal of our credentials (or lack of them). */
export function proxyAuthError(proxy: HttpProxy, status: number): ProxyError {
  return new ProxyError(
    proxy.auth
      ? `proxy authentication failed (HTTP ${status}) at proxy ${proxy.shown} (${proxy.from})`
      : `proxy ${proxy.shown} (${proxy.from}) requires authentication (HTTP ${status}): give it as http://USER:PASSWORD@HOST:PORT`,
  );
}

/** Most bytes of a proxy's answer to CONNECT. */
const MAX_HEAD = 64 << 10;

export interface TunnelOptions {
  timeoutMs: number;
  /** Makes the error for a proxy that doesn't answer in time. */
  timeoutError: (ms: number, what: string) => Error;
}

/** A connection to host:port through proxy (HTTP CONNECT), for TLS to start on at once. */
export function tunnel(proxy: HttpProxy, host: string, port: number, opts: TunnelOptions): Promise<Socket> {
  const target = authority(host, port);
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: proxy.host, port: proxy.port });
    sock.setNoDelay(true);
    let settled = false;
    let head: Buffer = Buffer.alloc(0);
    const done = (e: Error | null) => {
      if (settled) return;
      settled = true;
      sock.removeListener("data", onData);
      sock.setTimeout(0);
      if (e) {
        sock.destroy();
        reject(e);
      } else {
        // Left reading: TLS, started on it at once, takes over its reads (a paused socket would
        // never see the handshake's answer).
        resolve(sock);
      }
    };
    const onData = (c: Buffer) => {
      head = head.length === 0 ? c : Buffer.concat([head, c]);
      const end = head.indexOf("\r\n\r\n");
      if ((end < 0 ? head.length : end) > MAX_HEAD)
        return done(new ProxyError(`proxy ${proxy.shown}: answer to CONNECT too large`));
      if (end < 0) return;
      const line = head.toString("latin1", 0, end).split("\r\n")[0];
      const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(line);
      if (!m)
        return done(new ProxyError(`proxy ${proxy.shown}: malformed answer to CONNECT: ${JSON.stringify(line.slice(0, 80))}`));
      const status = Number(m[1]);
      if (status >= 200 && status < 300) {
        // The far side speaks only once spoken to (TLS): anything more is no answer of its.
        if (head.length > end + 4) return done(new ProxyError(`proxy ${proxy.shown}: unexpected data after CONNECT`));
        return done(null);
      }
      const reason = m[2] ? ` ${m[2].slice(0, 80)}` : "";
      // A CONNECT is answered by the proxy only: its 401 (as tinyproxy says it) is a 407.
      if (status === 407 || status === 401) return done(proxyAuthError(proxy, status));
      done(
        new ProxyError(
          `proxy ${proxy.shown} refused to connect to ${target} (HTTP ${status}${reason})`,
          status >= 502 && status <= 504,
        ),
      );
    };
    sock.on("data", onData);
    sock.on("error", (e: NodeJS.ErrnoException) => {
      if (settled) return;
      // Dropped connections stay retryable (by their code); others become one clear line.
      if (e.code === "ECONNREFUSED" || e.code === "ENOTFOUND") done(new ProxyError(connectMessage(e, proxy)));
      else done(e);
    });
    sock.on("close", () =>
      done(new Error(`socket hang up: proxy ${proxy.shown} closed the connection before answering CONNECT`)),
    );
    sock.setTimeout(opts.timeoutMs, () =>
      done(opts.timeoutError(opts.timeoutMs, `CONNECT ${target} through proxy ${proxy.shown}`)),
    );
    const lines = [`CONNECT ${target} HTTP/1.1`, `Host: ${target}`, "User-Agent: charliecloud"];
    if (proxy.auth) lines.push(`Proxy-Authorization: ${proxy.auth}`);
    sock.write(`${lines.join("\r\n")}\r\n\r\n`);
  });
}

/** The error for a failure to reach a proxy directly (absolute-form requests), or null. */
export function proxyConnectError(e: unknown, proxy: HttpProxy): ProxyError | null {
  const err = e as NodeJS.ErrnoException;
  if (err?.code === "ECONNREFUSED" || err?.code === "ENOTFOUND") return new ProxyError(connectMessage(err, proxy));
  return null;
}
