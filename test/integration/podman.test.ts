// ch-convert to and from rootless podman (Debian's podman), as an ordinary user. Docker runs the
// same commands (create, export, import) but needs a daemon, which this machine class has not.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, chRun, cleanup, DIST, run, tmp } from "../helpers.ts";

const podman = ["/usr/bin/podman", "/usr/local/bin/podman"].find((p) => existsSync(p));
let dir: string;
let env: NodeJS.ProcessEnv;

before(() => {
  dir = tmp();
  const xdg = join(dir, "xdg");
  mkdirSync(xdg, { mode: 0o700 });
  const conf = join(dir, "storage.conf");
  writeFileSync(conf, `[storage]\ndriver = "vfs"\ngraphroot = "${join(dir, "graph")}"\nrunroot = "${join(dir, "run")}"\n`);
  env = { ...process.env, XDG_RUNTIME_DIR: xdg, CONTAINERS_STORAGE_CONF: conf };
});
after(() => {
  if (podman) run(podman, ["unshare", "rm", "-rf", join(dir, "graph"), join(dir, "run")], { env });
  cleanup(dir);
});

describe("podman images", { skip: podman ? false : "podman not installed (.ci/run installs it)" }, () => {
  it("converts a directory to podman and back, and the result runs", () => {
    const img = busyboxImage(dir);
    writeFileSync(join(img, "marker"), "round trip\n");
    const to = run(join(DIST, "ch-convert"), ["-o", "podman", img, "localhost/chtest:rt"], { env });
    assert.equal(to.status, 0, to.stderr);
    assert.match(run(podman as string, ["images"], { env }).stdout, /localhost\/chtest\s+rt/);
    const out = join(dir, "back");
    const from = run(join(DIST, "ch-convert"), ["-i", "podman", "localhost/chtest:rt", out], { env });
    assert.equal(from.status, 0, from.stderr);
    assert.equal(readFileSync(join(out, "marker"), "utf8"), "round trip\n");
    assert.equal(chRun([out, "--", "cat", "/marker"]).stdout, "round trip\n");
  });

  it("names an image podman does not have", () => {
    const r = run(join(DIST, "ch-convert"), ["-i", "podman", "localhost/chtest:nope", join(dir, "x")], { env });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /chtest:nope/);
    assert.ok(!existsSync(join(dir, "x")));
  });
});
