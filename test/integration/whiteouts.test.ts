// Hostile names in layers and tarballs: whiteouts of "", "." and "..", symlinks planted by a
// lower layer, directories replaced by symlinks. Nothing outside the image may be touched: not
// the files beside it, not the other images in storage. Layers are unpacked by
// src/image/unpack.ts directly, by ch-convert and ch-tar2dir (tarballs), and by ch-image pull
// from a registry (Debian's docker-registry on loopback, test/registry/).
import assert from "node:assert/strict";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { unpackLayers } from "../../src/image/unpack.ts";
import { cleanup, DIST, type Result, run, tmp } from "../helpers.ts";
import { chEnv, chImage } from "../registry/chimage.ts";
import { busyboxLayer, type Layer, layerFromMembers, makeImage, Pusher } from "../registry/fixtures.ts";
import { type Registry, startRegistry } from "../registry/registry.ts";
import { imageMembers, type Member, writeTar } from "../tarballs.ts";

const ERROR = (prog: string) => new RegExp(`^${prog}\\[\\d+\\]: .+ \\([a-z0-9-]+\\.ts:\\d+ \\d+\\)\\n$`);

let dir: string;
let n = 0;
const fresh = (suffix = "") => join(dir, `t${++n}${suffix}`);

before(() => {
  dir = tmp("ch-whiteouts-");
});
after(() => cleanup(dir));

/** A directory holding what must survive: a file and a directory beside where the image goes
 * (and, if it was made, the image). */
function neighbourhood(): { parent: string; target: string; survives: (image?: boolean) => void } {
  const parent = fresh("-home");
  mkdirSync(join(parent, "sibdir"), { recursive: true });
  writeFileSync(join(parent, "sibling"), "precious");
  writeFileSync(join(parent, "sibdir/x"), "precious too");
  const target = join(parent, "img");
  return {
    parent,
    target,
    survives: (image = false) => {
      assert.deepEqual(
        readdirSync(parent).sort(),
        [...(image ? ["img"] : []), "sibdir", "sibling"],
        "only what was there before",
      );
      assert.equal(readFileSync(join(parent, "sibling"), "utf8"), "precious");
      assert.equal(readFileSync(join(parent, "sibdir/x"), "utf8"), "precious too");
    },
  };
}

/** A directory outside the image with a file to be kept, and an old mtime to be kept. */
function outsider(): { path: string; intact: () => void } {
  const path = fresh("-outside");
  mkdirSync(join(path, "y"), { recursive: true });
  writeFileSync(join(path, "victim"), "original");
  const old = new Date("2001-02-03T04:05:06Z");
  utimesSync(join(path, "y"), old, old);
  utimesSync(path, old, old);
  return {
    path,
    intact: () => {
      assert.deepEqual(readdirSync(path).sort(), ["victim", "y"]);
      assert.equal(readFileSync(join(path, "victim"), "utf8"), "original");
      assert.equal(statSync(path).mtime.toISOString(), old.toISOString(), "mtime of the outside directory");
      assert.equal(statSync(join(path, "y")).mtime.toISOString(), old.toISOString(), "mtime of a directory in it");
    },
  };
}

/** A new directory for tarballs. */
function tarballs(): string {
  const d = fresh("-tarballs");
  mkdirSync(d);
  return d;
}

const lower: Member[] = [...imageMembers(), { path: "sub/", type: "Directory" }, { path: "sub/keep", body: "k" }];

describe("whiteouts of nothing, the image or its parent are refused (layers)", () => {
  for (const [name, target] of [
    [".wh...", ".."],
    [".wh..", "."],
    [".wh.", ""],
    ["sub/.wh...", ".."],
    ["sub/.wh..", "."],
    ["./sub/.wh...", ".."],
  ]) {
    it(`${name}: one line naming it; the files beside the image survive`, async () => {
      const h = neighbourhood();
      const l1 = writeTar(fresh(".tar"), lower);
      const l2 = writeTar(fresh(".tar"), [{ path: name, body: "" }]);
      const err = await unpackLayers([l1, l2], h.target).then(
        () => null,
        (e: Error) => e,
      );
      h.survives();
      assert.ok(err, "refused");
      assert.ok(!err.message.includes("\n"), err.message);
      assert.ok(
        err.message.includes(`refusing unsafe member ${JSON.stringify(name)}: whiteout of ${JSON.stringify(target)}`),
        err.message,
      );
    });
  }

  it("a whiteout removes what lower layers left, not its own layer's files; .wh..wh.* are reserved", async () => {
    const h = neighbourhood();
    const l1 = writeTar(fresh(".tar"), [...lower, { path: "etc/old", body: "o" }]);
    const l2 = writeTar(fresh(".tar"), [
      { path: "etc/new", body: "n" },
      { path: "etc/.wh.new", body: "" },
      { path: "etc/.wh.old", body: "" },
      { path: ".wh..wh.plnk", body: "" },
    ]);
    await unpackLayers([l1, l2], h.target);
    assert.equal(readFileSync(join(h.target, "etc/new"), "utf8"), "n");
    assert.ok(!existsSync(join(h.target, "etc/old")));
    assert.ok(!existsSync(join(h.target, ".wh..wh.plnk")));
    assert.equal(readFileSync(join(h.target, "sub/keep"), "utf8"), "k");
  });
});

