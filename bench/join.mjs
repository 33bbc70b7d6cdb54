// Scale benchmark for ch-run --join (by hand, not a test): N joined containers launched at once on
// this node, as srun would (N = 1, 8, 32, 64 by default); reports the total wall time, the mean
// launch latency (start to the command running), the peak resident memory of the ch-run
// processes it started (and their join holder) together, sampled from /proc every 5 ms (no
// other run's or user's ch-run counted), and that memory per rank once every command runs.
// Usage: node bench/join.mjs [N...]  (as an ordinary user)
// CH_RUN=PATH times another ch-run (a build before a change, say: run both in turn, same session).
import { spawn } from "node:child_process";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { benchImage } from "./image.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const chRun = process.env.CH_RUN || join(root, "dist/ch-run");
const counts = process.argv.slice(2).map(Number);
const [img, dir] = benchImage(["sh", "sleep", "date"]);

/** Resident kB of this run's ch-run processes (Node or waiter): those descended from this
 * script, and the group's join holder (detached, so a child of init, and found by the group's
 * lock file among its arguments). Other users' and other runs' ch-run processes don't count. */
function chRunRss(tag) {
  const parent = new Map();
  const argv = new Map();
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "latin1");
      parent.set(Number(p), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
      argv.set(Number(p), readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0"));
    } catch {} // gone meanwhile
  }
  const ours = (pid) => {
    for (let p = parent.get(pid); p !== undefined && p > 1; p = parent.get(p)) if (p === process.pid) return true;
    return false;
  };
  let kb = 0;
  for (const [pid, args] of argv) {
    if (!args[0].endsWith("ch-run") && args[0] !== chRun) continue;
    if (!ours(pid) && !(args[1] === "join-holder" && args.includes(`sem.ch-run_sem-${tag}`))) continue;
    try {
      kb += Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
    } catch {}
  }
  return kb;
}

async function once(n) {
  const tag = `bench-${process.pid}-${n}`;
  const t0 = performance.now();
  let peak = 0;
  let upCount = 0;
  let running = Number.NaN;
  const sampler = setInterval(() => {
    peak = Math.max(peak, chRunRss(tag));
  }, 5);
  const latencies = await Promise.all(
    Array.from({ length: n }, () => {
      const start = performance.now();
      const c = spawn(chRun, [`--join-tag=${tag}`, `--join-ct=${n}`, img, "--", "sh", "-c", "echo up; sleep 1"], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      let up = 0;
      c.stdout.on("data", () => {
        if (up) return;
        up = performance.now() - start;
        if (++upCount === n) running = chRunRss(tag); // every command running: ch-run is the waiter
      });
      return new Promise((res) => c.on("exit", (code) => res(code === 0 ? up : Number.NaN)));
    }),
  );
  clearInterval(sampler);
  const total = performance.now() - t0 - 1000; // less the command's own second
  const ok = latencies.filter((l) => !Number.isNaN(l));
  const mean = ok.reduce((a, b) => a + b, 0) / ok.length;
  console.log(
    `N=${String(n).padStart(3)}  total ${total.toFixed(0).padStart(5)} ms  mean launch ${mean.toFixed(0).padStart(5)} ms  ` +
      `peak ch-run RSS ${(peak / 1024).toFixed(1).padStart(6)} MiB, while running ${(running / n).toFixed(0)} kB per rank  failed ${n - ok.length}`,
  );
}

try {
  for (const n of counts.length ? counts : [1, 8, 32, 64]) await once(n);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
