// ch-image pull and push against real registries (Debian's docker-registry) on 127.0.0.1: plain
// HTTP, TLS from a test CA (trusted through SSL_CERT_FILE), htpasswd Basic auth and token auth
// (test/registry/token.ts), with a proxy in front of the plain one for the failure cases. The
// fixture images are written through the registry API by test/registry/fixtures.ts, not by
// ch-image push, so pull is tested on its own. Everything here is asynchronous: the token server
// and the proxy answer from this process, so ch-image must never run with spawnSync.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, CH_RUN, cleanup, type Result, run, tmp } from "../helpers.ts";
import { makeCA, makeSigningCert, type TestCA } from "../registry/certs.ts";
import { chEnv, chImage, startChImage } from "../registry/chimage.ts";
import { filesContaining, tree } from "../registry/files.ts";
import {
  busyboxLayer,
  type Image,
  type ImageConfig,
  type Layer,
  layerFromMembers,
  MT,
  makeImage,
  makeIndex,
  Pusher,
} from "../registry/fixtures.ts";
import { sleep } from "../registry/http.ts";
import { startProxy, type TestProxy } from "../registry/proxy.ts";
import { type Registry, startRegistry, tamperBlobOnDisk } from "../registry/registry.ts";
import { startTokenServer, type TokenServer } from "../registry/token.ts";

const USER = "alice";
const PASS = "pw-Zq8r-f1xture-secret";
const CREDS = { user: USER, pass: PASS };
const SECRETS = [PASS, Buffer.from(`${USER}:${PASS}`).toString("base64"), Buffer.from(PASS).toString("base64")];

/** The registry architecture of this host, as the client must pick it from an index. */
const HOST_ARCH = process.arch === "x64" ? "amd64" : process.arch === "arm64" ? "arm64" : process.arch;

const CONFIG: ImageConfig = {
  Env: ["FIXTURE_VAR=hello world", "PATH=/usr/local/bin:/usr/bin:/bin"],
  WorkingDir: "/work",
  Entrypoint: ["/bin/echo"],
  Cmd: ["from", "cmd"],
  Labels: { "org.example.fixture": "yes" },
};

let dir: string;
let n = 0;
const fresh = (suffix = "") => join(dir, `t${++n}${suffix}`);

let ca: TestCA;
let tokens: TokenServer;
let plain: Registry;
let tls: Registry;
let basic: Registry;
let token: Registry;
let px: TestProxy;

let bb: Layer;
let docker: Image;
let oci: Image;
let layered: Image;
/** The same layer twice (as images built by some tools have it), and a big one. */
let dupLayers: Image;
let layerL1: Layer;
let layerL2: Layer;
let perArch: Record<string, Image>;
/** About 3 MB of text that compresses poorly (base64 of random bytes): a layer big enough to
 * stall or cut in the middle. */
const big = randomBytes(9 << 18).toString("base64");
const sha = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");
/** Whether the file holds big, compared by hash (a failed comparison of 3 MB would flood the log). */
const isBig = (path: string) => sha(readFileSync(path)) === sha(big);

/** The directory of image ref in storage st (the reference as written, "/" -> "%", ":" -> "+"). */
const imgDir = (st: string, ref: string) => join(st, "img", ref.replaceAll("/", "%").replaceAll(":", "+"));

const env = (extra: Parameters<typeof chEnv>[0] = {}) => chEnv(extra);

