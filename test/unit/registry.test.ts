// The registry client's pure parts: references, manifests and architectures, WWW-Authenticate,
// digest verification while streaming, retry classification, image metadata.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { setVerbosity } from "../../src/cli/log.ts";
import { checkDigest, Digester, DigestMismatch } from "../../src/registry/cache.ts";
import { authFromEnv } from "../../src/registry/commands.ts";
import {
  Cancelled,
  notTls,
  parseChallenges,
  Registry,
  type Response,
  registryErrorText,
  retryDelayMs,
  retrying,
  retryReason,
  retryStatus,
  ServerError,
  StatusError,
  TransientError,
  type Transport,
} from "../../src/registry/http.ts";
import {
  ACCEPT_MANIFESTS,
  archCandidates,
  checkSkinnyArch,
  configFromMetadata,
  type Descriptor,
  environmentFile,
  hostArch,
  MT,
  metadataFromConfig,
  parseManifest,
  selectArch,
} from "../../src/registry/manifest.ts";
import { bounded, resolveArch, writeMetadata } from "../../src/registry/pull.ts";
import { canonical, fullRef, parseRef, refString, repository, storageName, version } from "../../src/registry/reference.ts";
import { ChError } from "../../src/sys/errors.ts";

setVerbosity(-1); // retries are announced on stderr; not here
process.env.CH_IMAGE_RETRY_DELAY_MS = "0";

const HEX = "a".repeat(64);
const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;
const D3 = `sha256:${"3".repeat(64)}`;
const D4 = `sha256:${"4".repeat(64)}`;

function syntaxError(ref: string, where: string): void {
  assert.throws(
    () => parseRef(ref),
    (e: Error) => e instanceof ChError && e.message.startsWith(`image ref syntax, ${where}: ${ref}`),
    ref,
  );
}

describe("image references", () => {
  it("parses Charliecloud's forms", () => {
    const cases: [string, string | null, number | null, string[], string, string | null, string | null][] = [
      ["name", null, null, [], "name", null, null],
      ["path1/name", null, null, ["path1"], "name", null, null],
      ["path1/path2/name", null, null, ["path1", "path2"], "name", null, null],
      ["example.com/name", "example.com", null, [], "name", null, null],
      ["example.com:8080/name", "example.com", 8080, [], "name", null, null],
      ["examplecom:8080/name", "examplecom", 8080, [], "name", null, null],
      ["localhost/name", "localhost", null, [], "name", null, null],
      ["name:tag", null, null, [], "name", "tag", null],
      [`name@sha256:${HEX}`, null, null, [], "name", null, HEX],
      ["example.com:8080/path1/path2/name:tag", "example.com", 8080, ["path1", "path2"], "name", "tag", null],
      [`127.0.0.1:5000/a/b:1.0@sha256:${HEX}`, "127.0.0.1", 5000, ["a"], "b", "1.0", HEX],
    ];
    for (const [text, host, port, path, name, tag, digest] of cases) {
      assert.deepEqual(parseRef(text), { host, port, path, name, tag, digest }, text);
      assert.equal(refString(parseRef(text)), text);
    }
  });

  it("reads storage directory names (% for /)", () => {
    assert.equal(refString(parseRef("example.com:8080%path1%path2%name:tag")), "example.com:8080/path1/path2/name:tag");
  });

  it("refuses bad syntax, saying where", () => {
    syntaxError("name*", "char 5");
    syntaxError("example.com:/path1/name", "char 13");
    syntaxError("/path1/name", "char 1");
    syntaxError("path1/", "at end");
    syntaxError("name@sha512:feeddad", "char 5");
    syntaxError("name@sha256:feeddad", "char 5"); // digests are whole
    syntaxError("Name", "char 1");
    syntaxError("", "at end");
    syntaxError("host:99999/name", "char 6");
    syntaxError("name:bad!tag", "char 6");
  });

  it("adds defaults only to talk to the registry: Docker Hub, library/, latest", () => {
    assert.equal(fullRef(parseRef("alpine")), "registry-1.docker.io:443/library/alpine:latest");
    assert.equal(fullRef(parseRef("user/image:1")), "registry-1.docker.io:443/user/image:1");
    assert.equal(fullRef(parseRef("docker.io/alpine")), "registry-1.docker.io:443/library/alpine:latest");
    assert.equal(fullRef(parseRef("quay.io/name")), "quay.io:443/name:latest");
    assert.equal(fullRef(parseRef(`alpine@sha256:${HEX}`)), `registry-1.docker.io:443/library/alpine@sha256:${HEX}`);
    const c = canonical(parseRef("127.0.0.1:5000/a/b:7"));
    assert.equal(repository(c), "a/b");
    assert.equal(version(c), "7");
    assert.equal(version(parseRef(`a:7@sha256:${HEX}`)), `sha256:${HEX}`);
  });

  it("stores an image under its reference with tag latest added, so ch-run finds it by any spelling", () => {
    assert.equal(storageName(parseRef("alpine")), "alpine:latest");
    assert.equal(storageName(parseRef("alpine:3.19")), "alpine:3.19");
    assert.equal(storageName(parseRef("127.0.0.1:5000/busybox:1")), "127.0.0.1:5000/busybox:1");
  });
});

