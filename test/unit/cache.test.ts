// biome-ignore-all lint/suspicious/noTemplateCurlyInString: the strings are Dockerfile text, not templates
// Build cache keys and state records (src/builder/cache.ts): what makes a state miss, what
// doesn't.
import assert from "node:assert/strict";
import {
  chmodSync,
  linkSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  BuildCache,
  DigestMemo,
  fromState,
  hashSources,
  instructionText,
  ROOT_STATE,
  type StateRecord,
  scopeArgs,
  stateId,
} from "../../src/builder/cache.ts";
import { parseDockerfile } from "../../src/builder/dockerfile.ts";
import { BuildArgs, StageScope } from "../../src/builder/vars.ts";
import { BUILD_CACHE_DIR, forgetBuiltState, imageChanges } from "../../src/image/storage.ts";
import { cleanup, tmp } from "../helpers.ts";

let dir: string;
before(() => {
  dir = tmp("ch-cache-");
});
after(() => cleanup(dir));

/** State IDs of each instruction after FROM, chained from the root. */
function chain(text: string, buildArgs: string[] = [], host: Record<string, string> = {}): string[] {
  const df = parseDockerfile(text, "Dockerfile");
  const scope = new StageScope(new Map(), new BuildArgs(buildArgs, host));
  let parent = ROOT_STATE;
  return df.instructions.slice(1).map((inst) => {
    const e = scope.apply(inst);
    parent = stateId({ parent, instruction: instructionText(e), args: scopeArgs(scope), sources: null });
    return parent;
  });
}

describe("state IDs", () => {
  it("are stable, and chain: a change misses from there on, not before", () => {
    const a = chain("FROM x\nRUN a\nRUN b\nRUN c\n");
    assert.deepEqual(chain("FROM x\nRUN a\nRUN b\nRUN c\n"), a);
    const b = chain("FROM x\nRUN a\nRUN B\nRUN c\n");
    assert.equal(b[0], a[0]);
    assert.notEqual(b[1], a[1]);
    assert.notEqual(b[2], a[2]);
    assert.match(a[0], /^[0-9a-f]{64}$/);
  });
  it("depend on the instruction after substitution, not on how it was written", () => {
    const [, a] = chain("FROM x\nENV D=/a\nWORKDIR $D\n");
    const [, b] = chain("FROM x\nENV D=/a\nworkdir   ${D}\n");
    const [, c] = chain("FROM x\nENV D=/b\nWORKDIR $D\n");
    assert.equal(a, b);
    assert.notEqual(a, c);
  });
  it("RUN misses when an ARG it sees changes (--build-arg), not when a proxy variable does", () => {
    const text = "FROM x\nARG V=1\nARG HTTP_PROXY\nRUN echo $V\n";
    const base = chain(text);
    assert.notEqual(chain(text, ["V=2"])[2], base[2]);
    assert.deepEqual(chain(text, ["HTTP_PROXY=http://p:1"]), base);
    assert.deepEqual(chain(text, [], { HTTP_PROXY: "http://q:2" }), base);
  });
  it("heredoc contents, flags and exec form count", () => {
    const one = (t: string) => chain(`FROM x\n${t}\n`)[0];
    assert.notEqual(one("RUN <<E\na\nE"), one("RUN <<E\nb\nE"));
    assert.notEqual(one("COPY --chmod=600 a b"), one("COPY --chmod=644 a b"));
    assert.equal(one("COPY --chmod=600 --link a b"), one("COPY --link --chmod=600 a b"));
    assert.notEqual(one('CMD ["a b"]'), one("CMD a b"));
  });
  it("sources and parents count; FROM keys on the image digest", () => {
    const i = { parent: ROOT_STATE, instruction: "x", args: [] as [string, string | null][], sources: null };
    assert.notEqual(stateId(i), stateId({ ...i, sources: "0".repeat(64) }));
    assert.notEqual(stateId(i), stateId({ ...i, parent: fromState("sha256:1", "amd64") }));
    assert.notEqual(fromState("sha256:1", "amd64"), fromState("sha256:1", "arm64"));
    assert.equal(
      stateId({
        ...i,
        args: [
          ["A", "1"],
          ["B", null],
        ],
      }),
      stateId({
        ...i,
        args: [
          ["B", null],
          ["A", "1"],
        ],
      }),
    );
  });
});