describe("a lower layer's symlink is never followed out of the image (layers)", () => {
  const cases: [string, (o: string) => Member[], (o: string) => Member[], RegExp][] = [
    [
      "absolute symlink, then a whiteout through it",
      (o) => [{ path: "a", type: "SymbolicLink", linkpath: o }],
      () => [{ path: "a/.wh.victim", body: "" }],
      /"a\/\.wh\.victim": goes through absolute symlink a ->/,
    ],
    [
      "absolute symlink, then a file through it",
      (o) => [{ path: "a", type: "SymbolicLink", linkpath: o }],
      () => [{ path: "a/victim", body: "pwned" }],
      /"a\/victim": goes through absolute symlink a ->/,
    ],
    [
      "relative symlink up and out, then an opaque whiteout through it",
      () => [{ path: "sub/a", type: "SymbolicLink", linkpath: "../../../../../../../../.." }],
      () => [{ path: "sub/a/.wh..wh..opq", body: "" }],
      /"sub\/a\/\.wh\.\.wh\.\.opq": goes through a symlink out of the image/,
    ],
    [
      "absolute symlink, then a FIFO through it",
      (o) => [{ path: "a", type: "SymbolicLink", linkpath: o }],
      () => [{ path: "a/fifo", type: "FIFO" }],
      /"a\/fifo": goes through absolute symlink a ->/,
    ],
    [
      "relative symlink up and out, then a FIFO through it",
      () => [{ path: "sub/a", type: "SymbolicLink", linkpath: "../../../../../../../../.." }],
      () => [{ path: "sub/a/fifo", type: "FIFO" }],
      /"sub\/a\/fifo": goes through a symlink out of the image/,
    ],
    [
      "absolute symlink, then a hard link to a file through it",
      (o) => [{ path: "a", type: "SymbolicLink", linkpath: o }],
      () => [{ path: "hl", type: "Link", linkpath: "a/victim" }],
      /"hl": goes through absolute symlink a ->/,
    ],
    [
      "a whiteout of the symlink removes the symlink only",
      (o) => [{ path: "a", type: "SymbolicLink", linkpath: o }],
      () => [{ path: ".wh.a", body: "" }],
      /^$/,
    ],
  ];
  for (const [name, l1, l2, why] of cases) {
    it(name, async () => {
      const o = outsider();
      const h = neighbourhood();
      const layers = [writeTar(fresh(".tar"), [...lower, ...l1(o.path)]), writeTar(fresh(".tar"), l2(o.path))];
      if (why.source === "^$") {
        await unpackLayers(layers, h.target);
        assert.ok(!existsSync(join(h.target, "a")));
      } else {
        await assert.rejects(unpackLayers(layers, h.target), why);
      }
      o.intact();
      h.survives(why.source === "^$");
    });
  }
});

describe("FIFO members of layers", () => {
  it("a FIFO over a lower layer's symlink out replaces the symlink, made inside the image", async () => {
    const o = outsider();
    const h = neighbourhood();
    const layers = [
      writeTar(fresh(".tar"), [...lower, { path: "a", type: "SymbolicLink", linkpath: join(o.path, "victim") }]),
      writeTar(fresh(".tar"), [{ path: "a", type: "FIFO", mode: 0o620 }]),
    ];
    await unpackLayers(layers, h.target);
    const st = lstatSync(join(h.target, "a"));
    assert.ok(st.isFIFO());
    assert.equal(st.mode & 0o7777, 0o620);
    assert.equal(st.mtime.toISOString(), "2020-01-02T03:04:05.000Z");
    o.intact();
    h.survives(true);
  });

  it("a FIFO member named .wh.NAME is a whiteout, as any member so named", async () => {
    const h = neighbourhood();
    const layers = [
      writeTar(fresh(".tar"), [...lower, { path: "etc/old", body: "o" }, { path: "sub/fifo", type: "FIFO" }]),
      writeTar(fresh(".tar"), [
        { path: "etc/.wh.old", type: "FIFO" },
        { path: "sub/.wh.fifo", type: "FIFO" },
        { path: ".wh..wh.plnk", type: "FIFO" },
      ]),
    ];
    await unpackLayers(layers, h.target);
    assert.ok(!existsSync(join(h.target, "etc/old")));
    assert.ok(!existsSync(join(h.target, "etc/.wh.old")));
    assert.deepEqual(readdirSync(join(h.target, "sub")), ["keep"]);
    assert.ok(!existsSync(join(h.target, ".wh..wh.plnk")));
  });
});

