import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { buildEnv, expand, globToRegExp, hasBin, parseAssignment, parseEnvFile } from "../../src/container/env.ts";

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

  it("matches globs on names", () => {
    assert.ok(globToRegExp("SLURM_*").test("SLURM_JOB_ID"));
    assert.ok(!globToRegExp("SLURM_*").test("XSLURM_"));
    assert.ok(globToRegExp("A?[0-9]").test("AB7"));
    assert.ok(globToRegExp("[!A]*").test("BX"));
    assert.ok(!globToRegExp("[!A]*").test("AX"));
    assert.ok(globToRegExp("a.b").test("a.b") && !globToRegExp("a.b").test("axb"));
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
