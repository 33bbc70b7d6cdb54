// The builder's paths (src/builder/paths.ts): .dockerignore by Docker's documented rules,
// filepath.Match wildcards, and paths resolved inside a root as if it were "/".
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { expandGlob, goGlobRegExp, IgnoreMatcher, mkdirsIn, resolveIn } from "../../src/builder/paths.ts";

describe(".dockerignore", () => {
  const table: [string, string, boolean][] = [
    // Docker's documentation's examples.
    ["*/temp*", "somedir/temporary.txt", true],
    ["*/temp*", "somedir/temp", true],
    ["*/temp*", "temp", false],
    ["*/temp*", "a/b/temp", false],
    ["*/*/temp*", "somedir/subdir/temporary.txt", true],
    ["temp?", "temp1", true],
    ["temp?", "temp12", false],
    ["**/*.go", "a.go", true],
    ["**/*.go", "x/y/a.go", true],
    ["**/*.go", "x/y/a.gox", false],
    ["*.md\n!README*.md\nREADME-secret.md", "README-secret.md", true],
    ["*.md\n!README*.md\nREADME-secret.md", "README.md", false],
    ["*.md\n!README*.md\nREADME-secret.md", "other.md", true],
    ["*.md\nREADME-secret.md\n!README*.md", "README-secret.md", false],
    // A directory excludes what is in it; cleaned patterns; comments and blank lines.
    ["dir", "dir/sub/file", true],
    ["dir/", "dir/file", true],
    ["/dir", "dir/file", true],
    ["./dir/../dir", "dir/file", true],
    ["# dir\n\n", "dir/file", false],
    ["dir", "dirt", false],
    ["d[a-c]r", "dbr/x", true],
    ["d[^a-c]r", "dbr", false],
    ["\\*", "*", true],
    ["\\*", "x", false],
  ];
  for (const [patterns, path, excluded] of table)
    it(`${JSON.stringify(patterns)} ${excluded ? "excludes" : "keeps"} ${path}`, () => {
      assert.equal(new IgnoreMatcher(patterns).excluded(path), excluded);
    });
  it("knows whether it has exceptions", () => {
    assert.equal(new IgnoreMatcher("a\n!b\n").hasExceptions, true);
    assert.equal(new IgnoreMatcher("a\n").hasExceptions, false);
    assert.equal(new IgnoreMatcher("#x\n").empty, true);
  });
});

describe("COPY wildcards (Go's filepath.Match)", () => {
  it("match one component, dot files included", () => {
    const re = goGlobRegExp("*.txt");
    assert.ok(re.test("a.txt"));
    assert.ok(re.test(".hidden.txt"));
    assert.ok(!re.test("a.txt.bak"));
    assert.ok(goGlobRegExp("[a-c]?").test("b9"));
    assert.ok(!goGlobRegExp("[!a-c]?").test("b9"));
    assert.ok(goGlobRegExp("a\\*").test("a*"));
    assert.ok(!goGlobRegExp("a\\*").test("ab"));
    assert.throws(() => goGlobRegExp("[abc"), /syntax error in pattern/);
  });
});

describe("paths inside a root", () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), "ch-paths-"));
    mkdirSync(join(root, "usr/lib"), { recursive: true });
    writeFileSync(join(root, "usr/lib/x.txt"), "");
    writeFileSync(join(root, "usr/lib/y.txt"), "");
    writeFileSync(join(root, "usr/lib/z.bin"), "");
    symlinkSync("usr/lib", join(root, "lib"));
    symlinkSync("/usr/lib", join(root, "abs"));
    symlinkSync("../../../../etc", join(root, "up"));
    symlinkSync("loop2", join(root, "loop1"));
    symlinkSync("loop1", join(root, "loop2"));
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it("follows relative symlinks, and absolute ones inside the root (noting the escape)", () => {
    assert.deepEqual(
      [resolveIn(root, "/lib/x.txt", true).rel, resolveIn(root, "/lib/x.txt", true).escaped],
      ["usr/lib/x.txt", false],
    );
    const abs = resolveIn(root, "abs/x.txt", true);
    assert.equal(abs.rel, "usr/lib/x.txt");
    assert.equal(abs.escaped, true);
    const up = resolveIn(root, "up/passwd", true);
    assert.equal(up.host, join(root, "etc/passwd"));
    assert.equal(up.escaped, true);
    assert.equal(resolveIn(root, "../../x", true).host, join(root, "x"));
    assert.equal(resolveIn(root, "lib", false).rel, "lib");
    assert.equal(resolveIn(root, "lib", false).st?.isSymbolicLink(), true);
    assert.throws(() => resolveIn(root, "loop1/x", true), /too many levels of symbolic links/);
  });

  it("expands wildcards, through symlinked directories", () => {
    assert.deepEqual(expandGlob(root, "lib/*.txt"), ["lib/x.txt", "lib/y.txt"]);
    assert.deepEqual(expandGlob(root, "/usr/*/z.*"), ["usr/lib/z.bin"]);
    assert.deepEqual(expandGlob(root, "nothere/*"), []);
    assert.deepEqual(expandGlob(root, "plain/path"), ["plain/path"]);
  });

  it("makes directories through symlinks inside the root, never out of it", () => {
    assert.equal(mkdirsIn(root, "/lib/new/dir").host, join(root, "usr/lib/new/dir"));
    assert.equal(mkdirsIn(root, "/up/made").host, join(root, "etc/made"));
    assert.throws(() => mkdirsIn(root, "/usr/lib/x.txt/sub"), /not a directory: \/usr\/lib\/x\.txt/);
  });
});
