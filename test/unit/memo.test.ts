// Remembered launches without a container: keys and slots, what a fact holds and when it no
// longer does, which memo files are read, and what the recorder notes or refuses.
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { buildEnv } from "../../src/container/env.ts";
import {
  type Fact,
  MEMO_VERSION,
  type Memo,
  memoKey,
  observe,
  parseSlot,
  readOwn,
  slotName,
  staleEnv,
  staleFact,
  VARIANTS,
  withMemo,
} from "../../src/container/memo.ts";
import { Recorder, racy } from "../../src/container/memo-record.ts";

// The recorder watches node:fs's module object, which CommonJS code (the executable's bundle)
// calls through; an ES module's named imports of a built-in don't see it.
const fs = createRequire(import.meta.url)("node:fs") as typeof import("node:fs");
let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "ch-memo-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe("memo keys", () => {
  it("keys on build, architecture, command line, directory, IDs and groups; 256 slots", () => {
    const k = memoKey("b1", "ch-run", ["img", "--", "true"], "/home/u", { uid: 1, gid: 2 }, [2]);
    const others = [
      memoKey("b2", "ch-run", ["img", "--", "true"], "/home/u", { uid: 1, gid: 2 }, [2]),
      memoKey("b1", "./ch-run", ["img", "--", "true"], "/home/u", { uid: 1, gid: 2 }, [2]),
      memoKey("b1", "ch-run", ["img", "--", "false"], "/home/u", { uid: 1, gid: 2 }, [2]),
      memoKey("b1", "ch-run", ["img", "--", "true"], "/tmp", { uid: 1, gid: 2 }, [2]),
      memoKey("b1", "ch-run", ["img", "--", "true"], "/home/u", { uid: 3, gid: 2 }),
      memoKey("b1", "ch-run", ["img --", "true"], "/home/u", { uid: 1, gid: 2 }, [2]),
      memoKey("b1", "ch-run", ["img", "--", "true"], "/home/u", { uid: 1, gid: 2 }, [1, 2, 3]),
      memoKey(
        "b1",
        "ch-run",
        ["img", "--", "true"],
        "/home/u",
        { uid: 1, gid: 2 },
        [2],
        process.arch === "arm64" ? "x64" : "arm64",
      ),
    ];
    for (const o of others) assert.notEqual(o, k);
    assert.match(slotName(k), /^ch-run-memo-[0-9a-f]{2}$/);
    assert.equal(slotName(k), slotName(k));
    const slots = new Set(Array.from({ length: 2000 }, (_, i) => slotName(`key ${i}`)));
    assert.equal(slots.size, 256);
  });
});

describe("facts", () => {
  it("no longer holds when a file changes, appears, goes, or a link or real path moves", () => {
    const f = join(dir, "f");
    writeFileSync(f, "abc");
    const facts: Fact[] = [
      ["s", f, observe("s", f)],
      ["s", join(dir, "absent"), observe("s", join(dir, "absent"))],
    ];
    assert.equal(facts[1][2], "-");
    assert.equal(staleFact(facts), null);
    writeFileSync(f, "xyz"); // same size
    utimesSync(f, 1, 1);
    assert.equal(staleFact(facts), `s ${f}`);
    facts[0][2] = observe("s", f);
    writeFileSync(join(dir, "absent"), "");
    assert.equal(staleFact(facts), `s ${join(dir, "absent")}`);
    rmSync(join(dir, "absent"));
    assert.equal(staleFact(facts), null);
    const l = join(dir, "l");
    symlinkSync("f", l);
    const linked: Fact[] = [
      ["l", l, observe("l", l)],
      ["r", l, observe("r", l)],
    ];
    assert.equal(linked[1][2], f);
    rmSync(l);
    symlinkSync("absent", l);
    assert.equal(staleFact(linked), `l ${l}`);
    assert.equal(observe("r", l), "EENOENT");
    // A directory looked at holds while entries come and go; one listed doesn't.
    const d = join(dir, "listed");
    fs.mkdirSync(d);
    const dirs: Fact[] = [
      ["s", d, observe("s", d)],
      ["c", d, observe("c", d)],
    ];
    writeFileSync(join(d, "new"), "");
    assert.equal(staleFact(dirs.slice(0, 1)), null);
    assert.equal(staleFact(dirs), `c ${d}`);
    chmodSync(d, 0o700);
    assert.equal(staleFact(dirs.slice(0, 1)), `s ${d}`);
    const t: Fact = ["t", f, observe("t", f)];
    assert.equal(t[2], "xyz");
    assert.equal(staleFact([["k", "", observe("k", "")]]), null);
  });

  it("compares variables, unset ones included", () => {
    assert.equal(
      staleEnv(
        [
          ["A", "1"],
          ["B", null],
        ],
        { A: "1" },
      ),
      null,
    );
    assert.equal(staleEnv([["A", "1"]], { A: "2" }), "$A");
    assert.equal(staleEnv([["B", null]], { B: "" }), "$B");
  });
});

