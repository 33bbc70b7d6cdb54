// Proxy settings from the environment, no_proxy matching as curl does it, the CONNECT handshake
// against a scripted proxy (its refusals), and what the blob client sends to a proxy: absolute
// form and the proxy's credentials for plain HTTP, a tunnel for HTTPS. The whole path through a
// real proxy (tinyproxy) is in test/integration/proxy.test.ts.
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { retryReason, TransientError } from "../../src/registry/http.ts";
import { noProxyMatches, ProxyError, parseProxy, proxyFor, proxySettings, tunnel } from "../../src/registry/proxy.ts";
import { RawClient } from "../../src/registry/rawhttp.ts";

describe("proxy settings", () => {
  it("reads https_proxy, then HTTPS_PROXY, then all_proxy, for https: URLs", () => {
    assert.equal(proxySettings({ https_proxy: "http://a:1", HTTPS_PROXY: "http://b:2" }).https?.shown, "http://a:1");
    assert.equal(proxySettings({ HTTPS_PROXY: "http://b:2" }).https?.from, "HTTPS_PROXY");
    assert.equal(proxySettings({ ALL_PROXY: "http://c:3" }).https?.shown, "http://c:3");
    assert.equal(proxySettings({ all_proxy: "http://c:3", https_proxy: " " }).https?.from, "all_proxy");
    assert.equal(proxySettings({}).https, null);
    assert.equal(proxySettings({ HTTPS_PROXY: "http://b:2" }).http, null);
  });

  it("reads http_proxy, and HTTP_PROXY except in a CGI program (httpoxy)", () => {
    assert.equal(proxySettings({ http_proxy: "http://a:1", HTTP_PROXY: "http://b:2" }).http?.shown, "http://a:1");
    assert.equal(proxySettings({ HTTP_PROXY: "http://b:2" }).http?.shown, "http://b:2");
    assert.equal(proxySettings({ HTTP_PROXY: "http://b:2", REQUEST_METHOD: "GET" }).http, null);
    assert.equal(proxySettings({ no_proxy: "a", NO_PROXY: "b" }).noProxy, "a");
    assert.equal(proxySettings({ NO_PROXY: "b" }).noProxy, "b");
  });

  it("takes host, port (1080 when none, as curl), and credentials (URL-decoded) only for the proxy", () => {
    const p = parseProxy("http://us%40er:p%3Ass@proxy.example:3128/ignored", "HTTPS_PROXY");
    assert.equal(p.host, "proxy.example");
    assert.equal(p.port, 3128);
    assert.equal(p.auth, `Basic ${Buffer.from("us@er:p:ss").toString("base64")}`);
    assert.equal(p.shown, "http://proxy.example:3128");
    const bare = parseProxy("proxy.example", "http_proxy");
    assert.equal(bare.port, 1080);
    assert.equal(bare.auth, null);
    assert.equal(parseProxy("http://[::1]:8080", "x").shown, "http://[::1]:8080");
  });

  it("refuses proxies other than http://, without repeating the password", () => {
    for (const v of ["socks5://u:secret-pw@h:1080", "https://u:secret-pw@h:443"]) {
      assert.throws(
        () => proxySettings({ HTTPS_PROXY: v }),
        (e: Error) =>
          /^HTTPS_PROXY: (socks5|https):\/\/ proxies are not supported/.test(e.message) && !e.message.includes("secret"),
      );
    }
    assert.throws(() => parseProxy("http://", "ALL_PROXY"), /ALL_PROXY: not a proxy URL/);
  });
});

