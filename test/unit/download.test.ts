// ADD's URL sources (src/builder/download.ts) and the HEALTHCHECK a build records: how a URL is
// told from a path and from git, the file name Docker gives it, --checksum's syntax.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { healthcheckOf } from "../../src/builder/build.ts";
import { parseDockerfile } from "../../src/builder/dockerfile.ts";
import { isGitSource, isUrl, parseChecksum, urlFileName } from "../../src/builder/download.ts";

describe("ADD of a URL", () => {
  it("tells URLs from paths and git sources", () => {
    assert.deepEqual(["http://h/x", "HTTPS://h/x", "ftp://h/x", "h/x", "http:/x"].map(isUrl), [true, true, false, false, false]);
    assert.deepEqual(
      ["git@github.com:a/b.git", "git://h/r", "https://h/r.git", "https://h/r.git#v1", "https://h/f.tar", "x.git"].map(
        isGitSource,
      ),
      [true, true, true, true, false, false],
    );
  });

  it("names the file as Docker does: the URL path's last element, else __unnamed__", () => {
    assert.deepEqual(
      [
        "http://h/a/b.txt",
        "http://h/a/b.txt?q=1#f",
        "http://h/dir/",
        "http://h/%41%20b",
        "http://h",
        "http://h/..",
        "http://h/a/%2e%2e",
      ].map(urlFileName),
      ["b.txt", "b.txt", "dir", "A b", "__unnamed__", "__unnamed__", "__unnamed__"],
    );
  });

  it("--checksum: sha256, sha384 or sha512 with the right length; anything else an error naming the line", () => {
    assert.deepEqual(parseChecksum(`sha256:${"AB".repeat(32)}`, "x"), { algo: "sha256", hex: "ab".repeat(32) });
    assert.equal(parseChecksum(`sha512:${"0".repeat(128)}`, "x").algo, "sha512");
    for (const bad of [
      "sha256:abc",
      `md5:${"0".repeat(32)}`,
      `sha256:${"g".repeat(64)}`,
      "0".repeat(64),
      `sha384:${"0".repeat(64)}`,
    ])
      assert.throws(() => parseChecksum(bad, "Dockerfile:4: ADD"), {
        message: `Dockerfile:4: ADD: --checksum: invalid digest (sha256:HEX, sha384:HEX or sha512:HEX expected): ${bad}`,
      });
  });
});

describe("HEALTHCHECK as recorded", () => {
  const hc = (line: string) => healthcheckOf(parseDockerfile(`FROM x\n${line}\n`, "Dockerfile").instructions[1]);
  it("exec form, shell form, NONE; durations in nanoseconds, unset ones absent", () => {
    assert.deepEqual(hc('HEALTHCHECK CMD ["a", "b"]'), { Test: ["CMD", "a", "b"] });
    assert.deepEqual(hc("HEALTHCHECK --start-period=2s --start-interval=100ms CMD curl -f http://x || exit 1"), {
      Test: ["CMD-SHELL", "curl -f http://x || exit 1"],
      StartPeriod: 2e9,
      StartInterval: 100e6,
    });
    assert.deepEqual(hc("HEALTHCHECK NONE"), { Test: ["NONE"] });
  });
});