describe("source digests", () => {
  let n = 0;
  /** A fresh tree: a/f (file), a/l (link), a/d/ (empty dir). */
  const tree = (): string => {
    const t = join(dir, `t${++n}`);
    mkdirSync(join(t, "a/d"), { recursive: true });
    writeFileSync(join(t, "a/f"), "content\n");
    symlinkSync("f", join(t, "a/l"));
    return join(t, "a");
  };
  /** The digest of source "a" (and more) of the tree that `a` is in. */
  const digest = (a: string, ...more: string[]) => hashSources(join(a, ".."), ["a", ...more]);
  it("same content, other times, owner-independent hard links: same digest", () => {
    const a = tree();
    const b = tree();
    utimesSync(join(b, "f"), 1, 1);
    assert.equal(digest(a), digest(b));
    const c = tree();
    writeFileSync(join(c, "g"), "x");
    const d = tree();
    linkSync(join(c, "g"), join(d, "g"));
    assert.equal(digest(c), digest(d));
  });
  it("content, permission bits, link target, names, empty dirs and order count", () => {
    const base = digest(tree());
    const changes: [string, (t: string) => void][] = [
      ["content", (t) => writeFileSync(join(t, "f"), "contenT\n")],
      ["mode", (t) => chmodSync(join(t, "f"), 0o600)],
      [
        "link target",
        (t) => {
          unlinkSync(join(t, "l"));
          symlinkSync("d", join(t, "l"));
        },
      ],
      ["name", (t) => renameSync(join(t, "f"), join(t, "g"))],
      ["new empty dir", (t) => mkdirSync(join(t, "e"))],
      ["same size, other content", (t) => writeFileSync(join(t, "f"), "CONTENT\n")],
    ];
    for (const [what, change] of changes) {
      const t = tree();
      change(t);
      assert.notEqual(digest(t), base, what);
    }
    const x = tree();
    assert.notEqual(digest(x, "a/f"), hashSources(join(x, ".."), ["a/f", "a"]));
    assert.notEqual(digest(x), hashSources(x, ["."]));
    assert.deepEqual(readdirSync(x).sort(), ["d", "f", "l"]);
  });
  it("a single file source", () => {
    const t = tree();
    assert.equal(hashSources(t, ["f"]).length, 64);
    assert.notEqual(hashSources(t, ["f"]), hashSources(t, ["l"]));
    // A missing source is part of the key (COPY then fails and says why), not an error here.
    assert.notEqual(hashSources(t, ["missing"]), hashSources(t, ["missing2"]));
    for (const s of ["..", "../a", "d/../../x", "/etc"]) assert.throws(() => hashSources(t, [s]), /source outside/, s);
  });
});

