// ch-image pull through a real HTTP proxy (Debian's tinyproxy on loopback, requiring its own
// credentials), as on a login node that reaches registries only through one: HTTPS registries
// through CONNECT tunnels (TLS from a test CA, token auth over TLS, a blob redirect to another
// origin, the fault-injecting proxy of test/registry/proxy.ts in front of the registries), plain
// HTTP as absolute-form requests, no_proxy, and the proxy's refusals. A tap in front of tinyproxy
// keeps every byte ch-image sent it: the proxy's credentials are there, the registry's never.
// As curl (and Charliecloud) do, loopback registries go through the proxy unless no_proxy lists
// them: that is what lets these tests use one.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, CH_RUN, cleanup, type Result, run, tmp } from "../helpers.ts";
import { makeCA, makeSigningCert, type TestCA } from "../registry/certs.ts";
import { chEnv, chImage } from "../registry/chimage.ts";
import { busyboxLayer, type Image, layerFromMembers, MT, makeImage, Pusher } from "../registry/fixtures.ts";
import { freePort } from "../registry/http.ts";
import { startProxy, type TestProxy } from "../registry/proxy.ts";
import { type Registry, startRegistry } from "../registry/registry.ts";
import { startTinyproxy, type Tinyproxy } from "../registry/tinyproxy.ts";
import { startTokenServer, type TokenServer } from "../registry/token.ts";

const USER = "alice";
const PASS = "pw-Prx7-f1xture-secret";
const CREDS = { user: USER, pass: PASS };
const SECRETS = [PASS, Buffer.from(`${USER}:${PASS}`).toString("base64")];
const PROXY_USER = "pxuser";
const PROXY_PASS = "pxpass-Q93z";
const PROXY_BASIC = `Basic ${Buffer.from(`${PROXY_USER}:${PROXY_PASS}`).toString("base64")}`;

let dir: string;
let n = 0;
const fresh = () => join(dir, `st${++n}`);
let ca: TestCA;
let tokens: TokenServer;
/** Plain HTTP, anonymous; px (fault-injecting, plain) in front. */
let plain: Registry;
let px: TestProxy;
/** TLS with token auth (the token server over TLS too); front (fault-injecting, TLS) in front. */
let tokreg: Registry;
let front: TestProxy;
/** Another origin with the same blobs (a CDN): a TLS registry behind a TLS proxy. */
let cdnReg: Registry;
let cdn: TestProxy;
/** Plain HTTP with htpasswd Basic auth. */
let basic: Registry;
let tp: Tinyproxy;
let docker: Image;

const imgDir = (st: string, ref: string) => join(st, "img", ref.replaceAll("/", "%").replaceAll(":", "+"));

