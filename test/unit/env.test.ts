import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { buildEnv, expand, hasBin, parseAssignment, parseEnvFile } from "../../src/container/env.ts";
import { fnmatch } from "../../src/container/fnmatch.ts";

describe("environment", () => {
  it("parses assignments like Charliecloud", () => {
    assert.deepEqual(parseAssignment("A=b=c", "x"), { name: "A", value: "b=c", origin: "x" });
    assert.equal(parseAssignment("A='q'", "x").value, "q");
    assert.equal(parseAssignment('A="q"', "x").value, '"q"');
    assert.throws(() => parseAssignment("=x", "=x"), /empty name: =x/);
    assert.throws(() => parseAssignment("noeq", "f:3"), /no delimiter: f:3/);
  });

  it("numbers file lines from 1, skipping empty ones", () => {
    const vars = parseEnvFile("A=1\n\nB=2\n", "f", false);
    assert.deepEqual(
      vars.map((v) => v.origin),
      ["f:1", "f:3"],
    );
    assert.throws(() => parseEnvFile("A=1\n# comment\n", "f", false), /no delimiter: f:2/);
    assert.deepEqual(
      parseEnvFile("A=1\0B=x\ny\0", "f", true).map((v) => v.value),
      ["1", "x\ny"],
    );
  });

  it("expands whole $VAR and {VAR} items, dropping unset ones", () => {
    const env = new Map([
      ["A", "1"],
      ["E", ""],
    ]);
    assert.equal(expand(`$A:x:$NOPE:$${"{A}"}`, env), "1:x:1");
    assert.equal(expand("a$A", env), "a$A");
    assert.equal(expand("$E", env), "");
    assert.equal(expand(":b::", env), ":b::");
  });

  it("matches globs on names as fnmatch(3) with FNM_EXTMATCH does", () => {
    assert.ok(fnmatch("SLURM_*", "SLURM_JOB_ID"));
    assert.ok(!fnmatch("SLURM_*", "XSLURM_"));
    assert.ok(fnmatch("A?[0-9]", "AB7"));
    assert.ok(fnmatch("[!A]*", "BX") && fnmatch("[^A]*", "BX"));
    assert.ok(!fnmatch("[!A]*", "AX"));
    assert.ok(fnmatch("a.b", "a.b") && !fnmatch("a.b", "axb"));
    assert.ok(fnmatch("[[:upper:]]_[]x]", "Q_]") && !fnmatch("[[:upper:]]*", "q"));
    assert.ok(fnmatch("a\\*", "a*") && !fnmatch("a\\*", "ab"));
    // The man page's example 4, and the extended forms one by one.
    const keep = "!(WANTED_*|ALSO_WANTED_*)";
    assert.ok(fnmatch(keep, "NOT_WANTED_1") && fnmatch(keep, "PATH"));
    assert.ok(!fnmatch(keep, "WANTED_1") && !fnmatch(keep, "ALSO_WANTED_2"));
    assert.ok(fnmatch("chue_@(1|2)", "chue_2") && !fnmatch("chue_@(1|2)", "chue_3") && !fnmatch("chue_@(1|2)", "chue_12"));
    assert.ok(fnmatch("x?(ab)y", "xy") && fnmatch("x?(ab)y", "xaby") && !fnmatch("x?(ab)y", "xababy"));
    assert.ok(fnmatch("x*(ab)y", "xy") && fnmatch("x*(ab)y", "xababy") && !fnmatch("x*(ab)y", "xaby!"));
    assert.ok(!fnmatch("x+(ab)y", "xy") && fnmatch("x+(ab|c)y", "xabccaby"));
    assert.ok(fnmatch("!(a)", "") && fnmatch("!(a)", "aa") && !fnmatch("!(a)", "a"));
    assert.ok(fnmatch("*.!(txt)", "f.c") && !fnmatch("*.!(txt)", "f.txt"));
    // Unbalanced: the characters are themselves.
    assert.ok(fnmatch("@(a", "@(a") && fnmatch("[a", "[a"));
  });

  it("appends /bin to PATH only when missing, and warns when PATH is unset", () => {
    assert.ok(hasBin("/usr/bin:/bin"));
    assert.ok(!hasBin("/usr/bin:/binaries"));
    const base = { home: "/", ops: [], expand: true, readImageFile: () => null };
    assert.equal(buildEnv({ ...base, host: { PATH: "/opt" } }).env.get("PATH"), "/opt:/bin");
    const none = buildEnv({ ...base, host: {} });
    assert.deepEqual(none.warnings, ["$PATH not set"]);
    assert.equal(none.env.has("PATH"), false);
  });

  it("applies operations in order and sets CH_RUNNING last", () => {
    const r = buildEnv({
      host: { PATH: "/bin", X: "1", CH_RUNNING: "no" },
      home: "/root",
      expand: true,
      readImageFile: (p) => (p === "/ch/environment" ? "IMG=$HOME\n" : null),
      ops: [
        { kind: "unset", glob: "*" },
        { kind: "set", vars: [{ name: "Y", value: "2", origin: "Y=2" }] },
        { kind: "image-file", path: "/ch/environment", nul: false },
      ],
    });
    assert.deepEqual(
      [...r.env],
      [
        ["Y", "2"],
        ["IMG", ""],
        ["CH_RUNNING", "Weird Al Yankovic"],
      ],
    );
    assert.throws(
      () =>
        buildEnv({
          host: {},
          home: "/",
          expand: true,
          readImageFile: () => null,
          ops: [{ kind: "image-file", path: "/ch/environment", nul: false }],
        }),
      /can't open: \/ch\/environment/,
    );
  });
});
