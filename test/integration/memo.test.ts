// Remembered launches (src/container/memo.ts) as an ordinary user: a second identical ch-run
// execs the container without planning, with the environment, PID, descriptors and syslog
// message of its own day; anything the plan depended on that changes is a miss.
import assert from "node:assert/strict";
import { type SpawnSyncOptionsWithStringEncoding, spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, beforeEach, describe, it } from "node:test";
import { busyboxImage, CH_RUN, cleanup, ERROR_LINE, ROOT, run, tmp } from "../helpers.ts";

let dir: string;
let img: string;
let own: string; // TMPDIR: ch-run's private directory (launcher, memos) is below it
let log: string;
const uid = process.getuid?.() ?? -1;

before(() => {
  assert.notEqual(uid, 0, "container tests must run as an ordinary user (npm test does this for root)");
  dir = tmp();
  img = busyboxImage(dir);
});
after(() => cleanup(dir));

beforeEach(() => {
  own = join(dir, `own-${process.hrtime.bigint()}`);
  mkdirSync(own, { mode: 0o700 });
  log = join(own, "memo.log");
});

/** A steady environment of our own (nothing of the test runner's that could change; no home
 * whose ~/.cache/charliecloud other tests' launches use as their private directory). */
function env(extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: "/usr/bin:/bin",
    HOME: join(own, "home"),
    USER: process.env.USER ?? "nobody",
    TMPDIR: own,
    CH_TEST_MEMO_LOG: log,
    ...extra,
  };
}

function chRun(args: string[], extra: Record<string, string> = {}) {
  return spawnSync(CH_RUN, args, { encoding: "utf8", env: env(extra), cwd: dir });
}

/** What each ch-run said of its remembered launch so far, a line each. */
function said(): string[] {
  try {
    return readFileSync(log, "utf8").trim().split("\n");
  } catch {
    return [];
  }
}

const privateDir = () => join(own, `.charliecloud-${uid}`);
const memos = () => readdirSync(privateDir()).filter((f) => /^ch-run-memo-[0-9a-f]{2}$/.test(f));