describe("memo files", () => {
  it("keep a few variants of one launch, newest first, and drop another launch's", () => {
    const memo = (key: string, home: string): Memo => ({
      v: MEMO_VERSION,
      key,
      env: [["HOME", home]],
      facts: [],
      recipe: { home: "/", ops: [], expand: true, pmixHash: false, files: [] },
      path: null,
      launcher: { file: "/l", ident: "x" },
      helper: null,
      args: [],
      payload: {},
      syslog: false,
    });
    let slot = withMemo([memo("other", "/a")], memo("k", "/a"));
    assert.deepEqual(
      slot.map((m) => [m.key, m.env[0][1]]),
      [["k", "/a"]],
    );
    slot = withMemo(slot, memo("k", "/b"));
    slot = withMemo(slot, memo("k", "/a")); // the same variables again: in place of the older
    assert.deepEqual(
      slot.map((m) => m.env[0][1]),
      ["/a", "/b"],
    );
    for (let i = 0; i < 10; i++) slot = withMemo(slot, memo("k", `/h${i}`));
    assert.equal(slot.length, VARIANTS);
    assert.equal(slot[0].env[0][1], "/h9");
    assert.deepEqual(parseSlot(JSON.stringify(slot)), slot);
    assert.equal(parseSlot("{}"), null);
    assert.equal(parseSlot("{not json"), null);
  });

  it("reads only a regular file of ours that others can't write, not through a symlink", () => {
    const euid = process.geteuid?.() ?? 0;
    const m = join(dir, "memo");
    writeFileSync(m, "{}", { mode: 0o600 });
    assert.equal(readOwn(m, euid), "{}");
    assert.throws(() => readOwn(m, euid + 1), /not a private file of ours/);
    chmodSync(m, 0o620);
    assert.throws(() => readOwn(m, euid), /not a private file of ours/);
    chmodSync(m, 0o600);
    symlinkSync("memo", join(dir, "memo-link"));
    assert.throws(() => readOwn(join(dir, "memo-link"), euid), { code: "ELOOP" });
    assert.throws(() => readOwn(join(dir, "none"), euid), { code: "ENOENT" });
  });
});

