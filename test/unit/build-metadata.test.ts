// The metadata a build starts from and writes (src/builder/build.ts): Charliecloud's defaults,
// the base image's ch/metadata.json or ch/environment read inside the image, untrusted values
// dropped; ch/ written without following a symlink.
import assert from "node:assert/strict";
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { baseMetadata, DEFAULT_ENV, exposedPorts, goDurationNs, writeBuildMetadata } from "../../src/builder/build.ts";

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "ch-meta-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function image(name: string): string {
  const root = join(dir, name);
  mkdirSync(join(root, "ch"), { recursive: true });
  return root;
}

describe("build metadata", () => {
  it("scratch: Charliecloud's defaults", () => {
    const m = baseMetadata(null);
    assert.deepEqual(m.env, Object.fromEntries(DEFAULT_ENV));
    assert.deepEqual([m.cwd, m.shell, m.cmd, m.user], ["/", ["/bin/sh", "-c"], [], ""]);
  });

  it("ch/metadata.json over the defaults; impossible variables and a relative cwd dropped", () => {
    const root = image("a");
    writeFileSync(
      join(root, "ch/metadata.json"),
      JSON.stringify({
        arch: "arm64/v8",
        cwd: "relative",
        env: { PATH: "/x", "A=B": "1", "": "2", N: "a\0b", OK: "yes", NUM: 3 },
        shell: ["/bin/bash", "-c"],
        cmd: ["a", 1],
        user: "u",
        labels: { l: "v" },
      }),
    );
    const m = baseMetadata(root);
    assert.equal(m.arch, "arm64/v8");
    assert.equal(m.cwd, "/");
    assert.deepEqual(m.env, { PATH: "/x", TAR_OPTIONS: "--no-same-owner", OK: "yes" });
    assert.deepEqual([m.shell, m.cmd, m.user, m.labels], [["/bin/bash", "-c"], ["a"], "u", { l: "v" }]);
  });

  it("EXPOSE, HEALTHCHECK, STOPSIGNAL, ONBUILD from ch/metadata.json; untrusted values dropped", () => {
    const root = image("hc");
    writeFileSync(
      join(root, "ch/metadata.json"),
      JSON.stringify({
        expose: ["80/tcp", 3],
        healthcheck: { Test: ["CMD-SHELL", "true"], Interval: 5e9, Retries: -1, Timeout: "x" },
        stopsignal: "SIGINT",
        onbuild: ["RUN x", null],
      }),
    );
    const m = baseMetadata(root);
    assert.deepEqual(
      [m.expose, m.healthcheck, m.stopsignal, m.onbuild],
      [["80/tcp"], { Test: ["CMD-SHELL", "true"], Interval: 5e9 }, "SIGINT", ["RUN x"]],
    );
    const none = baseMetadata(null);
    assert.deepEqual([none.expose, none.healthcheck, none.stopsignal, none.onbuild], [[], null, "", []]);
  });

  it("Go durations and EXPOSE's ports as Docker reads them", () => {
    assert.deepEqual(["1m30s", "0.5s", "1h", "250ms", "1.5m", "0"].map(goDurationNs), [90e9, 0.5e9, 3600e9, 250e6, 90e9, 0]);
    assert.deepEqual(exposedPorts(["80", "53/UDP", "10-12/sctp"], "x"), ["80/tcp", "53/udp", "10/sctp", "11/sctp", "12/sctp"]);
    for (const bad of ["0", "65536", "80/icmp", "x", "12-10", "80/tcp/x"])
      assert.throws(() => exposedPorts([bad], "Dockerfile:3: EXPOSE"), { message: `Dockerfile:3: EXPOSE: invalid port: ${bad}` });
  });

  it("ch/environment when there is no metadata; a symlink out of the image is not followed", () => {
    const root = image("b");
    writeFileSync(join(root, "ch/environment"), "A=1\nB=x=y\nnot a line\n");
    assert.deepEqual(baseMetadata(root).env, { ...Object.fromEntries(DEFAULT_ENV), A: "1", B: "x=y" });
    const outside = join(dir, "secret");
    writeFileSync(outside, "SECRET=1\n");
    const evil = image("c");
    symlinkSync(outside, join(evil, "ch/environment"));
    assert.equal(baseMetadata(evil).env.SECRET, undefined);
    // Inside the image, a symlink is followed there.
    const inside = image("d");
    writeFileSync(join(inside, "env"), "IN=1\n");
    symlinkSync("/env", join(inside, "ch/environment"));
    assert.equal(baseMetadata(inside).env.IN, "1");
  });

  it("writes ch/ as a directory of the image, replacing a symlink", () => {
    const root = join(dir, "w");
    const target = join(dir, "target");
    mkdirSync(root);
    mkdirSync(target);
    symlinkSync(target, join(root, "ch"));
    const m = baseMetadata(null);
    m.env.MULTI = "a\nb";
    writeBuildMetadata(root, m);
    assert.equal(lstatSync(join(root, "ch")).isDirectory(), true);
    assert.equal(JSON.parse(readFileSync(join(root, "ch/metadata.json"), "utf8")).env.MULTI, "a\nb");
    assert.doesNotMatch(readFileSync(join(root, "ch/environment"), "utf8"), /MULTI/);
    assert.deepEqual(readFileSync(join(root, "ch/environment"), "utf8").split("\n").filter(Boolean).length, 2);
  });
});
