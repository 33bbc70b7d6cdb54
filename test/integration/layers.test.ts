// OCI layers unpacked one over another, whiteouts applied (src/image/unpack.ts directly).
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { unpackLayers } from "../../src/image/unpack.ts";
import { cleanup, tmp } from "../helpers.ts";
import { imageMembers, writeTar } from "../tarballs.ts";

let dir: string;
before(() => {
  dir = tmp("ch-layers-");
});
after(() => cleanup(dir));

describe("layers", () => {
  it("applies .wh.NAME and opaque whiteouts of lower layers only", async () => {
    const lower = writeTar(join(dir, "l1.tar.gz"), [
      ...imageMembers(),
      { path: "opt/", type: "Directory" },
      { path: "opt/old1", body: "1" },
      { path: "opt/olddir/", type: "Directory" },
      { path: "opt/olddir/x", body: "x" },
      { path: "etc/gone", body: "bye" },
      { path: "var/cache/", type: "Directory" },
    ]);
    const upper = writeTar(join(dir, "l2.tar"), [
      { path: "opt/", type: "Directory" },
      { path: "opt/new", body: "n" },
      { path: "opt/.wh..wh..opq", body: "" },
      { path: "etc/.wh.gone", body: "" },
      { path: "var/.wh.cache", body: "" },
      { path: "etc/.wh.never-existed", body: "" },
    ]);
    const out = join(dir, "img");
    await unpackLayers([lower, upper], out);
    assert.deepEqual(readdirSync(join(out, "opt")), ["new"]);
    assert.ok(!existsSync(join(out, "etc/gone")));
    assert.ok(!existsSync(join(out, "etc/.wh.gone")));
    assert.ok(!existsSync(join(out, "var/cache")));
    assert.equal(readFileSync(join(out, "etc/motd"), "utf8"), "hi\n");
  });

  it("refuses a whiteout that would reach outside through a symlink", async () => {
    const l1 = writeTar(join(dir, "s1.tar"), [...imageMembers(), { path: "evil", type: "SymbolicLink", linkpath: dir }]);
    const l2 = writeTar(join(dir, "s2.tar"), [{ path: "evil/.wh.s1.tar", body: "" }]);
    await assert.rejects(unpackLayers([l1, l2], join(dir, "img2")), /goes through absolute symlink evil/);
    assert.ok(existsSync(join(dir, "s1.tar")));
    assert.ok(!existsSync(join(dir, "img2")));
  });
});