describe("recorder", () => {
  /** Runs f while recording; the recorder, stopped. */
  function recording(f: () => void): Recorder {
    const r = new Recorder({ key: "k", slot: "ch-run-memo-00" }, dir).start();
    try {
      f();
    } finally {
      r.stop();
    }
    return r;
  }

  it("notes the paths looked at and the variables read, not the environment copied whole", () => {
    const f = join(dir, "seen");
    writeFileSync(f, "x");
    process.env.CH_TEST_MEMO_A = "a";
    const r = recording(() => {
      fs.statSync(f);
      fs.existsSync(join(dir, "nothing"));
      fs.lstatSync("relative", { throwIfNoEntry: false });
      fs.readFileSync(f);
      fs.realpathSync(dir);
      fs.readFileSync("/proc/self/mountinfo");
      assert.equal(process.env.CH_TEST_MEMO_A, "a");
      assert.equal("CH_TEST_MEMO_B" in process.env, false);
      const env = buildEnv({ host: process.env, home: "/", ops: [], expand: true, readImageFile: () => null });
      assert.equal(env.env.get("CH_TEST_MEMO_A"), "a");
    });
    delete process.env.CH_TEST_MEMO_A;
    assert.equal(r.spoiled, null);
    const facts = r.facts().map(([k, p]) => `${k} ${p}`);
    assert.deepEqual(facts.sort(), [
      `c ${f}`,
      `l ${join(dir, "relative")}`,
      `r ${dir}`,
      `s ${join(dir, "nothing")}`,
      `s ${f}`,
      "t /proc/self/mountinfo",
    ]);
    const vars = new Map((r as unknown as { vars: Map<string, string | null> }).vars);
    assert.deepEqual([...vars.keys()].sort(), ["CH_TEST_MEMO_A", "CH_TEST_MEMO_B"]);
    assert.equal(vars.get("CH_TEST_MEMO_B"), null);
    assert.ok(!vars.has("PATH"), "the whole copy made by buildEnv() is no dependency");
  });

  it("takes a stamp in whole seconds from this second or the last two for one a change could leave as it is", () => {
    const at = (m: bigint, c: bigint) => `12:33188:1:1000:1000:5:0:${m}:${c}`;
    const s = 1_000_000_000n;
    const since = 100n * s;
    assert.equal(racy(at(101n * s, 101n * s), since), true, "whole seconds, now");
    assert.equal(racy(at(90n * s, 100n * s), since), true, "changed (ctime) now");
    assert.equal(racy(at(90n * s, 99n * s), since), false, "whole seconds, before");
    assert.equal(racy(at(101n * s + 5n, 101n * s + 7n), since), false, "nanoseconds: a change shows");
    assert.equal(racy("d:12:16877:1000:1000", since), false);
    assert.equal(racy("-", since), false);
    assert.equal(racy("EENOENT", since), false);
  });

  it("checks a relative path with .. after a symlink as the kernel resolves it, not lexically", () => {
    for (const d of ["sub/inner", "other/inner"]) fs.mkdirSync(join(dir, d), { recursive: true });
    writeFileSync(join(dir, "sub/x"), "1");
    writeFileSync(join(dir, "other/x"), "2");
    symlinkSync("sub/inner", join(dir, "link"));
    const was = process.cwd();
    process.chdir(dir); // the recorder's working directory
    let r: Recorder;
    try {
      r = recording(() => {
        assert.equal(fs.readFileSync("link/../x", "utf8"), "1");
      });
    } finally {
      process.chdir(was);
    }
    assert.equal(r.spoiled, null);
    assert.equal(staleFact(r.facts()), null);
    rmSync(join(dir, "link"));
    symlinkSync("other/inner", join(dir, "link"));
    assert.ok(staleFact(r.facts()), "the file read is another one now");
  });

  it("is spoiled by a write, a change or listing of the environment, another /proc file", () => {
    const cases: [() => void, RegExp][] = [
      [() => fs.writeFileSync(join(dir, "w"), ""), /writes \(writeFileSync\)/],
      [() => fs.mkdirSync(join(dir, "d")), /writes \(mkdirSync\)/],
      [
        () => {
          process.env.CH_TEST_MEMO_C = "c";
        },
        /sets \$CH_TEST_MEMO_C/,
      ],
      [
        () => {
          delete process.env.CH_TEST_MEMO_C;
        },
        /unsets \$CH_TEST_MEMO_C/,
      ],
      [() => Object.keys(process.env), /lists the environment/],
      [() => fs.readFileSync("/proc/self/status"), /reads \/proc\/self\/status/],
      [() => fs.readFileSync("/dev/null"), /reads \/dev\/null, not a regular file/],
      [() => fs.openSync(join(dir, "o"), "w"), /opens .* to write/],
    ];
    for (const [f, why] of cases) assert.match(recording(f).spoiled ?? "", why);
  });

  it("puts node:fs and the environment back when stopped", () => {
    const stat = fs.statSync;
    const env = process.env;
    const r = new Recorder({ key: "k", slot: "s" }, dir).start();
    assert.notEqual(fs.statSync, stat);
    assert.notEqual(process.env, env);
    r.stop();
    r.stop();
    assert.equal(fs.statSync, stat);
    assert.equal(process.env, env);
  });
});