describe("manifests", () => {
  const manifest = { schemaVersion: 2, config: { digest: D1, size: 10 }, layers: [{ digest: D2, size: 20 }] };
  const index = { schemaVersion: 2, manifests: [{ digest: D1, platform: { architecture: "amd64", os: "linux" } }] };
  const buf = (j: object) => Buffer.from(JSON.stringify(j));

  it("asks for every manifest and index type", () => {
    for (const t of [MT.ociIndex, MT.dockerList, MT.ociManifest, MT.dockerManifest]) assert.ok(ACCEPT_MANIFESTS.includes(t), t);
  });

  it("tells an index from a manifest by Content-Type, then mediaType, then shape", () => {
    assert.equal(parseManifest(buf(manifest), MT.dockerManifest).kind, "manifest");
    assert.equal(parseManifest(buf(manifest), `${MT.ociManifest}; charset=utf-8`).kind, "manifest");
    assert.equal(parseManifest(buf(index), MT.ociIndex).kind, "index");
    assert.equal(parseManifest(buf({ ...index, mediaType: MT.dockerList }), "application/json").kind, "index");
    assert.equal(parseManifest(buf({ ...manifest, mediaType: MT.ociManifest }), null).kind, "manifest");
    assert.equal(parseManifest(buf(index), null).kind, "index");
    const m = parseManifest(buf(manifest), null);
    assert.ok(m.kind === "manifest" && m.config.digest === D1 && m.layers[0].digest === D2);
  });

  it("refuses schema 1, unknown types, bad digests and non-JSON", () => {
    assert.throws(() => parseManifest(buf({ schemaVersion: 1, fsLayers: [] }), MT.schema1Signed), /schema 1/);
    assert.throws(() => parseManifest(buf(manifest), "application/vnd.example+json"), /unsupported manifest media type/);
    assert.throws(() => parseManifest(buf({ ...manifest, layers: [{ digest: "sha512:00" }] }), null), /layers\[0\].*digest/);
    assert.throws(() => parseManifest(buf({ ...manifest, layers: [{ digest: D2, size: -1 }] }), null), /invalid size/);
    assert.throws(() => parseManifest(Buffer.from("<html>"), null), /not JSON/);
  });
});