describe("remembered launches", () => {
  it("replays a launch: the environment of its day, its own PID, a memo private to the user", async () => {
    const script = 'echo "$X $$"; tail -1 /etc/passwd';
    const first = chRun([img, "--", "sh", "-c", script], { X: "one" });
    assert.equal(first.status, 0, first.stderr);
    assert.deepEqual(said(), ["miss: none", "recorded"]);
    const [memo] = memos();
    const st = statSync(join(privateDir(), memo));
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(st.uid, uid);
    // Replayed, with another value of a variable the plan never looked at (a rank's, say).
    const c = spawn(CH_RUN, [img, "--", "sh", "-c", script], { env: env({ X: "two" }), cwd: dir });
    let out = "";
    c.stdout.on("data", (b) => {
      out += b;
    });
    const status = await new Promise((res) => c.on("close", res));
    assert.equal(status, 0);
    assert.deepEqual(said().slice(2), ["hit"]);
    const [line, passwd] = out.trim().split("\n");
    assert.equal(line, `two ${c.pid}`, "the command's PID is ch-run's");
    assert.equal(passwd, first.stdout.trim().split("\n")[1]);
    // The launcher's own variables never reach the command.
    const e = chRun([img, "--", "env"]);
    assert.doesNotMatch(e.stdout, /CH_RUN_LAUNCH_/);
    assert.match(e.stdout, /^CH_RUNNING=Weird Al Yankovic$/m);
  });

  it("replays a launch whose command gets SIGTERM sent to ch-run's PID (a batch system's)", async () => {
    const script = 'trap "echo term; exit 7" TERM; echo ready; while :; do sleep 0.1; done';
    for (let i = 0; i < 2; i++) {
      const c = spawn(CH_RUN, [img, "--", "sh", "-c", script], { env: env(), cwd: dir });
      let out = "";
      const ready = new Promise<void>((res) =>
        c.stdout.on("data", (b) => {
          out += b;
          if (out.includes("ready\n")) res();
        }),
      );
      await ready;
      process.kill(c.pid as number, "SIGTERM");
      const status = await new Promise((res) => c.on("close", res));
      assert.equal(status, 7);
      assert.equal(out, "ready\nterm\n");
    }
    assert.deepEqual(said(), ["miss: none", "recorded", "hit"]);
  });

  it("plans again when a file the plan looked at changes", () => {
    const hosts = join(img, "etc/hosts");
    rmSync(hosts, { force: true });
    const args = [img, "--", "cat", "/etc/hosts"];
    const none = chRun(args);
    assert.notEqual(none.status, 0, "no /etc/hosts in the image: the host's is not bound");
    assert.deepEqual(said(), ["miss: none", "recorded"]);
    writeFileSync(hosts, "# the image's\n");
    try {
      const bound = chRun(args);
      assert.equal(bound.status, 0, bound.stderr);
      assert.equal(bound.stdout, readFileSync("/etc/hosts", "utf8"), "the host's /etc/hosts, bound now");
      assert.match(said()[2], /^miss: changed: [sl] .*\/etc(\/hosts)?$/);
      assert.equal(said()[3], "recorded");
      assert.equal(chRun(args).stdout, bound.stdout);
      assert.equal(said()[4], "hit");
    } finally {
      rmSync(hosts, { force: true });
    }
  });

  it("plans again when a variable the plan read changes", () => {
    const a = join(dir, "home-a");
    const b = join(dir, "home-b");
    mkdirSync(join(a, "only-in-a"), { recursive: true });
    mkdirSync(join(b, "only-in-b"), { recursive: true });
    const args = ["--home", img, "--", "sh", "-c", 'ls "/home/$USER"'];
    assert.equal(chRun(args, { HOME: a }).stdout, "only-in-a\n");
    assert.equal(chRun(args, { HOME: a }).stdout, "only-in-a\n");
    assert.equal(chRun(args, { HOME: b }).stdout, "only-in-b\n");
    assert.deepEqual(said(), ["miss: none", "recorded", "hit", "miss: changed: $HOME", "recorded"]);
    // Both kept, as variants of one launch (ranks whose variables differ).
    assert.equal(chRun(args, { HOME: a }).stdout, "only-in-a\n");
    assert.equal(chRun(args, { HOME: b }).stdout, "only-in-b\n");
    assert.deepEqual(said().slice(5), ["hit", "hit"]);
  });

  it("plans again when the launcher file changed, or the memo is not one to trust", () => {
    const args = [img, "--", "true"];
    assert.equal(chRun(args).status, 0);
    const launcher = readdirSync(privateDir()).find((f) => /^ch-run-exec-[^.]+$/.test(f)) as string;
    chmodSync(join(privateDir(), launcher), 0o700); // a new change time: not the file verified
    assert.equal(chRun(args).status, 0);
    assert.match(said()[2], /^miss: changed: .*ch-run-exec-/);
    assert.equal(chRun(args).status, 0);
    assert.equal(said()[4], "hit");
    const [memo] = memos();
    const file = join(privateDir(), memo);
    // Writable by others: never read.
    chmodSync(file, 0o622);
    assert.equal(chRun(args).status, 0);
    assert.equal(said()[5], "miss: none");
    // Damaged, or for another launch in the same slot: a miss, then recorded anew.
    writeFileSync(file, "{not json", { mode: 0o600 });
    chmodSync(file, 0o600);
    assert.equal(chRun(args).status, 0);
    assert.equal(said()[7], "miss: unreadable");
    const m = JSON.parse(readFileSync(file, "utf8"));
    m[0].key = "another";
    writeFileSync(file, JSON.stringify(m));
    assert.equal(chRun(args).status, 0);
    assert.equal(said()[9], "miss: another launch in the slot");
  });

  it("remembers nothing from a launch that printed (-v, a warning)", () => {
    for (const args of [
      ["-v", img, "--", "true"],
      ["--mount=/x", img, "--", "true"],
    ]) {
      for (let i = 0; i < 2; i++) assert.equal(chRun(args).status, 0);
    }
    assert.deepEqual(said(), Array(4).fill(["miss: none", "not recorded: output"]).flat());
  });

  it("remembers nothing whose plan holds the PID (--seccomp's warning), unless -qq drops it", () => {
    for (let i = 0; i < 2; i++) assert.equal(chRun(["--seccomp", img, "--", "true"]).status, 0);
    assert.deepEqual(said(), Array(2).fill(["miss: none", "not recorded: the plan holds this process's PID"]).flat());
    for (let i = 0; i < 2; i++) assert.equal(chRun(["-qq", "--seccomp", img, "--", "true"]).status, 0);
    assert.deepEqual(said().slice(4), ["miss: none", "recorded", "hit"]);
  });

  it("prints a failed setup step with its own PID, then exits 31", () => {
    const args = ["-b", `${dir}:/etc/hosts`, img, "--", "true"];
    writeFileSync(join(img, "etc/hosts"), "");
    try {
      for (const r of [chRun(args), chRun(args)]) {
        assert.equal(r.status, 31);
        assert.match(r.stderr, ERROR_LINE);
        assert.match(r.stderr, /can't bind .* Not a directory \(execute\.ts:\d+ 20\)/);
        assert.ok(r.stderr.startsWith(`ch-run[${r.pid}]: error: `), r.stderr);
      }
      assert.deepEqual(said(), ["miss: none", "recorded", "hit"]);
    } finally {
      rmSync(join(img, "etc/hosts"), { force: true });
    }
  });

  it("keeps inherited descriptors, and none of Node's, when replaying", () => {
    const opts: SpawnSyncOptionsWithStringEncoding = {
      env: env(),
      cwd: dir,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe", "ignore", "pipe"],
    };
    // What a plain process started the same way gets (3 is ls's own handle on the directory).
    const want = spawnSync("ls", ["/proc/self/fd"], opts).stdout;
    assert.match(want, /^4$/m);
    const a = spawnSync(CH_RUN, [img, "--", "ls", "/proc/self/fd"], opts);
    const b = spawnSync(CH_RUN, [img, "--", "ls", "/proc/self/fd"], opts);
    assert.deepEqual(said(), ["miss: none", "recorded", "hit"]);
    for (const r of [a, b]) assert.equal(r.stdout, want, r.stderr);
  });

  it("sends each replayed launch's own syslog message", async () => {
    const syslogd = join(dir, "syslogd");
    const cc = run("gcc", ["-O2", "-o", syslogd, join(ROOT, "test/fixtures/syslogd.c")]);
    assert.equal(cc.status, 0, cc.stderr);
    const sock = join(dir, "log");
    const d = spawn(syslogd, [sock, "2"], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    d.stdout.on("data", (b) => {
      out += b;
    });
    const done = new Promise((res) => d.on("close", res));
    for (let i = 0; i < 500 && !out.startsWith("ready\n"); i++) await new Promise((r) => setTimeout(r, 10));
    for (let i = 0; i < 2; i++) chRun([img, "--", "echo", "a b"], { CH_TEST_SYSLOG_SOCKET: sock });
    await done;
    assert.deepEqual(said(), ["miss: none", "recorded", "hit"]);
    const lines = out.split("\n").slice(1, -1);
    assert.equal(lines.length, 2);
    for (const l of lines)
      assert.match(
        l,
        new RegExp(`^<14>[A-Z][a-z]{2} [ 1-3][0-9] [0-9:]{8} ch-run: uid=${uid} args=5: \\S+ ${img} -- echo "a b"$`),
      );
  });
});
