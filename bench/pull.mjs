// Pull benchmark (by hand, not a test): `ch-image pull` of a Debian image from a local registry
// (Debian's docker-registry on 127.0.0.1, storage in tmpfs) into a fresh storage directory, side
// by side in one hyperfine run with `skopeo copy docker://... dir:OUT` of the same image (which
// only downloads and verifies: the comparison); plus, to show where the time goes,
// ch-image pull with the download already cached (unpacking only) and skopeo copy followed by
// GNU tar unpacking the layer (the same work as ch-image pull, by other tools); then, in
// separate runs, ch-image's download alone, timed from its start to its -v line that says the
// (verified) layer is being unpacked.
//   node bench/pull.mjs [TARBALL]
// TARBALL: a Debian root file system as .tar.gz (becomes the image's one layer, as is). Without
// it: $CH_BENCH_DEBIAN, else a Debian minbase made once with debootstrap (as root: then rerun as
// an ordinary user to time) and kept in /var/tmp/ch-bench/debian-minbase.tar.gz, else
// $CH_TEST_DEBIAN_IMAGE (the tests' image, MPI libraries included, so bigger).
// $CH_IMAGE: the ch-image to time (default dist/ch-image). RUNS=N: hyperfine runs (10).
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { arch } from "node:os";
import { dirname, join } from "node:path";
import { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { createGunzip } from "node:zlib";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const chImage = process.env.CH_IMAGE ?? join(root, "dist/ch-image");
const work = existsSync("/dev/shm") ? `/dev/shm/ch-bench-pull-${process.getuid()}` : `/tmp/ch-bench-pull-${process.getuid()}`;
const cacheDir = "/var/tmp/ch-bench";
const minbase = join(cacheDir, "debian-minbase.tar.gz");
const has = (cmd) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;

/** Debian minbase with debootstrap (root, network to the mirror), without what an image doesn't
 * need (downloaded .debs, apt lists) and without device files. */
function debootstrap() {
  const src = join(cacheDir, "debian-root");
  rmSync(src, { recursive: true, force: true });
  mkdirSync(cacheDir, { recursive: true, mode: 0o755 });
  execFileSync("debootstrap", ["--variant=minbase", "bookworm", src], { stdio: "inherit" });
  execFileSync("sh", ["-c", `rm -rf ${src}/var/cache/apt/archives/*.deb ${src}/var/lib/apt/lists/* ${src}/dev/*`]);
  execFileSync("tar", ["--numeric-owner", "-czf", `${minbase}.new`, "-C", src, "."]);
  execFileSync("mv", [`${minbase}.new`, minbase]);
  rmSync(src, { recursive: true, force: true });
  execFileSync("chmod", ["644", minbase]);
}

function pickTarball() {
  if (process.argv[2]) return process.argv[2];
  if (process.env.CH_BENCH_DEBIAN) return process.env.CH_BENCH_DEBIAN;
  if (existsSync(minbase)) return minbase;
  if (process.getuid() === 0 && has("debootstrap")) {
    debootstrap();
    console.log(`made ${minbase}; now run this again as an ordinary user`);
    process.exit(0);
  }
  if (process.env.CH_TEST_DEBIAN_IMAGE) return process.env.CH_TEST_DEBIAN_IMAGE;
  throw new Error(`no Debian tarball: give one, or run once as root to make ${minbase} with debootstrap`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRegistry(dir) {
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const cfg = join(dir, "config.yml");
  writeFileSync(
    cfg,
    [
      "version: 0.1",
      "log:",
      "  level: error",
      "  accesslog:",
      "    disabled: true",
      "storage:",
      "  filesystem:",
      `    rootdirectory: ${join(dir, "data")}`,
      "http:",
      `  addr: 127.0.0.1:${port}`,
      "  secret: ch-bench",
      "",
    ].join("\n"),
  );
  const child = spawn("docker-registry", ["serve", cfg], { env: { PATH: "/usr/bin:/bin", HOME: dir }, stdio: "inherit" });
  process.on("exit", () => child.kill("SIGKILL"));
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/v2/`)).ok) return { port, child };
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("docker-registry did not start");
}

async function diffId(tarball) {
  const h = createHash("sha256");
  await pipeline(
    createReadStream(tarball),
    createGunzip(),
    new Writable({
      write(c, _e, cb) {
        h.update(c);
        cb();
      },
    }),
  );
  return `sha256:${h.digest("hex")}`;
}

const sha256 = (b) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function upload(base, repo, bytes) {
  const digest = sha256(bytes);
  const start = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: "POST" });
  if (start.status !== 202) throw new Error(`upload start: ${start.status}`);
  const loc = new URL(start.headers.get("location"), base);
  loc.searchParams.set("digest", digest);
  const put = await fetch(loc, { method: "PUT", body: bytes, headers: { "Content-Type": "application/octet-stream" } });
  if (put.status !== 201) throw new Error(`upload ${digest}: ${put.status} ${await put.text()}`);
  return digest;
}

/** The tarball as the one layer of a Docker schema 2 image, written through the registry API
 * (independently of ch-image push). */
async function pushImage(base, repo, tag, tarball) {
  const layer = readFileSync(tarball);
  const config = Buffer.from(
    JSON.stringify({
      architecture: arch() === "arm64" ? "arm64" : "amd64",
      os: "linux",
      config: { Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["/bin/bash"] },
      rootfs: { type: "layers", diff_ids: [await diffId(tarball)] },
    }),
  );
  const layerDigest = await upload(base, repo, layer);
  const configDigest = await upload(base, repo, config);
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.docker.distribution.manifest.v2+json",
    config: { mediaType: "application/vnd.docker.container.image.v1+json", size: config.length, digest: configDigest },
    layers: [{ mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip", size: layer.length, digest: layerDigest }],
  });
  const r = await fetch(`${base}/v2/${repo}/manifests/${tag}`, {
    method: "PUT",
    body: manifest,
    headers: { "Content-Type": "application/vnd.docker.distribution.manifest.v2+json" },
  });
  if (r.status !== 201) throw new Error(`manifest: ${r.status} ${await r.text()}`);
  return { size: layer.length, digest: layerDigest };
}

/** Milliseconds from starting the shell command to the first line of its stderr matching re
 * (it then runs to its end). */
function untilLine(command, re) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn("sh", ["-c", command], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    let at = null;
    child.stderr.on("data", (c) => {
      err += c;
      if (at === null && re.test(err)) at = performance.now() - t0;
    });
    child.on("close", (code) =>
      code === 0 && at !== null ? resolve(at) : reject(new Error(`${command}: exit ${code}: ${err}`)),
    );
  });
}

for (const cmd of ["docker-registry", "skopeo", "hyperfine"]) if (!has(cmd)) throw new Error(`${cmd} not installed`);
if (!existsSync(chImage)) throw new Error(`${chImage} missing: npm run build first`);
const tarball = pickTarball();
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const { port, child } = await startRegistry(join(work, "registry"));
try {
  const { size, digest } = await pushImage(`http://127.0.0.1:${port}`, "debian", "12", tarball);
  const ref = `127.0.0.1:${port}/debian:12`;
  console.log(`image: ${tarball}, one layer of ${(size / 1e6).toFixed(1)} MB, at ${ref}`);
  const st = join(work, "storage");
  const cached = join(work, "storage-cached");
  const out = join(work, "skopeo-out");
  const unpacked = join(work, "skopeo-root");
  const img = join(cached, "img", ref.replaceAll("/", "%").replaceAll(":", "+"));
  // No CA or proxy settings of the caller's: plain HTTP to loopback, as the tests do.
  const env = `env -u NODE_EXTRA_CA_CERTS -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY`;
  execFileSync("sh", ["-c", `${env} ${chImage} -q -s ${cached} pull ${ref}`], { stdio: "inherit" });
  const json = join(work, "result.json");
  // The runs share 2 cores with the registry; nothing else should run meanwhile.
  execFileSync(
    "hyperfine",
    [
      "--warmup",
      "1",
      "--runs",
      process.env.RUNS ?? "10",
      "--export-json",
      json,
      "--prepare",
      `rm -rf ${st}`,
      "--prepare",
      `rm -rf ${out}`,
      "--prepare",
      `rm -rf ${img}`,
      "--prepare",
      `rm -rf ${out} ${unpacked}`,
      "-n",
      "ch-image pull",
      `${env} ${chImage} -q -s ${st} pull ${ref}`,
      "-n",
      "skopeo copy",
      `${env} skopeo copy -q --src-tls-verify=false docker://${ref} dir:${out}`,
      "-n",
      "ch-image pull (download cached)",
      `${env} ${chImage} -q -s ${cached} pull ${ref}`,
      "-n",
      "skopeo copy + tar xzf",
      `${env} skopeo copy -q --src-tls-verify=false docker://${ref} dir:${out} && mkdir ${unpacked} && tar xzf ${out}/${digest.slice(7)} -C ${unpacked} --exclude='./dev/*'`,
    ],
    { stdio: "inherit" },
  );
  const [ch, sk, unpackOnly, skTar] = JSON.parse(readFileSync(json, "utf8")).results;
  // ch-image's download alone (start-up, manifest, config, the layer downloaded and verified):
  // from its start to its -v line saying it starts unpacking the (only) layer, which it does
  // only once the layer is verified. Separate runs, same storage place, same count.
  const dl = [];
  for (let i = 0; i < Number(process.env.RUNS ?? 10); i++) {
    rmSync(st, { recursive: true, force: true });
    dl.push(await untilLine(`${env} ${chImage} -v -s ${st} pull ${ref}`, /^layer 1\/1 [0-9a-f]+: extracting$/m));
  }
  dl.sort((a, b) => a - b);
  const dlMedian = dl[Math.floor(dl.length / 2)];
  const ms = (r) => `${(r.median * 1000).toFixed(0)} ms`;
  const spread = (r) => `${(r.min * 1000).toFixed(0)}-${(r.max * 1000).toFixed(0)} ms`;
  console.log(
    `\nmedians (min-max):` +
      `\n  ch-image pull (fresh)               ${ms(ch)} (${spread(ch)})` +
      `\n  skopeo copy (download only)         ${ms(sk)} (${spread(sk)})` +
      `\n  ch-image pull, download cached      ${ms(unpackOnly)} (${spread(unpackOnly)})` +
      `\n  skopeo copy + tar xzf               ${ms(skTar)} (${spread(skTar)})` +
      `\n  ch-image download only (-v lines)   ${dlMedian.toFixed(0)} ms (${dl[0].toFixed(0)}-${dl[dl.length - 1].toFixed(0)} ms)` +
      `\nratios: ch-image pull / skopeo copy ${(ch.median / sk.median).toFixed(2)}` +
      `; ch-image download only / skopeo copy ${(dlMedian / 1000 / sk.median).toFixed(2)}` +
      `; ch-image pull / (skopeo copy + tar xzf) ${(ch.median / skTar.median).toFixed(2)}`,
  );
} finally {
  child.kill("SIGTERM");
  rmSync(work, { recursive: true, force: true });
}