describe("architectures", () => {
  const entry = (digest: string, architecture: string, variant?: string, os = "linux"): Descriptor => ({
    digest,
    platform: { architecture, os, ...(variant ? { variant } : {}) },
  });
  const idx = [entry(D1, "amd64"), entry(D2, "arm64", "v8"), entry(D3, "unknown", undefined, "unknown"), entry(D4, "arm", "v6")];

  it("names the host's architecture as registries do", () => {
    assert.equal(hostArch("x64"), "amd64");
    assert.equal(hostArch("arm64"), "arm64/v8");
    assert.equal(hostArch("ppc64"), "ppc64le");
    assert.equal(resolveArch("host", "amd64"), "amd64");
    assert.equal(resolveArch("arm64/v8", "amd64"), "arm64/v8");
  });

  it("picks by architecture and variant, with fallbacks", () => {
    assert.equal(selectArch(idx, "amd64", "r").digest, D1);
    assert.equal(selectArch(idx, "arm64/v8", "r").digest, D2);
    assert.equal(selectArch(idx, "arm64", "r").digest, D2);
    assert.equal(selectArch([entry(D2, "arm64")], "arm64/v8", "r").digest, D2);
    assert.equal(selectArch(idx, "arm/v7", "r").digest, D4); // v7 runs v6
    assert.deepEqual(archCandidates("arm/v7"), ["arm/v7", "arm/v6", "arm/v5", "arm"]);
    assert.equal(selectArch(idx, "yolo", "r").digest, D1);
    assert.equal(selectArch([entry(D3, "unknown", undefined, "unknown"), entry(D2, "arm64", "v8")], "yolo", "r").digest, D2);
  });

  it("says what exists when the wanted architecture doesn't", () => {
    assert.throws(
      () => selectArch(idx, "s390x", "reg/img:1"),
      (e: Error) => e.message === "requested arch unavailable: s390x: reg/img:1; available: amd64 arm/v6 arm64/v8",
    );
    assert.throws(() => selectArch([entry(D1, "amd64", undefined, "windows")], "amd64", "r"), /available: none/);
  });

  it("checks an image without an index by its config", () => {
    checkSkinnyArch("amd64", "amd64", "r");
    checkSkinnyArch("arm64", "arm64/v8", "r");
    checkSkinnyArch("s390x", "yolo", "r");
    checkSkinnyArch(null, "amd64", "r");
    assert.throws(() => checkSkinnyArch("amd64", "arm64/v8", "r"), /requested arch unavailable: arm64\/v8.*consider --arch=yolo/);
  });
});

describe("WWW-Authenticate", () => {
  it("parses a Bearer challenge with quoted values", () => {
    const h = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"';
    assert.deepEqual(parseChallenges(h), [
      {
        scheme: "Bearer",
        params: { realm: "https://auth.docker.io/token", service: "registry.docker.io", scope: "repository:library/alpine:pull" },
      },
    ]);
  });

  it("keeps commas and escaped quotes inside quotes, takes tokens unquoted, and lowercases keys", () => {
    const [c] = parseChallenges(
      'Bearer Realm="http://x/t?a=1,b=2", scope="repository:a/b:pull,push", error=insufficient_scope, x="q\\"q"',
    );
    assert.deepEqual(c.params, {
      realm: "http://x/t?a=1,b=2",
      scope: "repository:a/b:pull,push",
      error: "insufficient_scope",
      x: 'q"q',
    });
  });

  it("reads several challenges and Basic", () => {
    const cs = parseChallenges('Basic realm="basic-realm", Bearer realm="http://t/token",service="s"');
    assert.deepEqual(
      cs.map((c) => [c.scheme, c.params.realm]),
      [
        ["Basic", "basic-realm"],
        ["Bearer", "http://t/token"],
      ],
    );
    assert.deepEqual(parseChallenges(""), []);
  });
});

