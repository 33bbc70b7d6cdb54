// ch-run's command line, syslog line and warnings buffer, without running anything.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { argpUsage } from "../../src/cli/argp.ts";
import { checkTmpfsSize, parseIntArg, parseRunArgs, SPECS } from "../../src/container/options.ts";
import { argToString, argvToString, syslogMessage, syslogSocket } from "../../src/container/syslog.ts";
import type { ChError } from "../../src/sys/errors.ts";

const run = (argv: string[]) => {
  const p = parseRunArgs(argv);
  assert.equal(p.kind, "run", JSON.stringify(p));
  return (p as Extract<typeof p, { kind: "run" }>).args;
};

describe("ch-run options", () => {
  it("makes --home imply --write-fake at the default size, unless a size is given", () => {
    assert.equal(run(["--home", "img", "true"]).opts.writeFake, "12%");
    assert.equal(run(["--home", "-W4m", "img", "true"]).opts.writeFake, "4m");
    assert.equal(run(["-W4m", "--home", "img", "true"]).opts.writeFake, "4m");
    assert.equal(run(["-W4m", "-W", "img", "true"]).opts.writeFake, "4m", "a bare -W keeps the size");
    assert.equal(run(["-W", "-W2g", "img", "true"]).opts.writeFake, "2g");
    assert.equal(run(["img", "true"]).opts.writeFake, null);
    // -w and -W together, as Charliecloud allows (--home -w must work).
    const both = run(["-w", "--home", "img", "true"]).opts;
    assert.ok(both.write && both.writeFake === "12%");
  });

  it("acts on --help, --usage, --version, --feature, --warnings and --test where they come", () => {
    assert.deepEqual(parseRunArgs(["--help", "--bogus"]), { kind: "help" });
    assert.deepEqual(parseRunArgs(["-?"]), { kind: "help" });
    assert.deepEqual(parseRunArgs(["--usage"]), { kind: "usage" });
    assert.deepEqual(parseRunArgs(["-V", "-b"]), { kind: "version" });
    assert.deepEqual(parseRunArgs(["--feature=squash", "img"]), { kind: "feature", name: "squash" });
    assert.deepEqual(parseRunArgs(["-qq", "--warnings=3"]), { kind: "warnings", count: 3, verbosity: -2 });
    assert.deepEqual(parseRunArgs(["-vv", "--test", "log-fail", "-q"]), { kind: "test", test: "log-fail", verbosity: 2 });
    assert.throws(() => parseRunArgs(["--test=x"]), /invalid --test argument: x; see source code/);
    assert.throws(() => parseRunArgs(["--warnings=many"]), /--warnings: no digits found: many/);
    // getopt's own refusals are told apart (ch-run prints them as argp does, exit 64).
    assert.deepEqual(parseRunArgs(["img", "-b"]), { kind: "getopt-error", message: "option requires an argument -- 'b'" });
    assert.deepEqual(parseRunArgs(["--bogus=1"]), { kind: "getopt-error", message: "unrecognized option '--bogus=1'" });
    assert.deepEqual(parseRunArgs([]), { kind: "missing" });
    // IMAGE alone: an empty command, for the image's ENTRYPOINT and CMD (ch-run decides).
    const alone = parseRunArgs(["-v", "img"]);
    assert.equal(alone.kind, "run");
    if (alone.kind === "run") assert.deepEqual([alone.args.image, alone.args.opts.argv], ["img", []]);
  });

  it("reads integers as Charliecloud's parse_int() does", () => {
    assert.equal(parseIntArg("42", false, "--uid"), 42);
    assert.equal(parseIntArg(" +7", false, "--uid"), 7);
    assert.equal(parseIntArg("12abc", true, "X"), 12);
    assert.throws(() => parseIntArg("", false, "--uid"), /^Error: --uid: no digits found: $/);
    assert.throws(() => parseIntArg("12abc", false, "--uid"), /--uid: extra characters after digits: 12abc/);
    assert.throws(() => parseIntArg("2147483648", false, "--uid"), /--uid: out of range: 2147483648/);
    assert.equal(run(["--uid=0", "--gid", "5", "img", "true"]).opts.uid, 0);
    assert.throws(() => run(["--gid=-5", "img", "true"]), /--gid: must be non-negative: -5/);
  });

  it("checks quiet and verbose as they come", () => {
    assert.equal(run(["-qqq", "img", "true"]).opts.verbosity, -3);
    assert.equal(run(["-vv", "img", "true"]).opts.verbosity, 2);
    assert.throws(() => run(["-v", "-q", "img", "true"]), /--quiet incompatible with --verbose/);
    assert.throws(() => run(["-qqqq", "img", "true"]), /--quiet can be specified at most thrice/);
  });

  it("warns of a storage directory that is not there", () => {
    const a = parseRunArgs(["-s", "/nope", "img", "true"], (p) => p !== "/nope");
    assert.deepEqual(a.kind === "run" && a.args.warnings, ["storage directory not found: /nope"]);
  });

  it("accepts tmpfs sizes as the kernel reads them, and nothing else", () => {
    for (const ok of ["4m", "4M", "50%", "1g", "2T", "1p", "1E", "4096", "0x1000", "010", "1k%", "200%"])
      assert.equal(checkTmpfsSize(ok), ok);
    for (const [bad, why] of [
      ["abc", "want e.g."],
      ["", "want e.g."],
      ["4mb", "want e.g."],
      ["-1", "want e.g."],
      ["4m,nr_inodes=1", "want e.g."],
      ["08", "want e.g."],
      ["1.5g", "want e.g."],
      ["0", "0 would be no limit at all"],
      ["00", "0 would be no limit at all"],
      ["0k", "0 would be no limit at all"],
      ["0%", "0 would be no limit at all"],
      ["0x00", "0 would be no limit at all"],
    ])
      assert.throws(
        () => checkTmpfsSize(bad),
        (e: ChError) =>
          e.errno === 22 &&
          e.message ===
            `invalid --write-fake size: ${bad} (${why}${why === "want e.g." ? " 4G, 512m or 50% of memory" : ""}), so cannot mount tmpfs for overlay`,
        bad,
      );
  });

  it("lays out --usage as argp does", () => {
    const u = argpUsage("ch-run", "IMAGE -- COMMAND [ARG...]", SPECS);
    assert.match(
      u,
      /^Usage: ch-run \[-jqtvVw\?\] \[-b SRC\[:DST\]\] \[-c DIR\] \[-g GID\] \[-m DIR\] \[-s DIR\]\n {12}\[-u UID\] \[-W\[SIZE\]\] /,
    );
    for (const line of u.trimEnd().split("\n")) assert.ok(line.length <= 79, line);
  });
});