describe("no_proxy, as curl matches it", () => {
  const cases: [string, string, number, boolean][] = [
    ["*", "anything.example", 443, true],
    ["foo, *", "anything.example", 443, true],
    ["example.com", "example.com", 443, true],
    ["example.com", "www.example.com", 443, true],
    ["example.com", "badexample.com", 443, false],
    [".example.com", "example.com", 443, true],
    [".example.com", "a.b.example.com", 443, true],
    ["*.example.com", "a.example.com", 443, true],
    ["EXAMPLE.com.", "www.Example.COM", 443, true],
    ["example.com", "example.com.", 443, true],
    ["example.com", "example.org", 443, false],
    ["a.example.com b.example.com", "b.example.com", 443, true],
    ["registry.example:5000", "registry.example", 5000, true],
    ["registry.example:5000", "registry.example", 443, false],
    ["127.0.0.1", "127.0.0.1", 80, true],
    ["127.0.0.1", "localhost", 80, false],
    ["localhost", "127.0.0.1", 80, false],
    ["localhost", "localhost", 80, true],
    ["0.0.1", "127.0.0.1", 80, false],
    ["10.0.0.0/8", "10.200.3.4", 443, true],
    ["10.0.0.0/8", "11.0.0.1", 443, false],
    ["192.168.0.0/16", "192.168.77.1", 443, true],
    ["192.168.0.0/33", "192.168.77.1", 443, false],
    ["127.0.0.1:5000", "127.0.0.1", 5000, true],
    ["127.0.0.1:5000", "127.0.0.1", 5001, false],
    ["::1", "[::1]", 443, true],
    ["[::1]:5000", "[::1]", 5000, true],
    ["[::1]:5000", "[::1]", 443, false],
    ["fe80::/10", "[fe80::1234]", 443, true],
    ["fe80::/10", "[2001:db8::1]", 443, false],
    ["10.0.0.0/8", "[::1]", 443, false],
    ["", "example.com", 443, false],
    [",, ,", "example.com", 443, false],
  ];
  for (const [list, host, port, want] of cases)
    it(`${JSON.stringify(list)} ${want ? "matches" : "doesn't match"} ${host}:${port}`, () => {
      assert.equal(noProxyMatches(list, host, port), want);
    });

  it("routes by scheme, and not at all what no_proxy lists", () => {
    const s = proxySettings({ HTTPS_PROXY: "http://p:1", no_proxy: "internal.example" });
    assert.equal(proxyFor(s, new URL("https://registry-1.docker.io/v2/"))?.shown, "http://p:1");
    assert.equal(proxyFor(s, new URL("http://registry-1.docker.io/v2/")), null);
    assert.equal(proxyFor(s, new URL("https://r.internal.example:5000/v2/")), null);
  });
});

/** A scripted proxy: answer(head) says what to send back to a CONNECT (null: pass). */
let server: Server;
let port = 0;
let heads: string[] = [];
let answer: (sock: Socket, head: string) => void = () => {};
const sockets = new Set<Socket>();

before(async () => {
  server = createServer((sock) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.on("error", () => {});
    let buf = "";
    const onData = (c: Buffer) => {
      buf += c.toString("latin1");
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buf.slice(0, end);
      buf = buf.slice(end + 4);
      heads.push(head);
      answer(sock, head);
    };
    sock.on("data", onData);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as { port: number }).port;
});

after(() => {
  for (const s of sockets) s.destroy();
  server.close();
});

const opts = { timeoutMs: 5000, timeoutError: (ms: number, what: string) => new TransientError(`${what}: ${ms} ms`) };

describe("CONNECT", () => {
  it("asks for the host and port, with the proxy's credentials, and hands over the connection", async () => {
    heads = [];
    answer = (s, head) => {
      if (head.startsWith("CONNECT")) s.write("HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n");
      else s.write(`echo ${head.split("\r\n")[0]}\n`);
    };
    const p = parseProxy(`http://u:pw@127.0.0.1:${port}`, "HTTPS_PROXY");
    const sock = await tunnel(p, "registry.example", 443, opts);
    assert.deepEqual(heads[0].split("\r\n"), [
      "CONNECT registry.example:443 HTTP/1.1",
      "Host: registry.example:443",
      "User-Agent: charliecloud",
      `Proxy-Authorization: Basic ${Buffer.from("u:pw").toString("base64")}`,
    ]);
    // What follows is between us and the far side.
    const got = new Promise<string>((r) => sock.once("data", (c: Buffer) => r(c.toString())));
    sock.resume();
    sock.write("PING x\r\n\r\n");
    assert.equal(await got, "echo PING x\n");
    sock.destroy();
    const v6 = await tunnel(parseProxy(`127.0.0.1:${port}`, "x"), "::1", 5000, opts);
    assert.match(heads[2], /^CONNECT \[::1\]:5000 HTTP\/1\.1\r\nHost: \[::1\]:5000\r\nUser-Agent: charliecloud$/);
    v6.destroy();
  });

  const refusals: [string, string, string | null, RegExp, boolean][] = [
    [
      "407 without credentials",
      "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
      null,
      /requires authentication \(HTTP 407\): give it as http:\/\/USER:PASSWORD@/,
      false,
    ],
    [
      "407 with credentials",
      "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
      "u:wrong-pw",
      /^proxy authentication failed \(HTTP 407\) at proxy http:\/\/127/,
      false,
    ],
    ["403", "HTTP/1.1 403 Forbidden\r\n\r\n", null, /refused to connect to registry\.example:443 \(HTTP 403 Forbidden\)/, false],
    [
      "502, as worth a retry",
      "HTTP/1.1 502 Bad Gateway\r\n\r\n",
      null,
      /refused to connect to registry\.example:443 \(HTTP 502 Bad Gateway\)/,
      true,
    ],
    ["a malformed answer", "garbage\r\n\r\n", null, /malformed answer to CONNECT/, false],
    ["bytes before the client spoke", "HTTP/1.1 200 OK\r\n\r\nearly bytes", null, /unexpected data after CONNECT/, false],
  ];
  for (const [what, reply, creds, re, retry] of refusals)
    it(`fails clearly on ${what}`, async () => {
      answer = (s) => s.write(reply);
      const p = parseProxy(`http://${creds ? `${creds}@` : ""}127.0.0.1:${port}`, "HTTPS_PROXY");
      await assert.rejects(tunnel(p, "registry.example", 443, opts), (e: Error) => {
        assert.ok(e instanceof ProxyError, String(e));
        assert.match(e.message, re);
        assert.ok(!e.message.includes("wrong-pw"));
        assert.equal(retryReason(e) !== null, retry);
        return true;
      });
    });

  it("a proxy that hangs up before answering is worth a retry; one that isn't there is not", async () => {
    answer = (s) => s.destroy();
    const p = parseProxy(`http://127.0.0.1:${port}`, "HTTPS_PROXY");
    await assert.rejects(tunnel(p, "r.example", 443, opts), (e: Error) => retryReason(e) !== null);
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
    const dead = (closed.address() as { port: number }).port;
    closed.close();
    await assert.rejects(
      tunnel(parseProxy(`http://127.0.0.1:${dead}`, "HTTPS_PROXY"), "r.example", 443, opts),
      (e: Error) =>
        e instanceof ProxyError &&
        e.message === `can't connect to proxy http://127.0.0.1:${dead} (HTTPS_PROXY): connection refused` &&
        retryReason(e) === null,
    );
  });

  it("times out a proxy that never answers", async () => {
    answer = () => {};
    const p = parseProxy(`http://127.0.0.1:${port}`, "HTTPS_PROXY");
    await assert.rejects(
      tunnel(p, "r.example", 443, { ...opts, timeoutMs: 200 }),
      /CONNECT r\.example:443 through proxy .*: 200 ms/,
    );
  });
});

