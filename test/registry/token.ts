// A Docker token server (https://distribution.github.io/distribution/spec/auth/token/), enough for
// docker-registry's `auth: token`: GET /token?service=S&scope=repository:NAME:pull,push with
// optional Basic credentials answers {"token": JWT}, signed RS256 with the key of a certificate
// carried in the JWT's x5c header (the registry trusts it through rootcertbundle).
// Policy: right credentials get what they ask for; wrong credentials get 401; anonymous requests
// get pull on public repositories (publicRepo) and nothing else (an empty grant, as Docker Hub
// does: the registry then answers 401 insufficient_scope).
import { createPrivateKey, createPublicKey, randomUUID, sign, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { SigningCert, TestCA } from "./certs.ts";

export interface TokenRequest {
  service: string | null;
  scopes: string[];
  /** User name sent, null if anonymous. */
  user: string | null;
  /** What the server answered: 200 or 401. */
  status: number;
  /** Actions granted, per repository. */
  granted: Record<string, string[]>;
}

export interface TokenServer {
  realm: string;
  service: string;
  issuer: string;
  requests: TokenRequest[];
  stop(): Promise<void>;
}

export interface TokenOptions {
  signing: SigningCert;
  users: Record<string, string>;
  /** Repositories anyone may pull. Default: names starting with "public/". */
  publicRepo?: (name: string) => boolean;
  service?: string;
  issuer?: string;
  /** Serve HTTPS with the CA's server certificate (the realm is then https://). */
  tls?: TestCA;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString("base64url");

function jwt(signing: SigningCert, claims: object): string {
  const der = new X509Certificate(signing.certPem).raw;
  const header = { typ: "JWT", alg: "RS256", x5c: [der.toString("base64")] };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const sig = sign("sha256", Buffer.from(input), createPrivateKey(signing.keyPem));
  return `${input}.${b64url(sig)}`;
}

export async function startTokenServer(opts: TokenOptions): Promise<TokenServer> {
  const service = opts.service ?? "ch-test-registry";
  const issuer = opts.issuer ?? "ch-test-token-issuer";
  const isPublic = opts.publicRepo ?? ((n: string) => n.startsWith("public/"));
  createPublicKey(opts.signing.certPem); // fails early on a bad certificate
  const requests: TokenRequest[] = [];
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://x");
    const scopes = url.searchParams.getAll("scope").flatMap((s) => s.split(" ").filter(Boolean));
    let user: string | null = null;
    let ok = true;
    const auth = req.headers.authorization;
    if (auth?.startsWith("Basic ")) {
      const dec = Buffer.from(auth.slice(6), "base64").toString();
      const i = dec.indexOf(":");
      user = i < 0 ? dec : dec.slice(0, i);
      ok = i >= 0 && Object.hasOwn(opts.users, user) && opts.users[user] === dec.slice(i + 1);
    }
    const record: TokenRequest = { service: url.searchParams.get("service"), scopes, user, status: 200, granted: {} };
    requests.push(record);
    if (url.pathname !== "/token") {
      record.status = 404;
      res.writeHead(404).end();
      return;
    }
    if (!ok) {
      record.status = 401;
      res.writeHead(401, { "Content-Type": "application/json", "WWW-Authenticate": 'Basic realm="ch-test token server"' });
      res.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "wrong user name or password" }] }));
      return;
    }
    const access: { type: string; name: string; actions: string[] }[] = [];
    for (const s of scopes) {
      // repository:NAME:ACTIONS, where NAME may itself contain ":" (a port) only in theory.
      const m = /^(repository):(.+):([a-z*,]*)$/.exec(s);
      if (!m) continue;
      const wanted = m[3].split(",").filter(Boolean);
      const actions = user !== null ? wanted : wanted.filter((a) => a === "pull" && isPublic(m[2]));
      record.granted[m[2]] = actions;
      access.push({ type: m[1], name: m[2], actions });
    }
    const now = Math.floor(Date.now() / 1000);
    const token = jwt(opts.signing, {
      iss: issuer,
      sub: user ?? "",
      aud: service,
      exp: now + 600,
      nbf: now - 60,
      iat: now,
      jti: randomUUID(),
      access,
    });
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ token, access_token: token, expires_in: 600, issued_at: new Date().toISOString() }));
  };
  const server: Server = opts.tls
    ? createHttpsServer({ cert: readFileSync(opts.tls.serverCert), key: readFileSync(opts.tls.serverKey) }, handle)
    : createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    realm: `${opts.tls ? "https" : "http"}://127.0.0.1:${port}/token`,
    service,
    issuer,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
