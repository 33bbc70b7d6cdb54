// Times `ch-convert X.tar.gz DIR` against `tar xzf X.tar.gz -C DIR`, both into tmpfs, with hyperfine.
//   node bench/convert.mjs [TARBALL]
// $CH_CONVERT: the ch-convert to time (default dist/ch-convert). With $CH_CONVERT_BASELINE (another
// build's ch-convert), that one runs in the same hyperfine run too.
// Without TARBALL: a Debian minbase made with debootstrap when it is installed (needs root and
// network), else a synthetic tarball shaped like one: ~6700 files, ~60 MB, in ~900 directories,
// with symlinks and hard links.
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, linkSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const convert = process.env.CH_CONVERT ?? join(root, "dist/ch-convert");
const work = existsSync("/dev/shm") ? "/dev/shm/ch-bench" : "/tmp/ch-bench";
const has = (cmd) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;

function synthetic(tarball) {
  const src = join(work, "src");
  rmSync(src, { recursive: true, force: true });
  let seed = 1;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const dirs = [];
  for (const top of ["bin", "etc", "lib", "sbin", "usr/bin", "usr/lib", "usr/share/doc", "usr/share/locale", "var/lib/dpkg"])
    for (let i = 0; i < 100; i++) dirs.push(`${top}/d${i}`);
  for (const d of dirs) mkdirSync(join(src, d), { recursive: true });
  const pool = randomBytes(1 << 20).toString("base64"); // text-like, compresses about 4:3
  let bytes = 0;
  for (let i = 0; i < 6700; i++) {
    // Mostly small files, a few large ones, as in a distribution.
    const size = rand() < 0.01 ? Math.floor(300_000 + rand() * 400_000) : Math.floor(rand() * rand() * 18_000);
    const start = Math.floor(rand() * (pool.length - size - 1));
    const body = size <= pool.length ? pool.slice(start, start + size) : pool.repeat(2).slice(0, size);
    const f = join(src, dirs[i % dirs.length], `f${i}`);
    writeFileSync(f, body);
    bytes += body.length;
    if (i % 50 === 0) symlinkSync(`f${i}`, `${f}.link`);
    if (i % 200 === 0) linkSync(f, `${f}.hard`);
  }
  execFileSync("tar", ["czf", tarball, "-C", src, "."]);
  rmSync(src, { recursive: true, force: true });
  console.log(`synthetic tarball: 6700 files, ${(bytes / 1e6).toFixed(0)} MB uncompressed`);
}

function debootstrap(tarball) {
  const src = join(work, "debian");
  execFileSync("debootstrap", ["--variant=minbase", "stable", src], { stdio: "inherit" });
  // Without the device files, which an ordinary user's tar can't make (exit 2).
  execFileSync("tar", ["czf", tarball, "-C", src, "--exclude=./dev/*", "."]);
  rmSync(src, { recursive: true, force: true });
}

mkdirSync(work, { recursive: true });
let tarball = process.argv[2];
if (!tarball) {
  tarball = join(work, "image.tar.gz");
  if (!existsSync(tarball)) {
    if (has("debootstrap") && process.getuid() === 0) debootstrap(tarball);
    else {
      console.log("debootstrap unavailable (or not root): using a synthetic tarball instead");
      synthetic(tarball);
    }
  }
}
if (!existsSync(convert)) throw new Error("dist/ch-convert missing: npm run build first");
if (!has("hyperfine")) throw new Error("hyperfine not installed");

const a = join(work, "out-ch");
const b = join(work, "out-tar");
const c = join(work, "out-base");
const baseline = process.env.CH_CONVERT_BASELINE;
const json = join(work, "result.json");
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
    `rm -rf ${a} ${b} ${c}; mkdir ${b}`,
    "-n",
    "ch-convert",
    `${convert} -q ${tarball} ${a}`,
    "-n",
    "tar xzf",
    `tar xzf ${tarball} -C ${b}`,
    ...(baseline ? ["-n", "baseline", `${baseline} -q ${tarball} ${c}`] : []),
  ],
  { stdio: "inherit" },
);
const [ch, tar, base] = JSON.parse(readFileSync(json, "utf8")).results;
const ms = (r) => `${(r.median * 1000).toFixed(0)} ms`;
console.log(`\nmedians: ch-convert ${ms(ch)}, tar xzf ${ms(tar)}: ratio ${(ch.median / tar.median).toFixed(2)}`);
if (base) console.log(`baseline ${ms(base)}: ratio ${(base.median / tar.median).toFixed(2)}`);
for (const d of [a, b, c]) rmSync(d, { recursive: true, force: true });