function ok(r: Result, what = "ch-image"): void {
  assert.equal(r.status, 0, `${what} failed (${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
}

function failed(r: Result): void {
  assert.notEqual(r.status, 0, `expected failure, got success:\n${r.stdout}${r.stderr}`);
  assert.equal(r.signal, null, r.stderr);
}

async function pull(st: string, args: string[], e = env()): Promise<Result> {
  return chImage(["-s", st, "pull", ...args], e);
}

/** What storage holds: image names per `ch-image list`. */
async function listed(st: string): Promise<string[]> {
  const r = await chImage(["-s", st, "list"], env());
  ok(r, "list");
  return r.stdout.split("\n").filter(Boolean);
}

/** Makes storage directory st, as a ch-image that writes does (a directory of busybox imported). */
async function madeStorage(st: string): Promise<void> {
  ok(await chImage(["-s", st, "import", busyboxImage(fresh()), "seed"], env()), "import");
}

/** dlcache entries: verified blobs and partials. */
function dlcache(st: string): string[] {
  const d = join(st, "dlcache");
  return existsSync(d) ? readdirSync(d).sort() : [];
}

const hex = (digest: string) => digest.replace(/^sha256:/, "");
const blobPath = (repo: string, digest: string) => new RegExp(`^/v2/${repo}/blobs/${digest}$`);

async function waitFor(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

before(async () => {
  dir = tmp("ch-registry-");
  ca = makeCA(join(dir, "ca"));
  const signing = makeSigningCert(join(dir, "token-cert"));
  tokens = await startTokenServer({ signing, users: { [USER]: PASS } });
  [plain, tls, basic, token] = await Promise.all([
    startRegistry(join(dir, "reg-plain")),
    startRegistry(join(dir, "reg-tls"), { tls: ca }),
    startRegistry(join(dir, "reg-basic"), { htpasswd: { [USER]: PASS } }),
    startRegistry(join(dir, "reg-token"), { token: { server: tokens, rootcertbundle: signing.cert } }),
  ]);
  px = await startProxy(plain);

  bb = busyboxLayer(dir);
  const work = layerFromMembers([
    { path: "work/", type: "Directory" },
    { path: "work/hello.txt", body: "docker\n" },
  ]);
  docker = makeImage({ kind: "docker", layers: [bb, work], config: CONFIG });
  // OCI media types, the second layer an uncompressed tar (media type ...tar).
  oci = makeImage({
    kind: "oci",
    layers: [bb, layerFromMembers([{ path: "oci.txt", body: "oci\n" }], false)],
    config: CONFIG,
  });
  // Three layers: busybox; files; whiteouts of some of them (a file, a directory, an opaque
  // directory), a replaced file and a new one; plus a big file to stall on.
  layerL1 = layerFromMembers([
    { path: "etc/motd", body: "from layer 1\n" },
    { path: "old/", type: "Directory" },
    { path: "old/a", body: "a\n" },
    { path: "old/b", body: "b\n" },
    { path: "gone/", type: "Directory" },
    { path: "gone/x", body: "x\n" },
    { path: "keep.txt", body: "v1\n" },
  ]);
  layerL2 = layerFromMembers([
    { path: "etc/.wh.motd", body: "" },
    { path: ".wh.gone", body: "" },
    { path: "old/", type: "Directory" },
    { path: "old/.wh..wh..opq", body: "" },
    { path: "old/c", body: "c\n" },
    { path: "keep.txt", body: "v2\n" },
    { path: "added.txt", body: "added\n" },
  ]);
  const bigLayer = layerFromMembers([{ path: "big.bin", body: big }]);
  layered = makeImage({ kind: "docker", layers: [bb, layerL1, layerL2, bigLayer], config: { Cmd: ["/bin/sh"] } });
  dupLayers = makeImage({ kind: "docker", layers: [bb, bigLayer, bigLayer], config: { Cmd: ["/bin/sh"] } });
  const archLayer = (a: string) => layerFromMembers([{ path: "arch.txt", body: `${a}\n` }]);
  const forArch = (kind: "oci" | "docker", a: string, variant?: string) =>
    makeImage({ kind, layers: [bb, archLayer(a)], architecture: a, variant, config: { Cmd: ["/bin/sh"] } });
  perArch = {};
  const p = new Pusher(plain);
  await p.image("bb", "docker", docker);
  await p.image("bb", "oci", oci);
  await p.image("layers", "1", layered);
  await p.image("layers", "dup", dupLayers);
  // A manifest whose config is said to be bigger than a config may be.
  const hugeConfig = JSON.parse(docker.manifest.toString());
  hugeConfig.config.size = 17 << 20;
  await p.manifest("bb", "hugeconfig", docker.mediaType, Buffer.from(JSON.stringify(hugeConfig)));
  for (const kind of ["oci", "docker"] as const) {
    const images = [forArch(kind, "amd64"), forArch(kind, "arm64", "v8")];
    perArch[`${kind}/amd64`] = images[0];
    perArch[`${kind}/arm64`] = images[1];
    await p.index("multi", kind, makeIndex(kind, images));
  }
  await p.index("foreign", "1", makeIndex("oci", [forArch("oci", "ppc64le"), forArch("oci", "s390x")]));
  // A skinny (non-index) image for another architecture.
  await p.image("skinny", "ppc64le", forArch("docker", "ppc64le"));
  await new Pusher(tls).image("bb", "docker", docker);
  await new Pusher(basic, CREDS).image("bb", "docker", docker);
  const tp = new Pusher(token, CREDS);
  await tp.image("public/bb", "1", docker);
  await tp.image("private/bb", "1", docker);
});

after(async () => {
  await Promise.all([px?.stop(), plain?.stop(), tls?.stop(), basic?.stop(), token?.stop(), tokens?.stop()]);
  if (dir) cleanup(dir);
});

/** Checks a pull of `docker` (busybox plus /work/hello.txt) landed complete and runs. */
function checkDocker(st: string, ref: string): void {
  const img = imgDir(st, ref);
  assert.ok(existsSync(join(img, "bin/busybox")), `no bin/busybox in ${img}: ${existsSync(img) ? tree(img) : "no image"}`);
  assert.equal(readFileSync(join(img, "work/hello.txt"), "utf8"), "docker\n");
  const r = run(CH_RUN, ["-s", st, ref, "--", "/bin/cat", "/work/hello.txt"]);
  assert.equal(r.stdout, "docker\n", r.stderr);
}

describe("pull: formats", () => {
  it("pulls a Docker schema 2 image, keeps its config, writes ch/environment, and it runs", async () => {
    const st = fresh();
    const ref = `${plain.host}/bb:docker`;
    const r = await pull(st, [ref]);
    ok(r);
    checkDocker(st, ref);
    const img = imgDir(st, ref);
    assert.equal(
      readFileSync(join(img, "ch/environment"), "utf8"),
      "FIXTURE_VAR=hello world\nPATH=/usr/local/bin:/usr/bin:/bin\n",
    );
    const meta = JSON.parse(readFileSync(join(img, "ch/metadata.json"), "utf8"));
    assert.equal(meta.cwd, "/work");
    assert.deepEqual(meta.entrypoint, ["/bin/echo"]);
    assert.deepEqual(meta.cmd, ["from", "cmd"]);
    assert.deepEqual(meta.labels, { "org.example.fixture": "yes" });
    assert.equal(meta.env.FIXTURE_VAR, "hello world");
    assert.equal(meta.arch, "amd64");
    assert.deepEqual(JSON.parse(readFileSync(join(img, "ch/config.pulled.json"), "utf8")), JSON.parse(docker.config.toString()));
    const e = run(CH_RUN, ["-s", st, "--set-env", ref, "--", "/bin/sh", "-c", "echo $FIXTURE_VAR"]);
    assert.equal(e.stdout, "hello world\n", e.stderr);
    assert.deepEqual(await listed(st), [ref]);
  });

  it("pulls an OCI image (OCI media types, an uncompressed tar layer)", async () => {
    const st = fresh();
    const ref = `${plain.host}/bb:oci`;
    ok(await pull(st, [ref]));
    const img = imgDir(st, ref);
    assert.equal(readFileSync(join(img, "oci.txt"), "utf8"), "oci\n");
    const r = run(CH_RUN, ["-s", st, ref, "--", "/bin/cat", "/oci.txt"]);
    assert.equal(r.stdout, "oci\n", r.stderr);
  });

  it("pulls by digest, and into a name of our choosing", async () => {
    const st = fresh();
    ok(await pull(st, [`${plain.host}/bb@${docker.digest}`, "mine:1"]));
    checkDocker(st, "mine:1");
  });

  it("unpacks layers in order with whiteouts (file, directory, opaque directory)", async () => {
    const st = fresh();
    const ref = `${plain.host}/layers:1`;
    ok(await pull(st, [ref]));
    const img = imgDir(st, ref);
    assert.ok(!existsSync(join(img, "etc/motd")), "etc/motd whited out");
    assert.ok(!existsSync(join(img, "gone")), "gone/ whited out");
    assert.deepEqual(readdirSync(join(img, "old")), ["c"]);
    assert.equal(readFileSync(join(img, "keep.txt"), "utf8"), "v2\n");
    assert.equal(readFileSync(join(img, "added.txt"), "utf8"), "added\n");
    assert.ok(existsSync(join(img, "etc/passwd")), "the rest of etc stays");
    assert.deepEqual(
      tree(img).filter((p) => p.includes(".wh.")),
      [],
    );
    assert.ok(isBig(join(img, "big.bin")));
  });

  for (const kind of ["oci", "docker"] as const) {
    const what = kind === "oci" ? "an OCI image index" : "a Docker manifest list";
    it(`picks the host's architecture from ${what}, or --arch's`, async () => {
      const ref = `${plain.host}/multi:${kind}`;
      const st = fresh();
      ok(await pull(st, [ref]));
      assert.equal(readFileSync(join(imgDir(st, ref), "arch.txt"), "utf8"), `${HOST_ARCH}\n`);
      const other = HOST_ARCH === "amd64" ? "arm64" : "amd64";
      for (const arch of [other, other === "arm64" ? "arm64/v8" : "amd64"]) {
        const st2 = fresh();
        ok(await pull(st2, ["--arch", arch, ref]));
        assert.equal(readFileSync(join(imgDir(st2, ref), "arch.txt"), "utf8"), `${other}\n`, `--arch ${arch}`);
        const meta = JSON.parse(readFileSync(join(imgDir(st2, ref), "ch/metadata.json"), "utf8"));
        assert.match(meta.arch, other === "arm64" ? /^arm64/ : /^amd64$/);
      }
    });

    it(`fails clearly when ${what} lacks the architecture, listing what exists`, async () => {
      const ref = `${plain.host}/multi:${kind}`;
      const st = fresh();
      const r = await pull(st, ["--arch", "s390x", ref]);
      failed(r);
      assert.match(r.stderr, /s390x/);
      assert.match(r.stderr, /amd64/);
      assert.match(r.stderr, /arm64\/v8/);
      assert.ok(!existsSync(imgDir(st, ref)));
    });
  }

  it("fails clearly when the host's architecture is missing from an index", async () => {
    const ref = `${plain.host}/foreign:1`;
    const st = fresh();
    const r = await pull(st, [ref]);
    failed(r);
    assert.match(r.stderr, new RegExp(HOST_ARCH));
    assert.match(r.stderr, /ppc64le/);
    assert.match(r.stderr, /s390x/);
    assert.ok(!existsSync(imgDir(st, ref)));
  });

  it("refuses a single-architecture image of another architecture, unless --arch yolo", async () => {
    const ref = `${plain.host}/skinny:ppc64le`;
    const st = fresh();
    const r = await pull(st, [ref]);
    failed(r);
    assert.match(r.stderr, /ppc64le/);
    assert.match(r.stderr, /yolo/);
    assert.ok(!existsSync(imgDir(st, ref)));
    ok(await pull(st, ["--arch", "yolo", ref]));
    assert.equal(readFileSync(join(imgDir(st, ref), "arch.txt"), "utf8"), "ppc64le\n");
  });

  it("fails on an unknown tag and an unknown repository, naming them", async () => {
    for (const ref of [`${plain.host}/bb:nope`, `${plain.host}/nosuch/repo:1`]) {
      const st = fresh();
      const r = await pull(st, [ref]);
      failed(r);
      assert.match(r.stderr, /not found/i);
      assert.ok(r.stderr.includes(ref), r.stderr);
      assert.ok(!existsSync(imgDir(st, ref)));
    }
  });

  it("sends every manifest media type in Accept", async () => {
    px.clear();
    const st = fresh();
    ok(await pull(st, [`${px.host}/multi:oci`]));
    const gets = px.log.filter((e) => e.method === "GET" && e.path.includes("/manifests/"));
    assert.ok(gets.length >= 2, "the index, then the image manifest");
    for (const g of gets) {
      const accept = String(g.headers.accept ?? "")
        .split(",")
        .map((s) => s.trim().split(";")[0]);
      for (const t of [MT.dockerManifest, MT.dockerList, MT.ociManifest, MT.ociIndex])
        assert.ok(accept.includes(t), `${t} in ${accept}`);
    }
  });
});

describe("list", () => {
  const list = (st: string, args: string[]) => chImage(["-s", st, "list", ...args], env());

  it("names a remote image's architectures from its index, and what storage has", async () => {
    const st = fresh();
    const ref = `${plain.host}/multi:oci`;
    let r = await list(st, [ref]);
    ok(r);
    assert.match(r.stdout, /^in local storage: +no$/m);
    assert.match(r.stdout, /^available remotely: +yes$/m);
    assert.match(r.stdout, /^remote arch-aware: +yes$/m);
    const archs = [...r.stdout.matchAll(/^(?:archs available: +| {21})(\S+) +[0-9a-f]{11}$/gm)].map((m) => m[1]);
    assert.deepEqual(archs, ["amd64", "arm64/v8"], r.stdout);
    ok(await pull(st, [ref]));
    r = await list(st, [ref]);
    assert.match(r.stdout, new RegExp(`^in local storage: +yes \\(${HOST_ARCH}`, "m"), r.stdout);
    const long = await list(st, ["-l"]);
    ok(long);
    assert.match(long.stdout, new RegExp(ref.replace(/[.]/g, "\\.")));
    assert.match(long.stdout, new RegExp(HOST_ARCH));
  });

  it("gives a single-architecture image's architecture from its config, and says when there is none", async () => {
    const st = fresh();
    const skinny = await list(st, [`${plain.host}/skinny:ppc64le`]);
    ok(skinny);
    assert.match(skinny.stdout, /^remote arch-aware: +no$/m);
    assert.match(skinny.stdout, /^archs available: +ppc64le +[0-9a-f]{11}$/m);
    const none = await list(st, [`${plain.host}/no-such-image:1`]);
    ok(none);
    assert.match(none.stdout, /^available remotely: +no \(HTTP 404\)$/m);
  });
});

describe("pull: download cache", () => {
  it("downloads nothing the second time, and everything with --always-download", async () => {
    px.clear();
    const st = fresh();
    const ref = `${px.host}/bb:docker`;
    ok(await pull(st, [ref]));
    const blobs = () => px.count("GET", /\/blobs\//);
    assert.equal(blobs(), 3, "two layers and the config");
    ok(await pull(st, [ref]));
    assert.equal(blobs(), 3, "second pull: no blob downloaded");
    // Another image sharing the busybox layer: only its own blobs.
    ok(await pull(st, [`${px.host}/bb:oci`]));
    assert.equal(px.count("GET", blobPath("bb", bb.digest)), 1);
    assert.equal(px.count("GET", blobPath("bb", oci.configDigest)), 1);
    ok(await pull(st, ["--always-download", ref]));
    assert.equal(px.count("GET", blobPath("bb", bb.digest)), 2);
    checkDocker(st, ref);
  });

  it("downloads a layer listed twice once, and verified", async () => {
    px.clear();
    const st = fresh();
    const ref = `${px.host}/layers:dup`;
    ok(await pull(st, [ref]));
    assert.equal(px.count("GET", blobPath("layers", dupLayers.layers[1].digest)), 1);
    assert.ok(isBig(join(imgDir(st, ref), "big.bin")));
    const cached = join(st, "dlcache", `sha256-${hex(dupLayers.layers[1].digest)}`);
    assert.equal(sha(readFileSync(cached)), hex(dupLayers.layers[1].digest), "the cached blob is what its name says");
    assert.deepEqual(
      dlcache(st).filter((f) => f.endsWith(".partial")),
      [],
    );
  });

  it("downloads layers in parallel: a stalled layer doesn't hold up the others", async () => {
    px.clear();
    // The first layer is held mid-body; the later ones must arrive meanwhile.
    px.add({ method: "GET", path: bb.digest, action: { kind: "stall", after: 100_000 } });
    const st = fresh();
    const ref = `${px.host}/layers:1`;
    const p = startChImage(["-s", st, "pull", ref], env());
    await px.stalled();
    await waitFor("layers 2 to 4 in the download cache", () =>
      layered.layers.slice(1).every((l) => dlcache(st).includes(`sha256-${hex(l.digest)}`)),
    );
    assert.ok(!dlcache(st).includes(`sha256-${hex(bb.digest)}`));
    px.release();
    ok(await p.done);
    assert.equal(readFileSync(join(imgDir(st, ref), "keep.txt"), "utf8"), "v2\n");
  });
});

describe("pull: verification", () => {
  for (const where of ["proxy", "registry's disk"] as const) {
    it(`refuses a layer whose bytes don't match its digest (tampered at the ${where}), keeping nothing of it`, async () => {
      px.clear();
      const st = fresh();
      const ref = `${px.host}/bb:docker`;
      if (where === "proxy") px.add({ method: "GET", path: bb.digest, action: { kind: "tamper" } });
      else tamperBlobOnDisk(plain, bb.digest, Math.floor(bb.size / 2));
      let r: Result;
      try {
        r = await pull(st, [ref]);
      } finally {
        if (where !== "proxy") tamperBlobOnDisk(plain, bb.digest, Math.floor(bb.size / 2)); // flip it back
      }
      failed(r);
      assert.ok(r.stderr.includes(bb.digest), `message names the blob:\n${r.stderr}`);
      assert.match(r.stderr, /digest/i);
      assert.ok(!existsSync(imgDir(st, ref)), "no image");
      assert.deepEqual(
        dlcache(st).filter((f) => f.includes(hex(bb.digest))),
        [],
        "nothing of the bad blob in the download cache",
      );
      assert.deepEqual(await listed(st), []);
      // Served right again, it pulls (and the bad bytes were not kept).
      px.clear();
      ok(await pull(st, [ref]));
      checkDocker(st, ref);
    });
  }

  it("refuses a config blob that doesn't match its digest", async () => {
    px.clear();
    px.add({ method: "GET", path: docker.configDigest, action: { kind: "tamper" } });
    const st = fresh();
    const r = await pull(st, [`${px.host}/bb:docker`]);
    failed(r);
    assert.ok(r.stderr.includes(docker.configDigest), r.stderr);
    assert.ok(!existsSync(imgDir(st, `${px.host}/bb:docker`)));
    assert.deepEqual(
      dlcache(st).filter((f) => f.includes(hex(docker.configDigest))),
      [],
    );
  });

  it("refuses a config said to be too big, before downloading it", async () => {
    px.clear();
    const st = fresh();
    const r = await pull(st, [`${px.host}/bb:hugeconfig`]);
    failed(r);
    assert.match(r.stderr, /image config too large: 17825792 bytes, more than 16777216/);
    assert.equal(px.count("GET", /\/blobs\//), 0);
  });

  it("refuses a manifest pulled by digest that doesn't match it", async () => {
    px.clear();
    px.add({ method: "GET", path: `/manifests/${docker.digest}`, action: { kind: "tamper" } });
    const st = fresh();
    const r = await pull(st, [`${px.host}/bb@${docker.digest}`]);
    failed(r);
    assert.ok(r.stderr.includes(docker.digest), r.stderr);
    assert.match(r.stderr, /digest/i);
  });
});