describe("digest verification while streaming", () => {
  const data = Buffer.from("layer bytes ".repeat(10000));
  const digest = `sha256:${createHash("sha256").update(data).digest("hex")}`;
  const chunks = (b: Buffer) => [b.subarray(0, 1000), b.subarray(1000, 50000), b.subarray(50000)];
  /** Feeds the chunks to a Digester as the download does; returns the bytes taken before it threw. */
  const feed = (d: Digester, bufs: Buffer[], taken: Buffer[] = []) => {
    for (const c of bufs) {
      d.update(c);
      taken.push(c);
    }
    d.finish();
    return taken;
  };

  it("passes data whose digest and size match", () => {
    assert.deepEqual(Buffer.concat(feed(new Digester(digest, data.length, "blob x"), chunks(data))), data);
  });

  it("fails on one changed byte, naming the blob", () => {
    const bad = Buffer.from(data);
    bad[5000] ^= 1;
    assert.throws(
      () => feed(new Digester(digest, data.length, "layer 1/1 (r): blob sha256:abc"), chunks(bad)),
      (e: Error) =>
        e instanceof DigestMismatch && /^layer 1\/1 \(r\): blob sha256:abc: digest mismatch: got sha256:/.test(e.message),
    );
  });

  it("fails as soon as there is more data than the size", () => {
    const taken: Buffer[] = [];
    const more = Buffer.concat([data, Buffer.alloc(100000)]);
    assert.throws(() => feed(new Digester(digest, data.length, "b"), chunks(more), taken), DigestMismatch);
    assert.ok(Buffer.concat(taken).length <= data.length);
  });

  it("treats a short body as a transfer to retry, not a bad blob", () => {
    assert.throws(() => feed(new Digester(digest, data.length, "b"), chunks(data.subarray(0, 70000))), TransientError);
  });

  it("resumes from the hash of the bytes already had", () => {
    const head = data.subarray(0, 30000);
    const h = createHash("sha256").update(head);
    feed(new Digester(digest, data.length, "b", { hash: h, bytes: head.length }), [data.subarray(30000)]);
  });

  it("checks whole buffers (manifests by digest)", () => {
    checkDigest(data, digest, "m");
    assert.throws(() => checkDigest(Buffer.from("x"), digest, "manifest m"), /manifest m: digest mismatch/);
  });
});

describe("retries", () => {
  const errno = (code: string, message = code) => Object.assign(new Error(message), { code });

  it("retries 5xx, resets, hang-ups and timeouts; not 401/403/404/429 or our own errors", () => {
    assert.equal(retryReason(new ServerError("x", 503)), "HTTP 503");
    assert.equal(retryReason(errno("ECONNRESET")), "ECONNRESET");
    assert.equal(retryReason(errno("ETIMEDOUT")), "ETIMEDOUT");
    assert.equal(retryReason(errno("EPIPE")), "EPIPE");
    assert.equal(retryReason(new Error("socket hang up")), "socket hang up");
    assert.equal(retryReason(new TransientError("no data for 60 s")), "no data for 60 s");
    for (const s of [401, 403, 404, 429]) assert.equal(retryReason(new StatusError("x", s)), null, String(s));
    assert.equal(retryReason(new ChError("digest mismatch")), null);
    assert.equal(retryReason(errno("ECONNREFUSED")), null);
    assert.equal(retryReason(errno("ENOENT")), null);
    assert.ok(retryStatus(500) && retryStatus(502) && retryStatus(599));
    assert.ok(!retryStatus(429) && !retryStatus(404) && !retryStatus(600));
  });

  it("takes the base delay from CH_IMAGE_RETRY_DELAY_MS", () => {
    assert.equal(retryDelayMs({}), 1000);
    assert.equal(retryDelayMs({ CH_IMAGE_RETRY_DELAY_MS: "25" }), 25);
    assert.equal(retryDelayMs({ CH_IMAGE_RETRY_DELAY_MS: "soon" }), 1000);
  });

  it("tries again until it works, at most four times", async () => {
    let n = 0;
    assert.equal(
      await retrying("x", async () => {
        if (++n < 3) throw errno("ECONNRESET");
        return "ok";
      }),
      "ok",
    );
    assert.equal(n, 3);
    n = 0;
    await assert.rejects(
      retrying("GET blob", async () => {
        n++;
        throw new ServerError("registry error (HTTP 502): blob", 502);
      }),
      /HTTP 502.*gave up after 4 tries/,
    );
    assert.equal(n, 4);
    n = 0;
    await assert.rejects(
      retrying("x", async () => {
        n++;
        throw new StatusError("not found: manifest", 404);
      }),
      (e: Error) => e.message === "not found: manifest",
    );
    assert.equal(n, 1);
  });

  it("stops when cancelled", async () => {
    const ac = new AbortController();
    let n = 0;
    await assert.rejects(
      retrying(
        "x",
        async () => {
          n++;
          ac.abort();
          throw errno("ECONNRESET");
        },
        ac.signal,
      ),
      Cancelled,
    );
    assert.equal(n, 1);
  });

  it("recognises a server that doesn't speak TLS", () => {
    assert.ok(notTls(errno("ERR_SSL_WRONG_VERSION_NUMBER", "wrong version number")));
    assert.ok(notTls(errno("EPROTO", "ssl3_get_record:packet length too long")));
    assert.ok(!notTls(errno("DEPTH_ZERO_SELF_SIGNED_CERT", "self-signed certificate")));
    assert.ok(!notTls(errno("ECONNRESET")));
  });

  it("quotes the registry's own error message", () => {
    assert.equal(
      registryErrorText('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'),
      "MANIFEST_UNKNOWN: manifest unknown",
    );
    assert.equal(registryErrorText("<html>"), "");
  });

  it("asks for authentication with CH_IMAGE_AUTH=yes", () => {
    assert.ok(authFromEnv({ CH_IMAGE_AUTH: "yes" }));
    assert.ok(!authFromEnv({ CH_IMAGE_AUTH: "no" }) && !authFromEnv({}));
  });
});