describe("build cache store", () => {
  it("round-trips a record; absent, corrupt, mismatched or layerless ones are misses; gc keeps what tags need", () => {
    const cache = new BuildCache(dir, join(dir, "cache"));
    const id = stateId({ parent: ROOT_STATE, instruction: "RUN x", args: [], sources: null });
    assert.equal(cache.get(id), null);
    const rec: StateRecord = {
      id,
      parent: null,
      text: "RUN x",
      config: { env: ["A=1"] },
      created: "2024-01-01T00:00:00Z",
      layer: true,
      flat: true,
      chain: [id],
      opaque: [],
      entries: 1,
      bytes: 1,
    };
    const up = join(cache.tmp("upper"), "layer");
    mkdirSync(up);
    writeFileSync(join(up, "f"), "x");
    cache.commit(rec, up);
    assert.deepEqual(cache.get(id), rec);
    assert.deepEqual(readdirSync(join(dir, "cache/states")), [`${id}.json`]); // nothing left aside
    writeFileSync(join(dir, "cache/states", `${ROOT_STATE}.json`), "{trunc");
    assert.equal(cache.get(ROOT_STATE), null);
    const other = "f".repeat(64);
    writeFileSync(join(dir, "cache/states", `${other}.json`), JSON.stringify({ ...rec }));
    assert.equal(cache.get(other), null);
    assert.throws(() => cache.get("../x"), /not a state ID/);
    // A record whose parent is not a state ID (corrupt, or written by hand): a miss, not a path.
    const odd = "e".repeat(64);
    writeFileSync(join(dir, "cache/states", `${odd}.json`), JSON.stringify({ ...rec, id: odd, parent: "../x", chain: [id] }));
    assert.equal(cache.get(odd), null);
    assert.deepEqual(cache.ancestry(odd), []);
    rmSync(join(dir, "cache/states", `${odd}.json`));
    // A child whose record is there but whose layer isn't (a kill between the two): a miss.
    const child = stateId({ parent: id, instruction: "RUN y", args: [], sources: null });
    cache.commit({ ...rec, id: child, parent: id, flat: false, chain: [child, id] }, null);
    assert.equal(cache.get(child), null);
    cache.commit({ ...rec, id: child, parent: id, layer: false, flat: false, chain: [id] }, null);
    assert.deepEqual(cache.ancestry(child), [child, id]);
    // gc: nothing tagged, everything goes; tagged, its ancestry stays.
    cache.setTag("t+latest", { state: child, dev: 0, ino: 0, time: "" });
    assert.deepEqual(cache.gc(), { states: 2, layers: 0 }); // the corrupt and the mismatched one
    assert.deepEqual(cache.tagDirs(), ["t+latest"]);
    assert.throws(() => cache.setTag("../x", null), /not an image directory name/);
    cache.setTag("t+latest", null);
    assert.deepEqual(cache.gc(), { states: 2, layers: 1 });
    assert.deepEqual(cache.states(), []);
  });
});

describe("build cache layer replaced (--rebuild)", () => {
  it("forgets the images above it before the old layer goes, and stores the new record", () => {
    const cache = new BuildCache(dir, join(dir, "rebuild"));
    const id = stateId({ parent: ROOT_STATE, instruction: "RUN a", args: [], sources: null });
    const child = stateId({ parent: id, instruction: "ENV b=1", args: [], sources: null });
    const other = stateId({ parent: ROOT_STATE, instruction: "RUN c", args: [], sources: null });
    const rec = (i: string, parent: string | null, chain: string[], n: number): StateRecord => ({
      id: i,
      parent,
      text: "RUN a",
      config: {},
      created: "2024-01-01T00:00:00Z",
      layer: chain[0] === i,
      flat: false,
      chain,
      opaque: [],
      entries: n,
      bytes: n,
    });
    const layer = (content: string) => {
      const up = join(cache.tmp("upper"), "layer");
      mkdirSync(up);
      writeFileSync(join(up, "f"), content);
      return up;
    };
    cache.commit(rec(id, null, [id], 1), layer("old"));
    cache.commit(rec(child, id, [id], 0), null);
    cache.commit(rec(other, null, [other], 1), layer("other"));
    cache.setTag("a+latest", { state: child, dev: 0, ino: 0, time: "" });
    cache.setTag("b+latest", { state: other, dev: 0, ino: 0, time: "" });
    cache.commit(rec(id, null, [id], 2), layer("new"));
    // An image made from the old layer is no longer said to hold it (a kill before the build's
    // end would otherwise leave the record trusted: an all-hit rebuild copies nothing, an update
    // in place undoes the new layer over the old content); others keep theirs.
    assert.equal(cache.tag("a+latest"), null);
    assert.equal(cache.tag("b+latest")?.state, other);
    assert.equal(cache.get(id)?.entries, 2);
    assert.equal(readFileSync(join(cache.layerPath(id), "f"), "utf8"), "new");
  });
});

