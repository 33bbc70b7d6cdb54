// `ch-image build` of a six-instruction Dockerfile (FROM, ARG, ENV, WORKDIR, COPY, RUN) on a
// busybox image in storage, RUNS times (default 10), and a build of N one-line RUNs (default 10):
// wall-clock medians. There is no build cache yet, so every build runs every instruction; these
// are the figures a cache must beat. Run as an ordinary user: node bench/build.mjs [RUNS] [N]
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { benchImage } from "./image.mjs";

const runs = Number(process.argv[2] ?? 10);
const n = Number(process.argv[3] ?? 10);
const exe = join(import.meta.dirname, "..", "dist", "ch-image");
const [img, dir] = benchImage(["sh", "echo", "mkdir", "cat", "true"]);
const env = { ...process.env, CH_IMAGE_STORAGE: join(dir, "storage") };

function image(args, input) {
  const r = spawnSync(exe, args, { env, input, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`ch-image ${args.join(" ")}: ${r.stderr}`);
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function time(label, dockerfile) {
  const ms = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    image(["build", "-q", "--force=none", "-t", "bench", "-f", "-", ctx], dockerfile);
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  console.log(`${label}: median ${median(ms).toFixed(0)} ms (${runs} runs, min ${Math.min(...ms).toFixed(0)})`);
}

const ctx = join(dir, "ctx");
try {
  spawnSync("tar", ["-C", img, "-cf", join(dir, "bb.tar"), "."]);
  image(["import", join(dir, "bb.tar"), "bb"]);
  mkdirSync(ctx);
  writeFileSync(join(ctx, "f"), "x".repeat(1 << 20));
  time("FROM ARG ENV WORKDIR COPY RUN", "FROM bb\nARG A=1\nENV B=2\nWORKDIR /w\nCOPY f /w/f\nRUN cat /w/f > /w/g\n");
  time(`FROM + ${n} RUN`, `FROM bb\n${"RUN true\n".repeat(n)}`);
} finally {
  spawnSync("chmod", ["-R", "u+rwX", dir]);
  rmSync(dir, { recursive: true, force: true });
}