describe("credentials and redirects", () => {
  /** A transport that answers from a script and records what it was sent. */
  function scripted(answers: ((url: URL) => { status: number; headers: Record<string, string> })[]) {
    const sent: {
      method: string;
      url: string;
      authorization: string | undefined;
      headers: Record<string, string>;
      body: unknown;
    }[] = [];
    const transport = {
      signal: new AbortController().signal,
      send: async (method: string, url: URL, headers: Record<string, string>, body: unknown): Promise<Response> => {
        sent.push({ method, url: url.href, authorization: headers.Authorization, headers, body });
        const a = (answers.shift() as (typeof answers)[number])(url);
        const empty = {
          async *[Symbol.asyncIterator]() {},
          consume: async () => {},
          destroy: () => {},
        };
        return { status: a.status, headers: a.headers, body: empty, url };
      },
    } as unknown as Transport;
    return { transport, sent };
  }

  for (const to of ["http://reg.example:5000/v2/x/blobs/y", "https://reg.example:5001/y", "https://cdn.example:5000/y"]) {
    it(`sends the registry's credentials after a redirect only to the same origin (not ${to})`, async () => {
      const { transport, sent } = scripted([
        () => ({ status: 401, headers: { "www-authenticate": 'Basic realm="r"' } }),
        () => ({ status: 307, headers: { location: to } }),
        () => ({ status: 200, headers: {} }),
      ]);
      const reg = new Registry(parseRef("reg.example:5000/x"), transport, {
        tlsVerify: true,
        auth: true,
        push: false,
        credentials: { get: async () => ({ username: "u", password: "p" }) },
      });
      await reg.request("GET", "blobs/y");
      assert.deepEqual(
        sent.map((s) => [s.url, s.authorization]),
        [
          ["https://reg.example:5000/v2/x/blobs/y", undefined],
          ["https://reg.example:5000/v2/x/blobs/y", `Basic ${Buffer.from("u:p").toString("base64")}`],
          [to, undefined],
        ],
      );
    });
  }

  it("sends credentials to a plain-HTTP token server only on loopback", async () => {
    const refused = () => ({ status: 401, headers: {} });
    const challenge = () => ({
      status: 401,
      headers: { "www-authenticate": 'Bearer realm="http://auth.example/token",service="s"' },
    });
    const { transport, sent } = scripted([challenge, refused, challenge, refused, refused, refused]);
    const reg = new Registry(parseRef("reg.example/x"), transport, {
      tlsVerify: true,
      auth: true,
      push: false,
      credentials: { get: async () => ({ username: "u", password: "p" }) },
    });
    await assert.rejects(
      reg.request("GET", "manifests/1"),
      /not sending credentials in clear to token server http:\/\/auth\.example/,
    );
    assert.ok(
      sent.every((s) => s.authorization === undefined),
      JSON.stringify(sent.map((s) => [s.url, s.authorization])),
    );
  });

  it("follows a 303 with a GET, without the body", async () => {
    const { transport, sent } = scripted([
      () => ({ status: 303, headers: { location: "/v2/x/other" } }),
      () => ({ status: 200, headers: {} }),
    ]);
    const reg = new Registry(parseRef("reg.example:5000/x"), transport, { tlsVerify: true, auth: false, push: false });
    await reg.request("PUT", "manifests/1", {
      body: Buffer.from("{}"),
      headers: { "Content-Type": "application/json", "X-A": "b" },
    });
    assert.deepEqual(
      sent.map((s) => [s.method, s.url, s.body, s.headers]),
      [
        [
          "PUT",
          "https://reg.example:5000/v2/x/manifests/1",
          Buffer.from("{}"),
          { "Content-Type": "application/json", "X-A": "b" },
        ],
        ["GET", "https://reg.example:5000/v2/x/other", null, { "X-A": "b" }],
      ],
    );
  });
});

