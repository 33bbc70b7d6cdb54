// A set-user-ID or set-group-ID copy of the binary refuses to start (exit 31), before it loads
// anything; and a copy under another name (ch-run.setgid, ch-run-0.39) is still that program.
import assert from "node:assert/strict";
import { chmodSync, copyFileSync, existsSync, statSync, symlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, cleanup, DIST, run, tmp } from "../helpers.ts";

let dir: string;
let img: string;

before(() => {
  dir = tmp();
  img = busyboxImage(dir);
});
after(() => cleanup(dir));

const REFUSED = (prog: string, what: string) => new RegExp(`^${prog}\\[\\d+\\]: error: ${what} not allowed: .+\\n$`);

describe("program names", () => {
  it("acts as the program its name starts with", () => {
    const names = {
      "ch-run.setgid": "ch-run",
      "ch-run-0.39": "ch-run",
      "ch-image-old": "ch-image",
      "ch-convert.bak": "ch-convert",
    };
    for (const [name, prog] of Object.entries(names)) {
      symlinkSync(join(DIST, "charliecloud"), join(dir, name));
      const r = run(join(dir, name), ["--help"]);
      assert.equal(r.status, 0, `${name}: ${r.stderr}`);
      // Help names the program by the name it was called by (ch-run's, as argp) or its own.
      assert.match(r.stdout, new RegExp(`^Usage: (${prog}|${name.replace(".", "\\.")}) `), name);
      if (prog === "ch-run") assert.match(r.stdout, /Run a command in a Charliecloud container/, name);
    }
    const r = run(join(dir, "ch-run-0.39"), [img, "--", "echo", "renamed"]);
    assert.equal(r.stderr, "");
    assert.equal(r.stdout, "renamed\n");
    // Through charliecloud's first argument too.
    assert.match(
      run(join(DIST, "charliecloud"), ["ch-run.x", "--help"]).stdout,
      /^Usage: ch-run .*\n\nRun a command in a Charliecloud container/,
    );
  });
});

describe("set-ID copies", () => {
  it("refuses a setgid copy (as Charliecloud's own test does: a group of the user's other than the first)", (t) => {
    const groups = run("id", ["-G"]).stdout.trim().split(/\s+/).map(Number);
    const other = groups.find((g) => g !== process.getgid?.());
    if (other === undefined) {
      t.skip(`user is in one group only (${groups}); .ci/run adds chtest to a second`);
      return;
    }
    const copy = join(dir, "ch-run");
    copyFileSync(join(DIST, "charliecloud"), copy);
    assert.equal(run("chgrp", [String(other), copy]).status, 0);
    chmodSync(copy, 0o2755);
    assert.equal(statSync(copy).mode & 0o7777, 0o2755);
    const r = run(copy, ["-b", "/etc:/mnt", img, "--", "cat", "/mnt/hostname"]);
    assert.equal(r.status, 31, r.stderr);
    assert.match(r.stderr, REFUSED("ch-run", "setgid"));
    assert.equal(r.stdout, "");
    // Every program, not only ch-run; and --version too: nothing runs.
    symlinkSync(copy, join(dir, "ch-image"));
    const i = run(join(dir, "ch-image"), ["--version"]);
    assert.equal(i.status, 31);
    assert.match(i.stderr, REFUSED("ch-image", "setgid"));
  });

  it("refuses a setuid-root copy (made by .ci/run as root)", (t) => {
    const copy = process.env.CH_TEST_SETUID_COPY;
    if (!copy || !existsSync(copy)) {
      t.skip("no setuid-root copy: .ci/run makes one as root and names it in CH_TEST_SETUID_COPY");
      return;
    }
    const st = statSync(copy);
    assert.equal(st.uid, 0);
    assert.equal(st.mode & 0o4000, 0o4000);
    const r = run(copy, ["-b", "/etc:/mnt", img, "--", "head", "/mnt/shadow"]);
    assert.equal(r.status, 31, r.stderr);
    assert.match(r.stderr, REFUSED("ch-run", "setuid"));
    assert.equal(r.stdout, "");
    const image = join(dirname(copy), "ch-image");
    if (existsSync(image)) {
      const storage = join(dir, "stor");
      const i = run(image, ["-s", storage, "list"]);
      assert.equal(i.status, 31);
      assert.match(i.stderr, REFUSED("ch-image", "setuid"));
      assert.equal(existsSync(storage), false);
    }
  });
});
