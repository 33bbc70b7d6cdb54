// Shared by the tests: the built programs, a busybox image made offline, and a runner.
import assert from "node:assert/strict";
import { type SpawnSyncOptions, spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

// The private single-node Slurm that .ci/setup-slurm.sh starts has its own configuration.
if (process.env.CH_TEST_SLURM_CONF) process.env.SLURM_CONF = process.env.CH_TEST_SLURM_CONF;

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
export const DIST = join(ROOT, "dist");
export const CH_RUN = join(DIST, "ch-run");

export function tmp(prefix = "chtest-"): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(d, 0o755);
  return d;
}

export function cleanup(dir: string): void {
  spawnSync("chmod", ["-R", "u+rwX", dir]);
  rmSync(dir, { recursive: true, force: true });
}

const APPLETS =
  "sh ls cat id echo true false env pwd sleep touch ps readlink stat chown chgrp kill ping test grep wc mkdir rm trap printf seq head".split(
    " ",
  );

/** A minimal image: busybox-static (Debian's) and the directories ch-run needs. */
export function busyboxImage(parent: string, name = "bb"): string {
  const img = join(parent, name);
  for (const d of [
    "bin",
    "dev",
    "proc",
    "sys",
    "tmp",
    "etc",
    "home",
    "root",
    "usr/bin",
    "ch",
    ...Array.from({ length: 10 }, (_, i) => `mnt/${i}`),
  ])
    mkdirSync(join(img, d), { recursive: true });
  copyFileSync("/bin/busybox", join(img, "bin/busybox"));
  chmodSync(join(img, "bin/busybox"), 0o755);
  for (const a of APPLETS) if (a !== "trap") symlinkSync("busybox", join(img, "bin", a));
  writeFileSync(join(img, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  writeFileSync(join(img, "etc/group"), "root:x:0:\n");
  writeFileSync(join(img, "etc/hosts"), "");
  writeFileSync(join(img, "etc/resolv.conf"), "");
  writeFileSync(join(img, "ch/environment"), "IMAGE_VAR=from-image\nIMAGE_PATH=/opt:$PATH\n");
  chmodSync(join(img, "tmp"), 0o1777);
  return img;
}

/** Copies a host program and the shared libraries it needs (per ldd) into an image, at the same
 * paths, so that the image can run it. */
export function copyWithLibs(program: string, img: string): void {
  const libs = run("ldd", [program]).stdout.matchAll(/(\/\S+) \(0x/g);
  for (const path of [program, ...[...libs].map((m) => m[1])]) {
    mkdirSync(join(img, dirname(path)), { recursive: true });
    copyFileSync(realpathSync(path), join(img, path));
    chmodSync(join(img, path), 0o755);
  }
}

export interface Result {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: SpawnSyncOptions = {}): Result {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 60_000, ...opts });
  return { status: r.status, signal: r.signal, stdout: String(r.stdout ?? ""), stderr: String(r.stderr ?? "") };
}

export function chRun(args: string[], opts: SpawnSyncOptions = {}): Result {
  return run(CH_RUN, args, opts);
}

export function read(path: string): string {
  return readFileSync(path, "utf8");
}

/** One-line error in Charliecloud's format: PROG[PID]: message: strerror (file.ts:LINE ERRNO). */
export const ERROR_LINE = /^ch-run\[\d+\]: error: .+ \([a-z0-9-]+\.ts:\d+ \d+\)\n$/;

/** A busybox image as a tarball in `dir` (bb.tar), imported into storage as `bb` by `image`
 * (ch-image with the test's storage): the base the builder's tests build FROM. */
export function importBusybox(dir: string, image: (args: string[]) => Result): void {
  const bb = busyboxImage(dir, "bbimg");
  const t = run("tar", ["-C", bb, "-cf", join(dir, "bb.tar"), "."]);
  assert.equal(t.status, 0, t.stderr);
  const i = image(["import", join(dir, "bb.tar"), "bb"]);
  assert.equal(i.status, 0, i.stderr);
}