function ok(r: Result, what = "ch-image"): void {
  assert.equal(r.status, 0, `${what} failed (${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
}

function failed(r: Result): void {
  assert.notEqual(r.status, 0, `expected failure, got success:\n${r.stdout}${r.stderr}`);
  assert.equal(r.signal, null, r.stderr);
}

/** The pull landed complete and runs. */
function checkImage(st: string, ref: string): void {
  const img = imgDir(st, ref);
  assert.equal(readFileSync(join(img, "work/hello.txt"), "utf8"), "proxied\n");
  const r = run(CH_RUN, ["-s", st, ref, "--", "/bin/cat", "/work/hello.txt"]);
  assert.equal(r.stdout, "proxied\n", r.stderr);
}

/** What the proxy's clients sent it holds no registry credential: no Authorization header, no
 * password in any form. */
function noRegistrySecrets(sent: string): void {
  assert.ok(!/(^|\r\n)authorization:/i.test(sent), "an Authorization header reached the proxy");
  for (const s of SECRETS) assert.ok(!sent.includes(s), "a registry secret reached the proxy");
}

const env = (extra: Record<string, string>, opts: Parameters<typeof chEnv>[0] = {}) =>
  chEnv({ ...opts, extra: { ...(opts.extra ?? {}), ...extra } });

before(async () => {
  dir = tmp("ch-proxy-");
  ca = makeCA(join(dir, "ca"));
  const signing = makeSigningCert(join(dir, "token-cert"));
  tokens = await startTokenServer({ signing, users: { [USER]: PASS }, tls: ca });
  [plain, tokreg, cdnReg, basic] = await Promise.all([
    startRegistry(join(dir, "reg-plain")),
    startRegistry(join(dir, "reg-token"), { tls: ca, token: { server: tokens, rootcertbundle: signing.cert } }),
    startRegistry(join(dir, "reg-cdn"), { tls: ca }),
    startRegistry(join(dir, "reg-basic"), { htpasswd: { [USER]: PASS } }),
  ]);
  [px, front, cdn] = await Promise.all([startProxy(plain), startProxy(tokreg, { tls: ca }), startProxy(cdnReg, { tls: ca })]);
  tp = await startTinyproxy(join(dir, "tinyproxy"), { user: PROXY_USER, pass: PROXY_PASS });
  const work = layerFromMembers([
    { path: "work/", type: "Directory" },
    { path: "work/hello.txt", body: "proxied\n" },
  ]);
  docker = makeImage({ kind: "docker", layers: [busyboxLayer(dir), work], config: { Cmd: ["/bin/sh"] } });
  await new Pusher(plain).image("bb", "1", docker);
  await new Pusher(tokreg, CREDS).image("private/bb", "1", docker);
  await new Pusher(cdnReg).image("bb", "1", docker);
  await new Pusher(basic, CREDS).image("bb", "1", docker);
});

after(async () => {
  await Promise.all([tp?.stop(), px?.stop(), front?.stop(), cdn?.stop()]);
  await Promise.all([plain?.stop(), tokreg?.stop(), cdnReg?.stop(), basic?.stop(), tokens?.stop()]);
  if (dir) cleanup(dir);
});

const port = (url: string) => new URL(url).port;

describe("pull through an HTTP proxy", () => {
  it("HTTPS through CONNECT tunnels: TLS, token auth, a blob redirect to another origin, retries; the proxy gets its credentials and no registry's", async () => {
    front.clear();
    cdn.clear();
    tp.clear();
    tokens.requests.length = 0;
    // The registry redirects every blob to the CDN (as Docker Hub does), fails the first manifest
    // request (500), and the CDN cuts the first download of the big layer short.
    for (const d of [...docker.layers.map((l) => l.digest), docker.configDigest])
      front.add({
        method: "GET",
        path: `/blobs/${d}`,
        action: { kind: "status", status: 307, headers: { Location: `${cdn.url}/v2/bb/blobs/${d}?signed=1` } },
      });
    front.add({ method: "GET", path: "/manifests/1", action: { kind: "status", status: 500 }, times: 1 });
    cdn.add({ method: "GET", path: docker.layers[0].digest, action: { kind: "cut", after: 100_000 }, times: 1 });
    const st = fresh();
    const ref = `${front.host}/private/bb:1`;
    const r = await chImage(
      ["-s", st, "-v", "pull", ref],
      env({ HTTPS_PROXY: tp.url }, { caBundle: ca.bundle, user: USER, pass: PASS }),
    );
    ok(r);
    checkImage(st, ref);
    // Every origin was reached through a tunnel, and nothing else was asked of the proxy.
    const asked = tp.requests();
    const connects = new Set(asked.map((l) => l.replace(/ HTTP\/1\.1$/, "")));
    assert.deepEqual(
      [...connects].sort(),
      [`CONNECT 127.0.0.1:${front.port}`, `CONNECT 127.0.0.1:${port(tokens.realm)}`, `CONNECT 127.0.0.1:${cdn.port}`].sort(),
      asked.join("\n"),
    );
    // The proxy got its own credentials with each CONNECT, and no registry's.
    const sent = tp.sent();
    const heads = tp.connections().map((c) => c.slice(0, c.indexOf("\r\n\r\n")));
    assert.ok(heads.length >= 3);
    for (const h of heads) assert.match(h, /^CONNECT 127\.0\.0\.1:\d+ HTTP\/1\.1\r\n/);
    for (const h of heads) assert.ok(h.includes(`\r\nProxy-Authorization: ${PROXY_BASIC}`), h);
    noRegistrySecrets(sent);
    // The registry and the token server got the user's credentials (inside the tunnel), the
    // CDN none; none of them the proxy's.
    assert.ok(tokens.requests.some((t) => t.user === USER && t.status === 200));
    assert.ok(front.log.some((l) => String(l.headers.authorization ?? "").startsWith("Bearer ")));
    assert.ok(cdn.log.length >= 3 && cdn.log.every((l) => l.headers.authorization === undefined));
    for (const l of [...front.log, ...cdn.log]) assert.equal(l.headers["proxy-authorization"], undefined);
    // The failures were retried, through the proxy.
    assert.ok(front.log.some((l) => l.status === 500));
    assert.ok(cdn.log.some((l) => l.action === "cut"));
    assert.equal(cdn.log.filter((l) => l.path.endsWith(docker.layers[0].digest)).length, 2);
    assert.match(r.stderr, new RegExp(`through proxy http://127\\.0\\.0\\.1:${tp.port} \\(HTTPS_PROXY\\)`));
    for (const s of [PROXY_PASS, ...SECRETS]) assert.ok(!r.stderr.includes(s), "a secret in the output");
  });

  it("pushes through the proxy too (token auth over TLS, uploads in the tunnel)", async () => {
    tp.clear();
    front.clear();
    const st = fresh();
    const e = env({ HTTPS_PROXY: tp.url }, { caBundle: ca.bundle, user: USER, pass: PASS });
    ok(await chImage(["-s", st, "import", busyboxImage(dir, `push-src-${n}`), "src:1"], e), "import");
    ok(await chImage(["-s", st, "push", "src:1", `${front.host}/private/pushed:1`], e));
    assert.ok(front.log.some((l) => l.method === "PUT" && l.path.includes("/blobs/uploads/")));
    const m = await new Pusher(tokreg, CREDS).get("private/pushed", "manifests/1", MT.dockerManifest);
    assert.equal(m.status, 200);
    assert.ok(tp.requests().every((l) => l.startsWith("CONNECT ")));
    noRegistrySecrets(tp.sent());
  });

  it("plain HTTP as absolute-form requests to the proxy, with the fault-injecting proxy behind it", async () => {
    px.clear();
    tp.clear();
    px.add({ method: "GET", path: docker.layers[0].digest, action: { kind: "cut", after: 100_000 }, times: 1 });
    const st = fresh();
    const ref = `${px.host}/bb:1`;
    const r = await chImage(["-s", st, "pull", ref], env({ http_proxy: tp.url }));
    ok(r);
    checkImage(st, ref);
    const asked = tp.requests();
    assert.ok(asked.length >= 4, asked.join("\n"));
    assert.ok(
      asked.every((l) => l.startsWith(`GET http://127.0.0.1:${px.port}/v2/bb/`)),
      asked.join("\n"),
    );
    assert.ok(tp.sent().includes(`\r\nProxy-Authorization: ${PROXY_BASIC}\r\n`));
    // Every request reached the registry's side through tinyproxy, the cut one retried.
    assert.ok(px.log.length >= 4 && px.log.every((l) => /tinyproxy/.test(String(l.headers.via))), JSON.stringify(px.log));
    assert.equal(px.log.filter((l) => l.path.endsWith(docker.layers[0].digest)).length, 2);
  });

  it("no_proxy: what it lists is reached directly, by name, address, CIDR, port or *", async () => {
    const ref = `${px.host}/bb:1`;
    const cases: [Record<string, string>, boolean][] = [
      [{ NO_PROXY: "127.0.0.1" }, false],
      [{ no_proxy: "example.com, 127.0.0.0/8" }, false],
      [{ NO_PROXY: `127.0.0.1:${px.port}` }, false],
      [{ no_proxy: "*" }, false],
      [{ NO_PROXY: "127.0.0.1:1" }, true], // another port
      [{ NO_PROXY: "localhost" }, true], // a name doesn't cover an address (none is resolved)
    ];
    for (const [extra, proxied] of cases) {
      px.clear();
      tp.clear();
      const r = await chImage(["-s", fresh(), "pull", ref], env({ HTTP_PROXY: tp.url, HTTPS_PROXY: tp.url, ...extra }));
      ok(r, JSON.stringify(extra));
      const via = px.log.filter((l) => l.headers.via !== undefined).length;
      assert.ok(px.log.length > 0);
      assert.equal(via, proxied ? px.log.length : 0, JSON.stringify(extra));
      assert.equal(tp.requests().length > 0, proxied, JSON.stringify(extra));
    }
  });

  it("won't send registry credentials in clear through a proxy (plain HTTP)", async () => {
    tp.clear();
    const st = fresh();
    const ref = `${basic.host}/bb:1`;
    const r = await chImage(["-s", st, "pull", ref], env({ HTTP_PROXY: tp.url }, { user: USER, pass: PASS }));
    failed(r);
    assert.match(
      r.stderr,
      new RegExp(
        `not sending credentials in clear through proxy http://127\\.0\\.0\\.1:${tp.port} to http://${basic.host} \\(plain HTTP\\): add 127\\.0\\.0\\.1 to NO_PROXY, or use --tls-no-verify`,
      ),
    );
    noRegistrySecrets(tp.sent());
    assert.ok(!existsSync(imgDir(st, ref)));
    // Listed in NO_PROXY, it is reached directly and the pull works.
    ok(await chImage(["-s", st, "pull", ref], env({ HTTP_PROXY: tp.url, NO_PROXY: "127.0.0.1" }, { user: USER, pass: PASS })));
  });

  it("fails clearly when the proxy is down, wants credentials, or refuses them", async () => {
    const ref = `${cdn.host}/bb:1`;
    const e = (proxy: string) => env({ HTTPS_PROXY: proxy }, { caBundle: ca.bundle });
    const dead = await freePort();
    const down = await chImage(["-s", fresh(), "pull", ref], e(`http://127.0.0.1:${dead}`));
    failed(down);
    assert.match(
      down.stderr,
      new RegExp(`can't connect to proxy http://127\\.0\\.0\\.1:${dead} \\(HTTPS_PROXY\\): connection refused`),
    );
    const anon = await chImage(["-s", fresh(), "pull", ref], e(`http://127.0.0.1:${tp.port}`));
    failed(anon);
    assert.match(anon.stderr, /proxy http:\/\/127\.0\.0\.1:\d+ \(HTTPS_PROXY\) requires authentication \(HTTP 407\)/);
    // tinyproxy answers wrong credentials with 401, which only the proxy can have said.
    const wrong = await chImage(["-s", fresh(), "pull", ref], e(`http://${PROXY_USER}:not-it-77@127.0.0.1:${tp.port}`));
    failed(wrong);
    assert.match(wrong.stderr, /proxy authentication failed \(HTTP 40[17]\) at proxy http:\/\/127\.0\.0\.1:\d+ \(HTTPS_PROXY\)/);
    assert.ok(!wrong.stderr.includes("not-it-77"));
    // Plain HTTP in absolute form: the proxy's 407 is told from a registry's answer.
    const plainAnon = await chImage(
      ["-s", fresh(), "pull", `${px.host}/bb:1`],
      env({ HTTP_PROXY: `http://127.0.0.1:${tp.port}` }),
    );
    failed(plainAnon);
    assert.match(plainAnon.stderr, /proxy http:\/\/127\.0\.0\.1:\d+ \(HTTP_PROXY\) requires authentication \(HTTP 407\)/);
    const socks = await chImage(["-s", fresh(), "pull", ref], e(`socks5://${PROXY_USER}:${PROXY_PASS}@127.0.0.1:${tp.port}`));
    failed(socks);
    assert.match(socks.stderr, /HTTPS_PROXY: socks5:\/\/ proxies are not supported, only http:\/\//);
    assert.ok(!socks.stderr.includes(PROXY_PASS));
    // Each ends in one line in Charliecloud's format.
    for (const r of [down, anon, wrong, plainAnon, socks])
      assert.match(r.stderr.trimEnd().split("\n").pop() ?? "", /^ch-image\[\d+\]: .+ \([a-z-]+\.ts:\d+ \d+\)$/);
  });
});