describe("parallel downloads", () => {
  it("runs at most the limit at once, and every task", async () => {
    let running = 0;
    let most = 0;
    const out = bounded([...Array(10).keys()], 3, async (i) => {
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setImmediate(r));
      running--;
      if (i === 4) throw new Error("four");
      return i * 2;
    });
    const res = await Promise.allSettled(out);
    assert.equal(most, 3);
    assert.deepEqual(
      res.map((r) => (r.status === "fulfilled" ? r.value : "x")),
      [0, 2, 4, 6, "x", 10, 12, 14, 16, 18],
    );
  });
});

describe("image metadata", () => {
  const config = {
    architecture: "arm64",
    variant: "v8",
    os: "linux",
    config: {
      Env: ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=a=b c", "EMPTY="],
      WorkingDir: "/work",
      Entrypoint: ["/bin/echo"],
      Cmd: ["hello"],
      Labels: { "org.example": "yes" },
      Volumes: { "/data/b": {}, "/data/a": {} },
    },
  };
  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("keeps environment, working directory, entrypoint, command, labels, volumes", () => {
    const m = metadataFromConfig(config);
    assert.equal(m.arch, "arm64/v8");
    assert.equal(m.cwd, "/work");
    assert.deepEqual(m.env, { PATH: "/usr/local/bin:/usr/bin:/bin", GREETING: "a=b c", EMPTY: "" });
    assert.deepEqual(
      [m.entrypoint, m.cmd, m.labels, m.volumes],
      [["/bin/echo"], ["hello"], { "org.example": "yes" }, ["/data/a", "/data/b"]],
    );
    assert.equal(environmentFile(config), "PATH=/usr/local/bin:/usr/bin:/bin\nGREETING=a=b c\nEMPTY=\n");
    const none = metadataFromConfig({});
    assert.deepEqual([none.arch, none.cwd, none.env, none.cmd], ["unknown", "/", {}, []]);
  });

  it("round-trips through a config for pushing", () => {
    const back = configFromMetadata(metadataFromConfig(config), ["sha256:d"], "amd64");
    assert.equal(back.architecture, "arm64");
    assert.equal(back.variant, "v8");
    assert.deepEqual(back.config?.Env, config.config.Env);
    assert.deepEqual([back.config?.WorkingDir, back.config?.Entrypoint, back.config?.Cmd], ["/work", ["/bin/echo"], ["hello"]]);
    assert.deepEqual(back.rootfs, { type: "layers", diff_ids: ["sha256:d"] });
    assert.equal(configFromMetadata({}, [], "amd64").architecture, "amd64");
  });

  it("keeps SHELL, USER, VOLUME and history both ways; one layer, so one non-empty history entry", () => {
    const history = [
      { created_by: "FROM x", empty_layer: true },
      { created_by: "RUN a" },
      { created_by: "RUN b", created: "2026-01-01T00:00:00Z" },
      { created_by: "ENV c", empty_layer: true },
      "junk",
    ];
    const m = metadataFromConfig({
      config: { Shell: ["/bin/bash", "-c"], User: "1000:1000", Volumes: { "/v": {} } },
      history,
    });
    assert.deepEqual([m.shell, m.user, m.volumes], [["/bin/bash", "-c"], "1000:1000", ["/v"]]);
    const c = configFromMetadata({ ...m, volumes: ["/z", "/a"] }, ["sha256:d"], "amd64");
    assert.deepEqual(
      [c.config?.Shell, c.config?.User, c.config?.Volumes],
      [["/bin/bash", "-c"], "1000:1000", { "/a": {}, "/z": {} }],
    );
    assert.deepEqual(c.history, [
      { created_by: "FROM x", empty_layer: true },
      { created_by: "RUN a", empty_layer: true },
      { created_by: "RUN b", created: "2026-01-01T00:00:00Z" },
      { created_by: "ENV c", empty_layer: true },
    ]);
    assert.deepEqual(history[1], { created_by: "RUN a" }); // the metadata itself is not changed
    // Defaults are not written: no SHELL, USER or Volumes in the config, and none read back.
    const d = configFromMetadata(metadataFromConfig({}), [], "amd64");
    assert.deepEqual(
      [d.config?.Shell, d.config?.User, d.config?.Volumes, d.history],
      [undefined, undefined, undefined, undefined],
    );
    assert.deepEqual([metadataFromConfig({}).shell, metadataFromConfig({}).user], [["/bin/sh", "-c"], ""]);
  });

  it("writes ch/ files and volume mount points without following the image's symlinks", () => {
    const root = mkdtempSync(join(tmpdir(), "ch-meta-"));
    const outside = mkdtempSync(join(tmpdir(), "ch-outside-"));
    dirs.push(root, outside);
    symlinkSync(outside, join(root, "ch")); // an untrusted image's trick
    mkdirSync(join(root, "data"));
    symlinkSync(outside, join(root, "data", "a"));
    writeMetadata(root, config, Buffer.from(JSON.stringify(config)));
    assert.ok(lstatSync(join(root, "ch")).isDirectory());
    assert.equal(readFileSync(join(root, "ch", "environment"), "utf8"), environmentFile(config));
    assert.equal(JSON.parse(readFileSync(join(root, "ch", "metadata.json"), "utf8")).cwd, "/work");
    assert.ok(lstatSync(join(root, "data", "b")).isDirectory());
    assert.ok(lstatSync(join(root, "data", "a")).isSymbolicLink());
    // a symlink where a file goes is replaced, not written through
    writeFileSync(join(outside, "victim"), "keep");
    rmSync(join(root, "ch", "environment"));
    symlinkSync(join(outside, "victim"), join(root, "ch", "environment"));
    writeMetadata(root, config, Buffer.from("{}"));
    assert.equal(readFileSync(join(outside, "victim"), "utf8"), "keep");
    assert.ok(!lstatSync(join(root, "ch", "environment")).isSymbolicLink());
  });
});