describe("pull: retries and HTTP errors", () => {
  it("retries a 500 and succeeds", async () => {
    px.clear();
    px.add({ method: "GET", path: bb.digest, action: { kind: "status", status: 500 }, times: 2 });
    const st = fresh();
    const ref = `${px.host}/bb:docker`;
    const r = await pull(st, [ref]);
    ok(r);
    assert.equal(px.count("GET", blobPath("bb", bb.digest)), 3);
    assert.match(r.stderr, /500/);
    checkDocker(st, ref);
  });

  it("retries a manifest 503 and a reset connection", async () => {
    px.clear();
    px.add({ method: "GET", path: "/manifests/", action: { kind: "status", status: 503 }, times: 1 });
    px.add({ method: "GET", path: bb.digest, action: { kind: "reset" }, times: 1 });
    const st = fresh();
    const ref = `${px.host}/bb:docker`;
    ok(await pull(st, [ref]));
    checkDocker(st, ref);
  });

  it("gives up on a 500 that persists, with a clear message and nothing stored", async () => {
    px.clear();
    px.add({ method: "GET", path: bb.digest, action: { kind: "status", status: 500 } });
    const st = fresh();
    const ref = `${px.host}/bb:docker`;
    const r = await pull(st, [ref]);
    failed(r);
    assert.ok(px.count("GET", blobPath("bb", bb.digest)) > 1, "retried");
    assert.match(r.stderr, /500/);
    assert.ok(r.stderr.includes(bb.digest) || r.stderr.includes(hex(bb.digest).slice(0, 7)), r.stderr);
    assert.ok(!existsSync(imgDir(st, ref)));
  });

  for (const [status, message] of [
    [401, /401|auth/i],
    [403, /403|denied/i],
    [404, /404|not found/i],
    [429, /429|rate/i],
  ] as const) {
    it(`says what a ${status} means, without retrying it`, async () => {
      px.clear();
      px.add({
        method: "GET",
        path: "/manifests/",
        action: { kind: "status", status, headers: status === 429 ? { "Retry-After": "0" } : {} },
      });
      const st = fresh();
      const ref = `${px.host}/bb:docker`;
      const r = await pull(st, [ref]);
      failed(r);
      assert.match(r.stderr, message);
      assert.ok(r.stderr.includes("bb"), r.stderr);
      assert.equal(px.count("GET", /\/manifests\//), 1, "not retried");
      assert.ok(!existsSync(imgDir(st, ref)));
    });
  }
});

describe("pull: interrupted", () => {
  it("starts a blob over when the registry refuses to resume it (HTTP 416), instead of failing for good", async () => {
    px.clear();
    const st = fresh();
    const ref = `${px.host}/bb:docker`;
    await madeStorage(st);
    mkdirSync(join(st, "dlcache"), { recursive: true, mode: 0o755 });
    writeFileSync(join(st, "dlcache", `sha256-${hex(bb.digest)}.partial`), "not a prefix of the layer");
    px.add({ method: "GET", path: bb.digest, action: { kind: "status", status: 416 }, times: 1 });
    const r = await pull(st, ["-v", ref]);
    ok(r);
    assert.match(r.stderr, /refused the range \(HTTP 416\); downloading it all again/);
    assert.equal(px.count("GET", blobPath("bb", bb.digest)), 2);
    checkDocker(st, ref);
  });

  it("starts a blob over when the bytes kept from an earlier run were wrong", async () => {
    px.clear();
    const st = fresh();
    const ref = `${px.host}/bb:docker`;
    await madeStorage(st);
    mkdirSync(join(st, "dlcache"), { recursive: true, mode: 0o755 });
    writeFileSync(join(st, "dlcache", `sha256-${hex(bb.digest)}.partial`), "not a prefix of the layer");
    const r = await pull(st, ["-v", ref]);
    ok(r);
    assert.match(r.stderr, /resumed download doesn't match its digest; starting over/);
    assert.equal(px.count("GET", blobPath("bb", bb.digest)), 2);
    checkDocker(st, ref);
  });

  it("a connection cut mid-body is retried and the pull completes", async () => {
    px.clear();
    px.add({ method: "GET", path: layered.layers[3].digest, action: { kind: "cut", after: 500_000 }, times: 1 });
    const st = fresh();
    const ref = `${px.host}/layers:1`;
    const r = await pull(st, ["-v", ref]);
    ok(r);
    assert.ok(isBig(join(imgDir(st, ref), "big.bin")));
    assert.equal(px.count("GET", blobPath("layers", layered.layers[3].digest)), 2);
  });

  it("a connection cut every time fails the pull cleanly; the rerun downloads only what wasn't verified", async () => {
    px.clear();
    const bigDigest = layered.layers[3].digest;
    px.add({ method: "GET", path: bigDigest, action: { kind: "cut", after: 500_000 } });
    const st = fresh();
    const ref = `${px.host}/layers:1`;
    const r = await pull(st, [ref]);
    failed(r);
    assert.ok(px.count("GET", blobPath("layers", bigDigest)) > 1, "retried");
    assert.ok(r.stderr.includes(hex(bigDigest).slice(0, 7)), r.stderr);
    assert.ok(!existsSync(imgDir(st, ref)));
    assert.ok(!dlcache(st).includes(`sha256-${hex(bigDigest)}`));
    assert.deepEqual(await listed(st), []);
    const verified = [bb, layerL1, layerL2].map((l) => l.digest).concat(layered.configDigest);
    for (const d of verified) assert.ok(dlcache(st).includes(`sha256-${hex(d)}`), `${d} kept`);
    px.clear();
    ok(await pull(st, [ref]));
    for (const d of verified) assert.equal(px.count("GET", blobPath("layers", d)), 0, `${d} downloaded again`);
    assert.equal(px.count("GET", blobPath("layers", bigDigest)), 1);
    assert.ok(isBig(join(imgDir(st, ref), "big.bin")));
  });

  for (const sig of ["SIGKILL", "SIGINT"] as const) {
    it(`${sig === "SIGKILL" ? "kill -9" : "Ctrl-C (SIGINT)"} mid-download leaves storage consistent; the rerun downloads only what wasn't verified`, async () => {
      px.clear();
      const bigDigest = layered.layers[3].digest;
      px.add({ method: "GET", path: bigDigest, action: { kind: "stall", after: 1_000_000 } });
      const st = fresh();
      const ref = `${px.host}/layers:1`;
      const p = startChImage(["-s", st, "pull", ref], env());
      await px.stalled();
      const verified = [bb, layerL1, layerL2].map((l) => l.digest).concat(layered.configDigest);
      await waitFor("the other blobs verified", () => verified.every((d) => dlcache(st).includes(`sha256-${hex(d)}`)));
      p.child.kill(sig);
      const killed = await p.done;
      assert.ok(killed.signal === sig || killed.status === 130, `ended by ${sig}: ${killed.status ?? killed.signal}`);
      px.release();
      // Consistent: no image, nothing unverified under a blob's name, storage usable.
      assert.ok(!existsSync(imgDir(st, ref)));
      assert.ok(!dlcache(st).includes(`sha256-${hex(bigDigest)}`));
      assert.deepEqual(await listed(st), []);
      px.clear();
      const r = await pull(st, ["-v", ref]);
      ok(r);
      for (const d of verified) assert.equal(px.count("GET", blobPath("layers", d)), 0, `${d} downloaded again`);
      assert.equal(px.count("GET", blobPath("layers", bigDigest)), 1);
      assert.ok(isBig(join(imgDir(st, ref), "big.bin")));
      assert.deepEqual(
        dlcache(st).filter((f) => f.endsWith(".partial")),
        [],
      );
    });
  }
});

describe("pull: TLS", () => {
  const ref = () => `${tls.host}/bb:docker`;

  it("trusts the registry through SSL_CERT_FILE (system bundle plus the test CA)", async () => {
    const st = fresh();
    ok(await pull(st, [ref()], env({ caBundle: ca.bundle })));
    checkDocker(st, ref());
  });

  it("fails with a clear TLS error when the CA isn't trusted", async () => {
    const st = fresh();
    const r = await pull(st, [ref()], env());
    failed(r);
    assert.match(r.stderr, /certificate|TLS|SSL/i);
    assert.match(r.stderr, /--tls-no-verify|verify/i);
    assert.ok(!existsSync(imgDir(st, ref())));
  });

  it("pulls without verification with --tls-no-verify", async () => {
    const st = fresh();
    ok(await pull(st, ["--tls-no-verify", ref()], env()));
    checkDocker(st, ref());
  });
});

describe("pull: authentication", () => {
  /** A HOME and TMPDIR of the test's own for ch-image, to look into afterwards. */
  function withCreds(user: string, pass: string): { e: NodeJS.ProcessEnv; dirs: string[] } {
    const home = fresh("-home");
    const tmpd = fresh("-tmp");
    mkdirSync(home);
    mkdirSync(tmpd);
    return { e: env({ user, pass, extra: { HOME: home, TMPDIR: tmpd } }), dirs: [home, tmpd] };
  }

  /** Neither output nor storage (nor HOME, TMPDIR) holds the password, or a Basic header's worth of it. */
  function noSecrets(r: Result, dirs: string[], secrets = SECRETS): void {
    for (const s of secrets) assert.ok(!`${r.stdout}${r.stderr}`.includes(s), `output has a secret:\n${r.stderr}`);
    for (const d of dirs) if (existsSync(d)) assert.deepEqual(filesContaining(d, secrets), []);
  }

  it("token auth: a public repository anonymously (no credentials sent to the token server)", async () => {
    tokens.requests.length = 0;
    const st = fresh();
    const ref = `${token.host}/public/bb:1`;
    ok(await pull(st, [ref], env()));
    checkDocker(st, ref);
    assert.ok(tokens.requests.length > 0, "the token server was asked");
    assert.deepEqual(
      tokens.requests.map((t) => t.user),
      tokens.requests.map(() => null),
    );
    assert.ok(
      tokens.requests.every((t) => t.scopes.includes("repository:public/bb:pull")),
      JSON.stringify(tokens.requests),
    );
  });

  it("token auth: a private repository with CH_IMAGE_USERNAME/PASSWORD, anonymous first, secrets kept", async () => {
    tokens.requests.length = 0;
    const st = fresh();
    const ref = `${token.host}/private/bb:1`;
    const { e, dirs } = withCreds(USER, PASS);
    const r = await pull(st, ["-vv", ref], e);
    ok(r);
    checkDocker(st, ref);
    assert.equal(tokens.requests[0]?.user, null, "anonymous first");
    assert.ok(
      tokens.requests.some((t) => t.user === USER && t.status === 200),
      JSON.stringify(tokens.requests),
    );
    noSecrets(r, [st, ...dirs]);
  });

  it("follows a blob redirect to another host (a CDN, as Docker Hub does) without sending it the token", async () => {
    // In front of the token registry, a proxy answers every blob GET with 307 to the plain
    // registry's proxy (another origin), which has the same blobs.
    const front = await startProxy(token);
    try {
      for (const d of [bb.digest, ...docker.layers.map((l) => l.digest), docker.configDigest])
        front.add({
          method: "GET",
          path: `/blobs/${d}`,
          action: { kind: "status", status: 307, headers: { Location: `${px.url}/v2/bb/blobs/${d}?signed=1` } },
        });
      px.clear();
      const st = fresh();
      const ref = `${front.host}/private/bb:1`;
      const { e, dirs } = withCreds(USER, PASS);
      const r = await pull(st, ["-v", ref], e);
      ok(r);
      assert.ok(!r.stderr.includes("signed=1"), "a redirect's query (a CDN's signature) is not logged");
      checkDocker(st, ref);
      const cdn = px.log.filter((l) => l.method === "GET" && l.path.includes("/blobs/"));
      assert.equal(cdn.length, 3, "two layers and the config, from the other origin");
      assert.ok(
        cdn.every((l) => l.headers.authorization === undefined),
        "no Authorization header to another origin",
      );
      assert.ok(front.log.some((l) => l.status === 307));
      noSecrets(r, [st, ...dirs]);
    } finally {
      await front.stop();
    }
  });

  it("token auth: a private repository without credentials fails clearly", async () => {
    const st = fresh();
    const ref = `${token.host}/private/bb:1`;
    const r = await pull(st, [ref], env());
    failed(r);
    assert.match(r.stderr, /auth|401|denied/i);
    assert.ok(!existsSync(imgDir(st, ref)));
  });

  it("token auth: wrong credentials are a 401 error", async () => {
    tokens.requests.length = 0;
    const st = fresh();
    const ref = `${token.host}/private/bb:1`;
    const wrong = "wrong-Pw-39xx";
    const { e, dirs } = withCreds(USER, wrong);
    const r = await pull(st, ["-vv", ref], e);
    failed(r);
    assert.match(r.stderr, /authentication failed|401/i);
    assert.ok(tokens.requests.some((t) => t.status === 401));
    noSecrets(r, [st, ...dirs], [wrong, Buffer.from(`${USER}:${wrong}`).toString("base64")]);
  });

  it("Basic auth (htpasswd): with credentials it pulls, secrets kept", async () => {
    const st = fresh();
    const ref = `${basic.host}/bb:docker`;
    const { e, dirs } = withCreds(USER, PASS);
    const r = await pull(st, ["-vv", ref], e);
    ok(r);
    checkDocker(st, ref);
    noSecrets(r, [st, ...dirs]);
  });

  it("Basic auth (htpasswd): without credentials, or with wrong ones, it fails clearly", async () => {
    const ref = `${basic.host}/bb:docker`;
    const st = fresh();
    const anon = await pull(st, [ref], env());
    failed(anon);
    assert.match(anon.stderr, /auth|401/i);
    const wrong = await pull(st, [ref], env({ user: USER, pass: "nope-nope" }));
    failed(wrong);
    assert.match(wrong.stderr, /authentication failed|401/i);
    assert.ok(!wrong.stderr.includes("nope-nope"));
    assert.ok(!existsSync(imgDir(st, ref)));
  });
});

describe("pull: progress", () => {
  it("draws no progress when stderr isn't a terminal", async () => {
    px.clear();
    px.add({ method: "GET", path: layered.layers[3].digest, action: { kind: "pause", after: 500_000, ms: 800 } });
    const r = await pull(fresh(), [`${px.host}/layers:1`]);
    ok(r);
    assert.ok(!r.stderr.includes("\r"), JSON.stringify(r.stderr));
    assert.ok(!r.stderr.includes("\x1b["), JSON.stringify(r.stderr));
  });

  it("draws progress on a terminal", async () => {
    px.clear();
    px.add({ method: "GET", path: layered.layers[3].digest, action: { kind: "pause", after: 500_000, ms: 800 } });
    const st = fresh();
    const r = await chImage(["-s", st, "pull", `${px.host}/layers:1`], env(), { tty: true });
    ok(r);
    assert.ok(r.stdout.includes("\r") || r.stdout.includes("\x1b["), JSON.stringify(r.stdout));
  });
});

describe("push", () => {
  let src: string;
  let st: string;
  const NAME = "pushsrc:1";

  before(async () => {
    src = busyboxImage(dir, "pushsrc");
    st = fresh();
    ok(await chImage(["-s", st, "import", src, NAME], env()), "import");
  });

  it("sends layer, config and manifest; the image pulls back and runs, same files", async () => {
    px.clear();
    const dest = `${px.host}/pushed:1`;
    const r = await chImage(["-s", st, "push", NAME, dest], env());
    ok(r);
    const uploads = px.log.filter((e) => e.method === "PUT" && e.path.includes("/blobs/uploads/"));
    assert.equal(uploads.length, 2, "layer and config");
    assert.equal(px.count("PUT", /^\/v2\/pushed\/manifests\/1$/), 1);
    const m = await new Pusher(plain).get("pushed", "manifests/1", MT.dockerManifest);
    assert.equal(m.status, 200);
    const manifest = JSON.parse(m.body.toString());
    assert.equal(manifest.layers.length, 1);
    const back = fresh();
    const ref = `${plain.host}/pushed:1`;
    ok(await pull(back, [ref]));
    const img = imgDir(back, ref);
    const strip = (t: string[]) => t.filter((p) => !p.startsWith("ch/"));
    assert.deepEqual(strip(tree(img)), strip(tree(src)));
    assert.equal(sha(readFileSync(join(img, "bin/busybox"))), sha(readFileSync(join(src, "bin/busybox"))));
    const ran = run(CH_RUN, ["-s", back, ref, "--", "/bin/echo", "round trip"]);
    assert.equal(ran.stdout, "round trip\n", ran.stderr);
  });

  it("skips blobs the registry has", async () => {
    px.clear();
    const r = await chImage(["-s", st, "push", NAME, `${px.host}/pushed:2`], env());
    ok(r);
    assert.equal(px.count("POST", /\/blobs\/uploads\/$/), 0, `uploaded again:\n${r.stderr}`);
    assert.equal(px.count("HEAD", /\/blobs\//), 2);
    assert.equal(px.count("PUT", /^\/v2\/pushed\/manifests\/2$/), 1);
  });

  it("keeps the image config through push and pull (env, workdir, entrypoint, cmd, labels)", async () => {
    const s = fresh();
    ok(await pull(s, [`${plain.host}/bb:docker`, "withmeta"]));
    ok(await chImage(["-s", s, "push", "withmeta", `${plain.host}/withmeta:1`], env()));
    const back = fresh();
    ok(await pull(back, [`${plain.host}/withmeta:1`]));
    const meta = JSON.parse(readFileSync(join(imgDir(back, `${plain.host}/withmeta:1`), "ch/metadata.json"), "utf8"));
    assert.equal(meta.cwd, "/work");
    assert.deepEqual(meta.entrypoint, ["/bin/echo"]);
    assert.deepEqual(meta.cmd, ["from", "cmd"]);
    assert.deepEqual(meta.labels, { "org.example.fixture": "yes" });
    assert.equal(meta.env.FIXTURE_VAR, "hello world");
  });

  it("pushes a directory with --image", async () => {
    const s = fresh();
    ok(await chImage(["-s", s, "push", "--image", src, `${plain.host}/fromdir:1`], env()));
    const back = fresh();
    ok(await pull(back, [`${plain.host}/fromdir:1`]));
    assert.ok(existsSync(join(imgDir(back, `${plain.host}/fromdir:1`), "bin/busybox")));
  });

  it("token auth: pushes with credentials (secrets kept); refuses without or with wrong ones", async () => {
    const ok1 = await chImage(["-vv", "-s", st, "push", NAME, `${token.host}/private/pushed:1`], env({ user: USER, pass: PASS }));
    ok(ok1);
    for (const s of SECRETS) assert.ok(!`${ok1.stdout}${ok1.stderr}`.includes(s));
    assert.deepEqual(filesContaining(st, SECRETS), []);
    const m = await new Pusher(token, CREDS).get("private/pushed", "manifests/1", MT.dockerManifest);
    assert.equal(m.status, 200);
    const anon = await chImage(["-s", st, "push", NAME, `${token.host}/private/pushed:2`], env());
    failed(anon);
    assert.match(anon.stderr, /auth|401|denied/i);
    const wrong = await chImage(
      ["-s", st, "push", NAME, `${token.host}/private/pushed:3`],
      env({ user: USER, pass: "bad-pass" }),
    );
    failed(wrong);
    assert.match(wrong.stderr, /authentication failed|401/i);
  });

  it("Basic auth: pushes with credentials", async () => {
    const r = await chImage(["-s", st, "push", NAME, `${basic.host}/pushed:1`], env({ user: USER, pass: PASS }));
    ok(r);
    for (const s of SECRETS) assert.ok(!`${r.stdout}${r.stderr}`.includes(s));
    const m = await new Pusher(basic, CREDS).get("pushed", "manifests/1", MT.dockerManifest);
    assert.equal(m.status, 200);
  });

  it("TLS: pushes with the CA trusted through SSL_CERT_FILE", async () => {
    ok(await chImage(["-s", st, "push", NAME, `${tls.host}/pushed:1`], env({ caBundle: ca.bundle })));
    const r = await chImage(["-s", st, "push", NAME, `${tls.host}/pushed:2`], env());
    failed(r);
    assert.match(r.stderr, /certificate|TLS|SSL/i);
  });

  it("kill -9 mid-upload leaves storage consistent, and the rerun finishes", async () => {
    px.clear();
    px.add({ method: "PUT", path: "/blobs/uploads/", action: { kind: "hang" } });
    const dest = `${px.host}/interrupted:1`;
    const s = fresh();
    ok(await chImage(["-s", s, "import", src, NAME], env()), "import");
    const p = startChImage(["-s", s, "push", NAME, dest], env());
    await px.stalled();
    p.child.kill("SIGKILL");
    assert.equal((await p.done).signal, "SIGKILL");
    px.release();
    px.clear();
    assert.deepEqual(await listed(s), [NAME]);
    ok(await chImage(["-s", s, "push", NAME, dest], env()));
    const back = fresh();
    ok(await pull(back, [`${plain.host}/interrupted:1`]));
    assert.ok(existsSync(join(imgDir(back, `${plain.host}/interrupted:1`), "bin/busybox")));
  });

  it("retries an upload whose connection is reset", async () => {
    px.clear();
    px.add({ method: "PUT", path: "/blobs/uploads/", action: { kind: "reset" }, times: 1 });
    const s = fresh();
    ok(await chImage(["-s", s, "import", src, NAME], env()), "import");
    ok(await chImage(["-s", s, "push", NAME, `${px.host}/reset:1`], env()));
    const m = await new Pusher(plain).get("reset", "manifests/1", MT.dockerManifest);
    assert.equal(m.status, 200);
  });
});

describe("round trip: Debian", () => {
  const tarball = process.env.CH_TEST_DEBIAN_IMAGE;
  it("pushes a debootstrap image with ch-image, pulls it back, runs it, same files", {
    skip: tarball ? false : "CH_TEST_DEBIAN_IMAGE unset (.ci/setup-debian.sh sets it)",
  }, async () => {
    assert.ok(tarball);
    const st = fresh();
    ok(await chImage(["-s", st, "import", tarball, "debian:12"], env()), "import");
    ok(await chImage(["-s", st, "push", "debian:12", `${plain.host}/debian:12`], env()), "push");
    const back = fresh();
    const ref = `${plain.host}/debian:12`;
    ok(await pull(back, [ref]));
    const strip = (t: string[]) => t.filter((p) => !p.startsWith("ch/"));
    assert.deepEqual(strip(tree(imgDir(back, ref))), strip(tree(imgDir(st, "debian:12"))));
    const r = run(CH_RUN, ["-s", back, ref, "--", "/bin/cat", "/etc/debian_version"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, readFileSync(join(imgDir(st, "debian:12"), "etc/debian_version"), "utf8"));
    const ls = run(CH_RUN, ["-s", back, ref, "--", "/usr/bin/dpkg-query", "-W", "coreutils"]);
    assert.match(ls.stdout, /^coreutils\t\S+\n$/, ls.stderr);
  });
});