describe("blob client through a proxy", () => {
  it("asks a plain-HTTP URL of the proxy in absolute form, with the proxy's credentials", async () => {
    heads = [];
    answer = (s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    const abort = new AbortController();
    const p = parseProxy(`http://u:pw@127.0.0.1:${port}`, "http_proxy");
    const c = new RawClient({
      tls: () => ({}),
      timeoutMs: 5000,
      signal: abort.signal,
      timeoutError: (ms, host) => new TransientError(`${host}: ${ms}`),
      proxy: (u) => (u.hostname === "registry.example" ? p : null),
    });
    const res = await c.get(new URL("http://registry.example:5000/v2/x/blobs/sha256:abc?sig=1"), { Accept: "*/*" });
    const parts: Buffer[] = [];
    await res.consume((b) => parts.push(Buffer.from(b)));
    assert.equal(Buffer.concat(parts).toString(), "hello");
    assert.deepEqual(heads[0].split("\r\n"), [
      "GET http://registry.example:5000/v2/x/blobs/sha256:abc?sig=1 HTTP/1.1",
      "Host: registry.example:5000",
      `Proxy-Authorization: Basic ${Buffer.from("u:pw").toString("base64")}`,
      "Accept: */*",
    ]);
    abort.abort();
  });

  it("tunnels HTTPS: the proxy sees CONNECT and then only TLS", async () => {
    heads = [];
    let tlsBytes = 0;
    answer = (s, head) => {
      if (!head.startsWith("CONNECT")) return;
      s.write("HTTP/1.1 200 OK\r\n\r\n");
      s.on("data", (c: Buffer) => {
        tlsBytes += c.length;
        if (c[0] === 0x16) s.destroy(); // a TLS handshake record: enough
      });
    };
    const abort = new AbortController();
    const p = parseProxy(`http://127.0.0.1:${port}`, "HTTPS_PROXY");
    const c = new RawClient({
      tls: () => ({}),
      timeoutMs: 5000,
      signal: abort.signal,
      timeoutError: (ms, host) => new TransientError(`${host}: ${ms}`),
      proxy: () => p,
    });
    await assert.rejects(c.get(new URL("https://registry.example/v2/x/blobs/sha256:abc"), { Authorization: "Bearer SECRET" }));
    assert.equal(heads[0].split("\r\n")[0], "CONNECT registry.example:443 HTTP/1.1");
    assert.ok(tlsBytes > 0);
    assert.ok(heads.every((h) => !h.includes("SECRET")));
    abort.abort();
  });
});