describe("build cache store errors", () => {
  it("says which path of the cache it can't write: a layer's directory, a record's", () => {
    const cache = new BuildCache(dir, join(dir, "ro"));
    const id = stateId({ parent: ROOT_STATE, instruction: "RUN ro", args: [], sources: null });
    const rec: StateRecord = {
      id,
      parent: null,
      text: "RUN ro",
      config: {},
      created: "2024-01-01T00:00:00Z",
      layer: true,
      flat: true,
      chain: [id],
      opaque: [],
      entries: 1,
      bytes: 1,
    };
    const up = join(cache.tmp("upper"), "layer");
    mkdirSync(up);
    mkdirSync(join(dir, "ro", "layers"));
    mkdirSync(join(dir, "ro", "states"));
    chmodSync(join(dir, "ro", "layers"), 0o500);
    try {
      assert.throws(() => cache.commit(rec, up), /can't store build cache layer: .*\/ro\/layers\/[0-9a-f]{64}$/);
    } finally {
      chmodSync(join(dir, "ro", "layers"), 0o700);
    }
    chmodSync(join(dir, "ro", "states"), 0o500);
    try {
      assert.throws(() => cache.commit(rec, up), /can't write build cache: .*\/ro\/states\/[0-9a-f]{64}\.json$/);
    } finally {
      chmodSync(join(dir, "ro", "states"), 0o700);
    }
    // Neither left a record: the state is a miss, not a record of a layer that isn't there.
    assert.equal(cache.get(id), null);
  });
});

describe("forgetBuiltState()", () => {
  it("records an image's change without touching another image's record (DIR.PID is an image directory's name too)", () => {
    const st = join(dir, "forget-storage");
    const dirName = "foo+latest";
    mkdirSync(join(st, "img", dirName), { recursive: true });
    mkdirSync(join(st, "img", `${dirName}.${process.pid}`));
    const changed = join(st, BUILD_CACHE_DIR, "changed");
    mkdirSync(changed, { recursive: true });
    writeFileSync(join(changed, `${dirName}.${process.pid}`), "its own\n");
    forgetBuiltState(st, join(realpathSync(st), "img", dirName));
    assert.equal(readFileSync(join(changed, `${dirName}.${process.pid}`), "utf8"), "its own\n");
    assert.notEqual(imageChanges(join(st, BUILD_CACHE_DIR), dirName), "");
    assert.deepEqual(readdirSync(changed).sort(), [dirName, `${dirName}.${process.pid}`]);
  });
});

describe("digest memo", () => {
  it("reads a file again when anything about it changed, its change time included; keeps only settled files", async () => {
    const d = join(dir, "memo");
    mkdirSync(d);
    const f = join(d, "f");
    writeFileSync(f, "one\n");
    utimesSync(f, 1_700_000_000, 1_700_000_000);
    await new Promise((r) => setTimeout(r, 50)); // its change time in the past
    const file = join(d, "digests.json");
    const m = new DigestMemo(file, 0);
    const one = hashSources(d, ["f"], { memo: m });
    assert.equal(one, hashSources(d, ["f"]));
    m.save();
    assert.deepEqual(Object.keys(JSON.parse(readFileSync(file, "utf8"))), [f]);
    // Kept: a second memo answers from the file, without reading it (so a change it can't see,
    // here a forged entry, shows the memo was used).
    const forged = JSON.parse(readFileSync(file, "utf8"));
    forged[f][1] = "0".repeat(64);
    writeFileSync(file, JSON.stringify(forged));
    assert.notEqual(hashSources(d, ["f"], { memo: new DigestMemo(file, 0) }), one);
    // Same size, same mtime, other content: the change time differs, so it is read again.
    await new Promise((r) => setTimeout(r, 50));
    writeFileSync(f, "two\n");
    utimesSync(f, 1_700_000_000, 1_700_000_000);
    assert.equal(hashSources(d, ["f"], { memo: new DigestMemo(file, 0) }), hashSources(d, ["f"]));
    assert.notEqual(hashSources(d, ["f"]), one);
    // A file changed within the racy window is not kept.
    const fresh = new DigestMemo(join(d, "fresh.json"));
    hashSources(d, ["f"], { memo: fresh });
    fresh.save();
    assert.deepEqual(JSON.parse(readFileSync(join(d, "fresh.json"), "utf8")), {});
  });
});