describe("ch-convert and ch-tar2dir: a directory replaced by a symlink gets no times set through it", () => {
  // Directory times are set last; a later member may have replaced the directory (or one above
  // it) by a symlink out of the image.
  const members = (o: string): Member[] => [
    ...imageMembers(),
    { path: "d/", type: "Directory" },
    { path: "d", type: "SymbolicLink", linkpath: o },
    { path: "x/", type: "Directory" },
    { path: "x/y/", type: "Directory" },
    { path: "x", type: "SymbolicLink", linkpath: o },
    { path: "wh/", type: "Directory" },
    { path: "wh/.wh...", body: "a file, outside layer mode" },
  ];

  it("ch-convert", () => {
    const o = outsider();
    const h = neighbourhood();
    const r = run(join(DIST, "ch-convert"), ["-q", writeTar(fresh(".tar"), members(o.path)), h.target]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(lstatSync(join(h.target, "d")).isSymbolicLink(), true);
    assert.equal(readFileSync(join(h.target, "wh/.wh..."), "utf8"), "a file, outside layer mode");
    o.intact();
    h.survives(true);
  });

  it("ch-tar2dir", () => {
    const o = outsider();
    const h = neighbourhood();
    const tarball = writeTar(join(tarballs(), "img.tar.gz"), members(o.path));
    const r = run(join(DIST, "ch-tar2dir"), [tarball, h.parent]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(lstatSync(join(h.target, "x")).isSymbolicLink(), true);
    o.intact();
    h.survives(true);
  });

  it("ch-tar2dir refuses a hard link through a symlink, leaving nothing", () => {
    const o = outsider();
    const h = neighbourhood();
    const tarball = writeTar(join(tarballs(), "img.tar"), [
      ...imageMembers(),
      { path: "s", type: "SymbolicLink", linkpath: o.path },
      { path: "hl", type: "Link", linkpath: "s/victim" },
    ]);
    const r = run(join(DIST, "ch-tar2dir"), ["-q", tarball, h.parent]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, ERROR("ch-tar2dir"));
    assert.match(r.stderr, /"hl": goes through absolute symlink s ->/);
    o.intact();
    h.survives();
  });
});

describe("a directory is replaced (so removed) only if it looks like an image", () => {
  // A home directory often has ~/dev and ~/etc; Charliecloud wants /bin, /dev and /usr.
  const home = () => {
    const h = fresh("-home");
    for (const d of ["dev", "etc", "projects"]) mkdirSync(join(h, d), { recursive: true });
    writeFileSync(join(h, "projects/thesis.tex"), "precious");
    return h;
  };
  const kept = (h: string) => {
    assert.deepEqual(readdirSync(h).sort(), ["dev", "etc", "projects"]);
    assert.equal(readFileSync(join(h, "projects/thesis.tex"), "utf8"), "precious");
  };

  it("ch-convert TARBALL ~ and ch-tar2dir refuse, touching nothing", () => {
    const h = home();
    const r = run(join(DIST, "ch-convert"), ["-q", writeTar(fresh(".tar"), imageMembers()), h]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /exists but does not look like an image, not replacing/);
    kept(h);
    const parent = fresh();
    mkdirSync(parent);
    const h2 = join(parent, "img");
    mkdirSync(h2);
    for (const d of ["dev", "etc", "projects"]) mkdirSync(join(h2, d));
    writeFileSync(join(h2, "projects/thesis.tex"), "precious");
    const t = run(join(DIST, "ch-tar2dir"), ["-q", writeTar(join(tarballs(), "img.tar"), imageMembers()), parent]);
    assert.equal(t.status, 1);
    kept(h2);
  });

  it("an image made before (from a tarball with only /etc) is replaced", () => {
    const out = fresh();
    const tar = writeTar(fresh(".tar"), [{ path: "etc/motd", body: "1" }]);
    assert.equal(run(join(DIST, "ch-convert"), ["-q", tar, out]).status, 0);
    const r = run(join(DIST, "ch-convert"), ["-q", writeTar(fresh(".tar"), [{ path: "etc/motd", body: "2" }]), out]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(readFileSync(join(out, "etc/motd"), "utf8"), "2");
  });
});

describe("ch-image pull of a hostile layer", () => {
  let reg: Registry;
  let bb: Layer;
  before(async () => {
    reg = await startRegistry(join(dir, "registry"));
    bb = busyboxLayer(dir);
    const p = new Pusher(reg);
    await p.image("good", "1", makeImage({ layers: [bb, layerFromMembers([{ path: "good.txt", body: "good\n" }])] }));
    for (const [tag, name] of [
      ["dotdot", ".wh..."],
      ["dot", ".wh.."],
      ["subdotdot", "etc/.wh..."],
    ])
      await p.image("hostile", tag, makeImage({ layers: [bb, layerFromMembers([{ path: name, body: "" }])] }));
    await p.image(
      "fifo",
      "1",
      makeImage({
        layers: [
          bb,
          layerFromMembers([
            { path: "srv/", type: "Directory" },
            { path: "srv/fifo", type: "FIFO", mode: 0o640 },
            { path: "srv/gone", type: "FIFO" },
            { path: "dev/null", type: "CharacterDevice" },
          ]),
          layerFromMembers([{ path: "srv/.wh.gone", body: "" }]),
        ],
      }),
    );
    await p.image("devfiles", "1", makeImage({ layers: [bb, layerFromMembers([{ path: "dev/leftover", body: "x\n" }])] }));
  });
  after(async () => {
    await reg?.stop();
  });

  const pull = (st: string, ...args: string[]): Promise<Result> => chImage(["-s", st, "pull", ...args], chEnv());
  const refused = (r: Result, name: string) => {
    assert.equal(r.status, 1, r.stdout + r.stderr);
    const last = r.stderr.trimEnd().split("\n").pop() as string;
    assert.match(`${last}\n`, ERROR("ch-image"));
    assert.ok(last.includes(`refusing unsafe member ${JSON.stringify(name)}: whiteout of`), r.stderr);
  };

  for (const [tag, name] of [
    ["dotdot", ".wh..."],
    ["dot", ".wh.."],
    ["subdotdot", "etc/.wh..."],
  ]) {
    it(`${name} into storage: the other images survive`, async () => {
      const st = fresh("-storage");
      const good = await pull(st, `${reg.host}/good:1`);
      assert.equal(good.status, 0, good.stderr);
      const r = await pull(st, `${reg.host}/hostile:${tag}`);
      const goodDir = join(st, "img", `${reg.host.replace(":", "+")}%good+1`);
      assert.ok(existsSync(goodDir), `the other image survives:\n${r.stderr}`);
      assert.equal(readFileSync(join(goodDir, "good.txt"), "utf8"), "good\n");
      assert.ok(existsSync(join(goodDir, "bin/busybox")));
      assert.deepEqual(readdirSync(join(st, "img")), [`${reg.host.replace(":", "+")}%good+1`]);
      const list = await chImage(["-s", st, "list"], chEnv());
      assert.equal(list.stdout, `${reg.host}/good:1\n`, list.stderr);
      refused(r, name);
    });
  }

  it("a layer's FIFO is pulled as a FIFO (mode, mtime kept; whited out by a later layer), a device file left out with a warning", async () => {
    const st = fresh("-storage");
    const r = await pull(st, `${reg.host}/fifo:1`);
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stderr,
      /warning: layer 2\/3 [0-9a-f]+: device file ignored \(making one needs privilege\): dev\/null \(character device 0,0\)/,
    );
    const img = join(st, "img", `${reg.host.replace(":", "+")}%fifo+1`);
    const f = lstatSync(join(img, "srv/fifo"));
    assert.ok(f.isFIFO());
    assert.equal(f.mode & 0o7777, 0o640);
    assert.equal(f.mtime.toISOString(), "2020-01-02T03:04:05.000Z");
    assert.deepEqual(readdirSync(join(img, "srv")), ["fifo"]);
    assert.deepEqual(readdirSync(join(img, "dev")), []);
  });

  it("/dev of a pulled image is emptied, as Charliecloud does", async () => {
    const st = fresh("-storage");
    const r = await pull(st, `${reg.host}/devfiles:1`);
    assert.equal(r.status, 0, r.stderr);
    const img = join(st, "img", `${reg.host.replace(":", "+")}%devfiles+1`);
    assert.ok(existsSync(join(img, "bin/busybox")));
    assert.deepEqual(readdirSync(join(img, "dev")), []);
  });

  it(".wh... into a directory given as a path: the files beside it survive", async () => {
    const h = neighbourhood();
    const r = await pull(fresh("-storage"), `${reg.host}/hostile:dotdot`, h.target);
    h.survives();
    refused(r, ".wh...");
  });
});
