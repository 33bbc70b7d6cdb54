// A reverse proxy in front of a registry, for the failure cases: it counts requests per path and,
// per rule, answers a status instead (500 N times, 429, 403...), resets the connection, never
// answers (hang, until released), serves a
// body with a byte flipped (wrong digest), cuts the connection mid-body, stalls mid-body (until
// released or the client goes away), or pauses mid-body. Plain HTTP, or HTTPS with a test CA's
// certificate (tls), to a plain or TLS registry; the Host header passes unchanged so the
// registry's upload URLs point back at the proxy.
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, request as httpsRequest } from "node:https";
import type { AddressInfo, Socket } from "node:net";
import type { TestCA } from "./certs.ts";
import type { Registry } from "./registry.ts";

export type Action =
  | { kind: "status"; status: number; headers?: Record<string, string>; body?: string }
  | { kind: "reset" }
  | { kind: "hang" }
  | { kind: "tamper"; offset?: number }
  | { kind: "cut"; after: number }
  | { kind: "stall"; after: number }
  | { kind: "pause"; after: number; ms: number };

export interface Rule {
  method?: string;
  /** Matched against the request's path (without the query); a string must be a substring. */
  path: RegExp | string;
  action: Action;
  /** How many requests the rule applies to (default: all). */
  times?: number;
  /** Requests it applied to so far. */
  hits: number;
}

export interface LoggedRequest {
  method: string;
  path: string;
  status: number;
  headers: IncomingMessage["headers"];
  /** What the rule did, if one applied. */
  action?: Action["kind"];
  /** Body bytes sent to the client. */
  sent: number;
}

export interface TestProxy {
  host: string;
  port: number;
  url: string;
  log: LoggedRequest[];
  add(rule: Omit<Rule, "hits">): Rule;
  clear(): void;
  /** Requests so far whose method matches and whose path matches re. */
  count(method: string, re: RegExp): number;
  /** Resolves when a stall rule has sent its bytes and is holding the response, or a hang rule
   * is holding a request (at once if one is held now). */
  stalled(timeoutMs?: number): Promise<void>;
  /** Lets held responses finish. */
  release(): void;
  stop(): Promise<void>;
}

export async function startProxy(upstream: Registry, opts: { tls?: TestCA } = {}): Promise<TestProxy> {
  const rules: Rule[] = [];
  const log: LoggedRequest[] = [];
  const sockets = new Set<Socket>();
  let onStall: (() => void)[] = [];
  let held: (() => void)[] = [];

  function pick(req: IncomingMessage, path: string): Rule | undefined {
    for (const r of rules) {
      if (r.method && r.method !== req.method) continue;
      if (typeof r.path === "string" ? !path.includes(r.path) : !r.path.test(path)) continue;
      if (r.times !== undefined && r.hits >= r.times) continue;
      r.hits++;
      return r;
    }
    return undefined;
  }

  function handle(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? "/").split("?")[0];
    const rule = pick(req, path);
    const entry: LoggedRequest = {
      method: req.method ?? "",
      path,
      status: 0,
      headers: req.headers,
      action: rule?.action.kind,
      sent: 0,
    };
    log.push(entry);
    const a = rule?.action;
    if (a?.kind === "status") {
      entry.status = a.status;
      req.resume();
      res.writeHead(a.status, { "Content-Type": "application/json", ...(a.headers ?? {}) });
      res.end(a.body ?? JSON.stringify({ errors: [{ code: "UNKNOWN", message: `proxy says ${a.status}` }] }));
      return;
    }
    if (a?.kind === "reset") {
      req.socket.destroy();
      return;
    }
    if (a?.kind === "hang") {
      // Never answers (the request body is read and dropped); release() cuts the connection.
      req.resume();
      held.push(() => req.socket.destroy());
      for (const f of onStall.splice(0)) f();
      return;
    }
    const up = (upstream.tls ? httpsRequest : request)(
      {
        host: "127.0.0.1",
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent: false,
        ca: upstream.caPem,
      },
      (ur) => {
        entry.status = ur.statusCode ?? 0;
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        let n = 0;
        let paused = false;
        // Where this response stops (cut, stall, pause): once per response.
        let after = a?.kind === "cut" || a?.kind === "stall" || a?.kind === "pause" ? a.after : Number.POSITIVE_INFINITY;
        const queue: Buffer[] = [];
        const send = (chunk: Buffer): void => {
          if (a?.kind === "tamper") {
            const total = Number(ur.headers["content-length"] ?? 0);
            const at = a.offset ?? Math.floor(total / 2);
            if (at >= n && at < n + chunk.length) {
              chunk = Buffer.from(chunk);
              chunk[at - n] ^= 0xff;
            }
          }
          if (a && n + chunk.length >= after && !paused) {
            const head = chunk.subarray(0, after - n);
            const rest = chunk.subarray(after - n);
            after = Number.POSITIVE_INFINITY;
            n += head.length;
            entry.sent = n;
            paused = true;
            ur.pause();
            res.write(head, () => {
              if (a.kind === "cut") {
                ur.destroy();
                res.socket?.destroy();
                return;
              }
              const go = () => {
                if (res.destroyed) return;
                paused = false;
                send(rest);
                for (const q of queue.splice(0)) send(q);
                ur.resume();
              };
              if (a.kind === "pause") setTimeout(go, a.ms);
              else if (a.kind !== "stall") go();
              else {
                held.push(go);
                for (const f of onStall.splice(0)) f();
              }
            });
            return;
          }
          if (paused) {
            queue.push(chunk);
            return;
          }
          n += chunk.length;
          entry.sent = n;
          res.write(chunk);
        };
        ur.on("data", send);
        ur.on("end", () => {
          const finish = () => (paused ? setTimeout(finish, 5) : res.end());
          finish();
        });
        ur.on("error", () => res.socket?.destroy());
        res.on("close", () => ur.destroy());
      },
    );
    up.on("error", () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.socket?.destroy();
    });
    req.pipe(up);
  }

  const server: Server = opts.tls
    ? createHttpsServer({ cert: readFileSync(opts.tls.serverCert), key: readFileSync(opts.tls.serverKey) }, handle)
    : createServer(handle);
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    port,
    url: `${opts.tls ? "https" : "http"}://127.0.0.1:${port}`,
    log,
    add(rule) {
      const r: Rule = { ...rule, action: { ...rule.action }, hits: 0 };
      rules.push(r);
      return r;
    },
    clear() {
      rules.length = 0;
      log.length = 0;
    },
    count(method, re) {
      return log.filter((e) => e.method === method && re.test(e.path)).length;
    },
    stalled: (timeoutMs = 30_000) =>
      new Promise<void>((resolve, reject) => {
        if (held.length) return resolve();
        const t = setTimeout(() => reject(new Error(`proxy: nothing stalled within ${timeoutMs} ms`)), timeoutMs);
        onStall.push(() => {
          clearTimeout(t);
          resolve();
        });
      }),
    release() {
      for (const g of held.splice(0)) g();
    },
    stop: () =>
      new Promise<void>((resolve) => {
        onStall = [];
        held = [];
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
