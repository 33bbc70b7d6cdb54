// Build benchmark (by hand, not a test): `ch-image build` against rootless `podman build` (vfs
// storage) on the same six-instruction Dockerfile (FROM, ARG, ENV, WORKDIR, COPY, RUN) FROM the
// same base image, made offline from a tarball and imported into both, in one run, interleaved
// (one of each in turn, so that the machine's drift hits all alike). Medians of wall-clock time:
//   cold        the build cache emptied first (ch-image build-cache --reset where there is one;
//               podman: the image and its intermediate layers removed), the base kept
//   all hits    the same Dockerfile again: every step a hit; beside it a bare `ch-image list`
//   last RUN    the last RUN's text changed (a new one each round) after five hits; beside it the
//               RUN alone (`ch-run -w IMAGE -- /bin/sh -c RUN`: the container start a RUN costs)
//   --no-cache  the same Dockerfile with --no-cache
// Usage: node bench/build.mjs [RUNS] [BASE.tar.gz]   (as an ordinary user; RUNS default 5)
// BASE defaults to $CH_TEST_DEBIAN_IMAGE, else /var/tmp/ch-test/debian-mpi.tar.gz.
// CH_IMAGE=PATH times another ch-image (its ch-run beside it); PODMAN_ISOLATION (default chroot:
// this VM's hybrid cgroups make crun fail; `oci` uses the OCI runtime).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const runs = Number(process.argv[2] ?? process.env.RUNS ?? 5);
const base = process.argv[3] ?? process.env.CH_TEST_DEBIAN_IMAGE ?? "/var/tmp/ch-test/debian-mpi.tar.gz";
const chImage = process.env.CH_IMAGE || join(root, "dist/ch-image");
const chRun = join(dirname(chImage), "ch-run");
const podman = ["/usr/bin/podman", "/usr/local/bin/podman"].find((p) => existsSync(p));
const isolation = process.env.PODMAN_ISOLATION || "chroot";

if (process.geteuid() === 0) {
  console.error("run as an ordinary user (e.g. setpriv --reuid=USER --regid=USER --init-groups env HOME=... node ...)");
  process.exit(1);
}
if (!existsSync(base)) {
  console.error(`base image tarball not found: ${base} (give one, or set CH_TEST_DEBIAN_IMAGE)`);
  process.exit(1);
}

// Large trees (podman's vfs copies the whole base at every step): under /var/tmp, not a tmpfs.
const dir = mkdtempSync(join(process.env.CH_BENCH_TMP || "/var/tmp", "ch-bench-build-"));
const ctx = join(dir, "ctx");
const dfs = join(dir, "dockerfiles");
const chEnv = { ...process.env, CH_IMAGE_STORAGE: join(dir, "ch") };
const xdg = join(dir, "xdg");
const pEnv = {
  ...process.env,
  XDG_RUNTIME_DIR: xdg,
  CONTAINERS_STORAGE_CONF: join(dir, "storage.conf"),
  CONTAINERS_CONF: join(dir, "containers.conf"),
};

