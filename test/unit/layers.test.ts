// The build cache's layers on the host side (layers.ts), on real directories with no container:
// whiteouts (character devices 0:0, which mknod(1) makes unprivileged), opaque directories
// (user.overlay.opaque), a layered view for COPY, applying layers to a plain directory and
// undoing them; build-cache --tree's drawing.
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { StateRecord } from "../../src/builder/cache.ts";
import { treeLines } from "../../src/builder/cache-commands.ts";
import { applyLayer, LayeredTree, OPAQUE_XATTR, restorePath, revertLayer, scanLayer } from "../../src/builder/layers.ts";
import { mkdirsIn, resolveIn } from "../../src/builder/paths.ts";
import { libc, loadLibc } from "../../src/sys/libc.ts";
import { cleanup, run, tmp } from "../helpers.ts";

let dir: string;
let xattrs = true;

/** Makes a tree: content, a directory (null), a whiteout ("wh"), a link (["link", target]). */
function tree(root: string, entries: Record<string, string | null | "wh" | ["link", string]>): string {
  mkdirSync(root, { recursive: true });
  for (const [p, v] of Object.entries(entries)) {
    const path = join(root, p);
    mkdirSync(join(path, ".."), { recursive: true });
    if (v === null) mkdirSync(path, { recursive: true });
    else if (v === "wh") assert.equal(run("mknod", [path, "c", "0", "0"]).status, 0, `mknod ${path}`);
    else if (Array.isArray(v)) symlinkSync(v[1], path);
    else writeFileSync(path, v);
  }
  return root;
}

/** Every entry under a directory: "path" for a directory, "path=content", "path->target". */
function list(root: string, rel = ""): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(root, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const r = rel === "" ? e.name : `${rel}/${e.name}`;
    if (e.isDirectory()) out.push(`${r}/`, ...list(root, r));
    else if (e.isSymbolicLink()) out.push(`${r}->`);
    else out.push(`${r}=${readFileSync(join(root, r), "utf8")}`);
  }
  return out;
}

before(async () => {
  dir = tmp("ch-layers-");
  await loadLibc();
  mkdirSync(join(dir, "probe"));
  try {
    libc().lsetxattr(join(dir, "probe"), OPAQUE_XATTR, Buffer.from("y"));
  } catch {
    xattrs = false; // a file system without user xattrs: opaque directories not tested
  }
});
after(() => cleanup(dir));

describe("build cache layers", () => {
  it("LayeredTree: whiteouts hide, opaque directories don't merge, writes go to the upper, lower directories copied up", () => {
    const base = tree(join(dir, "t1/base"), { "a/x": "X", "a/y": "Y", "b/z": "Z", gone: "G", "lnk/.keep": "" });
    const l1 = tree(join(dir, "t1/l1"), { gone: "wh", "a/y": "wh", "b/new": "N" });
    if (xattrs) libc().lsetxattr(join(l1, "b"), OPAQUE_XATTR, Buffer.from("y"));
    const up = tree(join(dir, "t1/up"), {});
    const t = new LayeredTree([up, l1, base]);
    assert.equal(t.lstat("gone"), null);
    assert.equal(t.lstat("a/y"), null);
    assert.equal(t.lstat("a/x")?.isFile(), true);
    assert.equal(t.lstat("b/new")?.isFile(), true);
    if (xattrs) assert.equal(t.lstat("b/z"), null, "opaque b hides the base's b/z");
    // COPY's path functions through the tree: parents made in the upper one, modes kept.
    const r = mkdirsIn(t, "a/deep/er");
    assert.equal(r.host, join(up, "a/deep/er"));
    assert.deepEqual(list(up), ["a/", "a/deep/", "a/deep/er/"]);
    assert.equal(resolveIn(t, "a/x", true).st?.isFile(), true);
    assert.equal(scanLayer(up).entries, 3);
  });

  it("applyLayer, then revertLayer and restorePath put a directory back to an earlier state", () => {
    const base = tree(join(dir, "t2/base"), {
      "a/x": "X",
      "a/y": "Y",
      "b/z": "Z",
      gone: "G",
      "d/keep": "K",
      l: ["link", "a/x"],
    });
    const l1 = tree(join(dir, "t2/l1"), { gone: "wh", "a/y": "wh", "a/x": "X2", "b/new": "N", d: "now a file", l: "wh" });
    if (xattrs) libc().lsetxattr(join(l1, "b"), OPAQUE_XATTR, Buffer.from("y"));
    const img = join(dir, "t2/img");
    mkdirSync(img);
    applyLayer(base, img);
    const before = list(img);
    assert.deepEqual(before, ["a/", "a/x=X", "a/y=Y", "b/", "b/z=Z", "d/", "d/keep=K", "gone=G", "l->"]);
    applyLayer(l1, img);
    assert.deepEqual(list(img), ["a/", "a/x=X2", "b/", "b/new=N", ...(xattrs ? [] : ["b/z=Z"]), "d=now a file"]);
    revertLayer(l1, [base], img);
    assert.deepEqual(list(img), before);
    // restorePath of a directory merges its layers bottom up.
    const l2 = tree(join(dir, "t2/l2"), { "a/w": "W" });
    restorePath([l2, base], "a", img);
    assert.deepEqual(list(img).slice(0, 4), ["a/", "a/w=W", "a/x=X", "a/y=Y"]);
    const now = list(img);
    restorePath([base], "nothere", img);
    assert.deepEqual(list(img), now, "a path no layer has: nothing to do");
  });

  it("--tree draws states under their parents with the images that hold them", () => {
    const rec = (id: string, parent: string | null, text: string, created: string): StateRecord => ({
      id: id.repeat(64),
      parent: parent === null ? null : parent.repeat(64),
      text,
      config: {},
      created,
      layer: text.startsWith("RUN"),
      flat: parent === null,
      chain: [],
      opaque: [],
      entries: 2,
      bytes: 2048,
    });
    const lines = treeLines(
      [
        rec("b", "a", "RUN x", "2"),
        rec("a", null, "FROM bb", "1"),
        rec("c", "a", "ENV y=1", "3"),
        rec("d", "z", "RUN orphan", "4"),
      ],
      new Map([["b".repeat(64), ["img:latest", "old:latest (deleted)"]]]),
    );
    assert.deepEqual(lines, [
      "* aaaaaaaaaaaa FROM bb",
      "  * bbbbbbbbbbbb RUN x [2 entries, 2.0 KiB] <- img:latest, old:latest (deleted)",
      "  * cccccccccccc ENV y=1",
      "* dddddddddddd RUN orphan [2 entries, 2.0 KiB]",
    ]);
  });
});