describe("syslog line", () => {
  it("serializes arguments as Charliecloud's man page shows", () => {
    assert.equal(
      argvToString(["ch-run", "-v", "/var/tmp/00_tiny", "--", "echo", "hello", "wor l}$d"]),
      'ch-run -v /var/tmp/00_tiny -- echo hello "wor l}\\$d"',
    );
    assert.equal(argToString("plain-arg_1.0/x:y,z@+"), "plain-arg_1.0/x:y,z@+");
    assert.equal(argToString(""), "");
    assert.equal(argToString("a=b"), '"a=b"');
    assert.equal(argToString('!"$\\`'), '"\\!\\"\\$\\\\\\`"');
    assert.equal(argToString("tab\there"), '"tab\there"');
    assert.equal(argToString("é"), '"é"');
  });

  it("is what syslog(3) sends: <14>, the local time, the tag, uid and argument count", () => {
    const at = new Date(2024, 11, 3, 8, 5, 9);
    assert.equal(
      syslogMessage("ch-run", 1000, ["ch-run", "img", "--", "true"], at),
      "<14>Dec  3 08:05:09 ch-run: uid=1000 args=4: ch-run img -- true",
    );
    assert.equal(syslogSocket({}), "/dev/log");
    assert.equal(syslogSocket({ CH_TEST_SYSLOG_SOCKET: "/t/log" }), "/t/log");
  });
});