function must(cmd, args, env, input) {
  const r = spawnSync(cmd, args, { env, input, encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.error?.message ?? r.stderr}`);
  return r.stdout;
}
const ch = (args) => must(chImage, args, chEnv);
const pm = (args) => must(podman, args, pEnv);

/** Milliseconds `fn` takes. */
function time(fn) {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** The Dockerfile with the last RUN's command; written outside the context. */
function dockerfile(from, run, name) {
  const f = join(dfs, name);
  writeFileSync(f, `FROM ${from}\nARG A=1\nENV B=2\nWORKDIR /w\nCOPY f /w/f\nRUN ${run}\n`);
  return f;
}
const RUN0 = "cat /w/f > /w/g";

try {
  mkdirSync(ctx);
  mkdirSync(dfs);
  mkdirSync(xdg, { mode: 0o700 });
  writeFileSync(join(ctx, "f"), Buffer.alloc(1 << 20, "x"));
  const hasCacheCmd = spawnSync(chImage, ["build-cache"], { env: chEnv, encoding: "utf8" }).status === 0;
  const resetCache = () => {
    if (!hasCacheCmd) return;
    ch(["build-cache", "--reset"]);
    // Should a reset take the imported base with it, it comes back (untimed).
    if (!ch(["list"]).split("\n").includes("base:latest")) ch(["import", base, "base"]);
  };
  console.log(`ch-image: ${chImage} (${ch(["--version"]).trim()}); build-cache: ${hasCacheCmd ? "present" : "absent"}`);
  console.log(`base: ${base}; ${runs} rounds`);
  let t = time(() => ch(["import", base, "base"]));
  console.log(`ch-image import of the base: ${t.toFixed(0)} ms`);
  if (podman) {
    writeFileSync(
      pEnv.CONTAINERS_STORAGE_CONF,
      `[storage]\ndriver = "vfs"\ngraphroot = "${join(dir, "graph")}"\nrunroot = "${join(dir, "run")}"\n`,
    );
    writeFileSync(pEnv.CONTAINERS_CONF, '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n');
    console.log(`podman: ${pm(["--version"]).trim()}, vfs storage, --isolation=${isolation}`);
    t = time(() => pm(["import", "-q", base, "localhost/base"]));
    console.log(`podman import of the base: ${t.toFixed(0)} ms`);
  } else console.log("podman: not installed, left out");
  const chBuild = (f, extra = []) => ch(["build", "-q", ...extra, "-t", "bench", "-f", f, ctx]);
  const pmBuild = (f, extra = []) =>
    pm(["build", "-q", `--isolation=${isolation}`, ...extra, "-t", "localhost/bench", "-f", f, ctx]);
  const pmCold = () => {
    spawnSync(podman, ["rmi", "-f", "localhost/bench"], { env: pEnv });
    pm(["image", "prune", "-f"]);
  };
  const chF = dockerfile("base", RUN0, "ch");
  const pmF = dockerfile("localhost/base", RUN0, "podman");
  const rows = new Map();
  const add = (k, ms) => {
    if (!rows.has(k)) rows.set(k, []);
    rows.get(k).push(ms);
  };
  for (let i = 0; i < runs; i++) {
    const nonce = `${process.pid}-${i}`;
    const run = `${RUN0} && echo ${nonce} > /w/n`;
    resetCache();
    spawnSync(chImage, ["delete", "bench"], { env: chEnv });
    add(
      "ch-image build, cold",
      time(() => chBuild(chF)),
    );
    if (podman) {
      pmCold();
      add(
        "podman build, cold",
        time(() => pmBuild(pmF)),
      );
    }
    add(
      "ch-image build, all hits",
      time(() => chBuild(chF)),
    );
    if (podman)
      add(
        "podman build, all hits",
        time(() => pmBuild(pmF)),
      );
    add(
      "ch-image list (floor)",
      time(() => ch(["list"])),
    );
    add(
      "ch-image build, last RUN changed",
      time(() => chBuild(dockerfile("base", run, `ch-${i}`))),
    );
    if (podman)
      add(
        "podman build, last RUN changed",
        time(() => pmBuild(dockerfile("localhost/base", run, `podman-${i}`))),
      );
    add(
      "the RUN alone (ch-run)",
      time(() =>
        must(
          chRun,
          [
            "--unsafe",
            "-w",
            "--seccomp",
            "-u",
            "0",
            "-g",
            "0",
            join(dir, "ch", "img", "bench+latest"),
            "--",
            "/bin/sh",
            "-c",
            run,
          ],
          chEnv,
        ),
      ),
    );
    add(
      "ch-image build --no-cache",
      time(() => chBuild(chF, ["--no-cache"])),
    );
    if (podman)
      add(
        "podman build --no-cache",
        time(() => pmBuild(pmF, ["--no-cache"])),
      );
    process.stderr.write(`round ${i + 1}/${runs} done\n`);
  }
  const m = (k) => (rows.has(k) ? median(rows.get(k)) : Number.NaN);
  console.log("\nmedian (min-max) ms:");
  for (const [k, v] of rows)
    console.log(
      `  ${k.padEnd(34)} ${median(v).toFixed(0).padStart(7)} (${Math.min(...v).toFixed(0)}-${Math.max(...v).toFixed(0)})`,
    );
  console.log("\ntargets:");
  console.log(
    `  all hits / ch-image list: x${(m("ch-image build, all hits") / m("ch-image list (floor)")).toFixed(2)} (target: at most x3)`,
  );
  console.log(
    `  last RUN changed - the RUN alone: ${(m("ch-image build, last RUN changed") - m("the RUN alone (ch-run)")).toFixed(0)} ms (target: under 1000)`,
  );
  if (podman)
    console.log(
      `  cold, ch-image / podman: x${(m("ch-image build, cold") / m("podman build, cold")).toFixed(2)} (target: at most x1)`,
    );
  if (hasCacheCmd) console.log(`\nch-image build-cache:\n${ch(["build-cache"]).trimEnd()}`);
} finally {
  if (podman) spawnSync(podman, ["unshare", "rm", "-rf", join(dir, "graph"), join(dir, "run")], { env: pEnv });
  spawnSync("chmod", ["-R", "u+rwX", dir]);
  rmSync(dir, { recursive: true, force: true });
}
