// ch-run side by side with Charliecloud's: what its users' scripts, sites' validation runs and
// its man page rely on. As an ordinary user, with a busybox image made offline.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { accessSync, constants, existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, CH_RUN, chRun, cleanup, ERROR_LINE, ROOT, run, tmp } from "../helpers.ts";

let dir: string;
let img: string;
const uid = process.getuid?.() ?? -1;
const user = process.env.USER ?? "";

before(() => {
  assert.notEqual(uid, 0, "container tests must run as an ordinary user");
  dir = tmp();
  img = busyboxImage(dir);
  for (const a of ["df", "rmdir"]) symlinkSync("busybox", join(img, "bin", a));
});
after(() => cleanup(dir));

/** The environment of a test run, without the host's TMPDIR unless given. */
function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const e = { ...process.env, ...extra };
  if (!("TMPDIR" in extra)) delete e.TMPDIR;
  return e;
}

describe("no new privileges", () => {
  it("sets PR_SET_NO_NEW_PRIVS before the command starts", () => {
    const r = chRun([img, "--", "grep", "NoNewPrivs", "/proc/self/status"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^NoNewPrivs:\s+1$/m);
    // And for the command's children, and with --uid 0 too.
    const root = chRun(["--uid=0", img, "--", "sh", "-c", "grep NoNewPrivs /proc/$$/status"]);
    assert.match(root.stdout, /^NoNewPrivs:\s+1$/m);
  });
});

describe("/tmp is the host's $TMPDIR", () => {
  it("binds $TMPDIR at /tmp when set (Slurm's per-job directory), else the host's /tmp", () => {
    const job = join(dir, "job-tmp");
    mkdirSync(job);
    writeFileSync(join(job, "file-in-tmpdir"), "");
    // Charliecloud's own test: only the file of $TMPDIR, and $TMPDIR itself unset inside.
    // ch-run's private files (launcher, koffi's module) go to $XDG_RUNTIME_DIR when a login set
    // it, else into $TMPDIR: give it one, as a login session would.
    const runtime = join(dir, "runtime");
    mkdirSync(runtime, { mode: 0o700 });
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the shell's
    const r = chRun([img, "--", "sh", "-c", 'ls -1 /tmp; echo "TMPDIR=${TMPDIR-unset}"; touch /tmp/made-inside'], {
      env: env({ TMPDIR: job, XDG_RUNTIME_DIR: runtime }),
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "file-in-tmpdir\nTMPDIR=unset\n");
    assert.ok(existsSync(join(job, "made-inside")), "written through to $TMPDIR");
    // Unset: the host's /tmp, where this test's directory lives.
    const host = chRun([img, "--", "ls", "-d", dir], { env: env() });
    assert.equal(host.stdout, `${dir}\n`);
  });

  it("fails as Charliecloud does when $TMPDIR is not there", () => {
    const r = chRun([img, "--", "true"], { env: env({ TMPDIR: join(dir, "no-such-tmp") }) });
    assert.equal(r.status, 31);
    assert.match(r.stderr, ERROR_LINE);
    assert.match(r.stderr, new RegExp(`error: can't bind: source not found: ${dir}/no-such-tmp: No such file or directory`));
    // -t needs no host directory.
    assert.equal(chRun(["-t", img, "--", "true"], { env: env({ TMPDIR: join(dir, "no-such-tmp") }) }).status, 0);
  });
});

describe("--home", () => {
  it("keeps the image's /home visible beside $HOME at /home/$USER (it implies --write-fake)", () => {
    mkdirSync(join(img, "home/imageuser"), { recursive: true });
    writeFileSync(join(img, "home/imageuser/dotfile"), "from the image\n");
    const script = 'echo "$HOME"; cat /home/imageuser/dotfile; ls /home | sort; test -d "$HOME" && echo mounted; touch /written';
    const r = chRun(["--home", img, "--", "sh", "-c", script]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `/home/${user}\nfrom the image\n${["imageuser", user].sort().join("\n")}\nmounted\n`);
    // $HOME is the host's: a file there is seen inside.
    const home = process.env.HOME ?? "";
    const seen = chRun(["--home", img, "--", "ls", "-d", `/home/${user}/.`]);
    assert.equal(seen.status, 0, seen.stderr);
    assert.ok(home !== "" && existsSync(home));
    // The overlay took the writes: the image is untouched.
    assert.ok(!existsSync(join(img, "written")));
    assert.ok(!existsSync(join(img, "home", user)));
    // With -w as well (Charliecloud allows both): still the overlay.
    assert.equal(chRun(["-w", "--home", img, "--", "true"]).status, 0);
    assert.ok(!existsSync(join(img, "home", user)));
  });

  it("works with an image that has no /home at all", () => {
    const bare = busyboxImage(dir, "no-home");
    rmSync(join(bare, "home"), { recursive: true });
    const r = chRun(["--home", bare, "--", "sh", "-c", "cd && pwd"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `/home/${user}\n`);
    assert.ok(!existsSync(join(bare, "home")));
  });
});

describe("--unset-env with extended globs", () => {
  it("runs the man page's examples, and --feature extglob says yes", () => {
    assert.equal(chRun(["--feature", "extglob"]).status, 0);
    const e = env({
      FOO: "bar",
      SLURM_JOB_ID: "7",
      SLURM_NTASKS: "2",
      WANTED_1: "yes",
      ALSO_WANTED_2: "yes",
      NOT_WANTED_1: "no",
    });
    const vars = (args: string[]) =>
      chRun([...args, img, "--", "env"], { env: e })
        .stdout.trim()
        .split("\n")
        .filter(Boolean)
        .sort();
    // Example 1: one variable.
    assert.ok(!vars(["--unset-env=FOO"]).some((v) => v.startsWith("FOO=")));
    // Example 2: SLURM*.
    assert.ok(!vars(["--unset-env=SLURM*"]).some((v) => v.startsWith("SLURM")));
    // Example 3: everything.
    assert.deepEqual(vars(["--unset-env=*"]), ["CH_RUNNING=Weird Al Yankovic"]);
    // Example 4: all but WANTED_ and ALSO_WANTED_.
    assert.deepEqual(vars(["--unset-env=!(WANTED_*|ALSO_WANTED_*)"]), [
      "ALSO_WANTED_2=yes",
      "CH_RUNNING=Weird Al Yankovic",
      "WANTED_1=yes",
    ]);
    // Charliecloud's test: @(...) to select.
    const sel = vars(["--unset-env=SLURM_@(JOB_ID|NTASKS)"]);
    assert.ok(!sel.some((v) => /^SLURM_(JOB_ID|NTASKS)=/.test(v)) && sel.includes("FOO=bar"), sel.join("\n"));
  });

  it("runs the man page's --set-env examples", () => {
    const file = join(dir, "env.txt");
    writeFileSync(file, "FOO=bar\nBAZ='qux'\n");
    const e = env({ PATH: "/usr/bin:/bin" });
    const out = (args: string[], v: string) => {
      const lines = chRun([...args, img, "--", "env"], { env: e }).stdout.split("\n");
      const line = lines.find((l) => l.startsWith(`${v}=`));
      return line === undefined ? undefined : `${line.slice(v.length + 1)}\n`;
    };
    assert.equal(out(["--set-env=FOO=bar"], "FOO"), "bar\n");
    assert.equal(out(["--set-env='BAZ=qux'"], "'BAZ"), "qux'\n"); // no shell here to strip the quotes
    assert.equal(out(["--set-env=BAZ='qux'"], "BAZ"), "qux\n");
    assert.equal(out([`--set-env=${file}`], "BAZ"), "qux\n");
    assert.equal(out(["--set-env=HOSTPATH=$PATH"], "HOSTPATH"), "/usr/bin:/bin\n");
    assert.equal(out(["--set-env=PATH=/opt/bin:$PATH"], "PATH"), "/opt/bin:/usr/bin:/bin\n");
    assert.equal(out(["--set-env", "--set-env=PATH=/opt/bin:$PATH"], "PATH"), "/opt/bin:/usr/bin:/bin\n");
    assert.equal(out(["--set-env=IMAGE_PATH=/x:$IMAGE_PATH", "--set-env"], "IMAGE_PATH"), "/opt:/usr/bin:/bin\n");
  });
});

describe("syslog", () => {
  let syslogd: string;
  before(() => {
    syslogd = join(dir, "syslogd");
    const cc = run("gcc", ["-O2", "-o", syslogd, join(ROOT, "test/fixtures/syslogd.c")]);
    assert.equal(cc.status, 0, cc.stderr);
  });

  /** Starts the test's syslog socket, runs ch-run with it, returns the datagrams received. */
  async function logged(args: string[], count = 1): Promise<string[]> {
    const sock = join(dir, `log-${process.hrtime.bigint()}`);
    const d = spawn(syslogd, [sock, String(count)], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    d.stdout.on("data", (b) => {
      out += b;
    });
    const done = new Promise((res) => d.on("close", res));
    for (let i = 0; i < 500 && !out.startsWith("ready\n"); i++) await new Promise((r) => setTimeout(r, 10));
    for (let i = 0; i < count; i++) chRun(args, { env: env({ CH_TEST_SYSLOG_SOCKET: sock }) });
    await done;
    return out.split("\n").slice(1, -1);
  }

  it("logs the command line as Charliecloud does, even a wrong one", async () => {
    // Charliecloud's own test: echo foo 'b a}$r' is logged as  echo foo "b a}\$r".
    const [line] = await logged([img, "--", "echo", "foo", "b a}$r"]);
    const stamp = "[A-Z][a-z]{2} [ 1-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-6][0-9]";
    const want = `uid=${uid} args=6: ${CH_RUN} ${img} -- echo foo "b a}\\$r"`;
    assert.match(line, new RegExp(`^<14>${stamp} ch-run: `));
    assert.equal(line.slice(line.indexOf(": ") + 2), want);
    // Before parsing: a bad option is logged too; quoting of shell metacharacters and quotes.
    const [bad] = await logged(["--bogus", "x=1", "it's", 'say "hi"', "a\\b", "`id`", "ü"]);
    assert.match(bad, /ch-run: uid=\d+ args=8: \S+ --bogus "x=1" "it's" "say \\"hi\\"" "a\\\\b" "\\`id\\`" "ü"$/);
  });

  it("logs nothing where no one listens (and runs all the same)", () => {
    const r = chRun([img, "--", "true"], { env: env({ CH_TEST_SYSLOG_SOCKET: join(dir, "nobody-here") }) });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, "");
  });
});

describe("argp behaviour: help, usage, version, usage errors", () => {
  it("answers -?, --help and --usage on stdout, -V and --version on stderr (the version alone)", () => {
    for (const h of ["-?", "--help"]) {
      const r = chRun([h]);
      assert.equal(r.status, 0);
      assert.match(
        r.stdout,
        /^Usage: ch-run \[OPTION\.\.\.\] IMAGE -- COMMAND \[ARG\.\.\.\]\n\nRun a command in a Charliecloud container\.\n/,
      );
      assert.match(r.stdout, /^ {2}-W, --write-fake\[=SIZE\] +overlay read-write tmpfs on top of image$/m);
      assert.match(r.stdout, /^ {2}-\?, --help +give this help list$/m);
      assert.match(r.stdout, /^ {6}--seccomp +fake success for some syscalls with seccomp\(2\)$/m);
      assert.match(r.stdout, /You cannot use this program to actually change your UID\.\n$/);
    }
    const u = chRun(["--usage"]);
    assert.equal(u.status, 0);
    assert.match(u.stdout, /^Usage: ch-run \[-jqtvVw\?\] \[-b SRC\[:DST\]\] /);
    assert.match(u.stdout, /\[--write-fake\[=SIZE\]\]/);
    for (const v of ["-V", "--version"]) {
      const r = chRun([v]);
      assert.equal(r.status, 0);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, /^\d+\.\d+\.\d+\n$/);
    }
    // They act where they come: a bad option after --help is not reached.
    assert.equal(chRun(["--help", "--bogus"]).status, 0);
  });

  it("exits 64 with getopt's words and argp's hint for a bad option", () => {
    const hint = "Try 'ch-run --help' or 'ch-run --usage' for more information.\n";
    for (const [args, first] of [
      [[img, "-b"], "ch-run: option requires an argument -- 'b'"],
      [["--bogus", img, "--", "true"], "ch-run: unrecognized option '--bogus'"],
      [["-Z", img, "--", "true"], "ch-run: invalid option -- 'Z'"],
      [["--home=x", img, "--", "true"], "ch-run: option '--home' doesn't allow an argument"],
      [
        ["--join-", img, "--", "true"],
        "ch-run: option '--join-' is ambiguous; possibilities: '--join-pid' '--join-ct' '--join-tag'",
      ],
    ] as [string[], string][]) {
      const r = chRun(args);
      assert.equal(r.status, 64, args.join(" "));
      assert.equal(r.stderr, `${first}\n${hint}`);
      assert.equal(r.stdout, "");
    }
  });

  it("says what is missing as Charliecloud does", () => {
    for (const args of [[], [img], ["-v", img]]) {
      const r = chRun(args);
      assert.equal(r.status, 31);
      assert.equal(r.stdout, "usage: ch-run [OPTION...] IMAGE -- COMMAND [ARG...]\n");
      assert.match(r.stderr, /^ch-run\[\d+\]: error: IMAGE and\/or COMMAND not specified\n$/);
    }
    for (const [args, what] of [
      [["--uid=abc"], "--uid: no digits found: abc"],
      [["--gid=12x"], "--gid: extra characters after digits: 12x"],
      [["--uid=-1"], "--uid: must be non-negative: -1"],
      [["--uid=99999999999"], "--uid: out of range: 99999999999"],
      [["-q", "-v"], "--verbose incompatible with --quiet"],
      [["-vvvv"], "--verbose can be specified at most thrice"],
      [["--set-env="], "environment options: argument must have non-zero length"],
    ] as [string[], string][]) {
      const r = chRun([...args, img, "--", "true"]);
      assert.equal(r.status, 31, args.join(" "));
      assert.equal(r.stderr.replace(/\[\d+\]/, "[N]"), `ch-run[N]: error: ${what}\n`);
    }
  });
});

describe("--feature", () => {
  it("answers by trying what it claims, and refuses what it does not know", () => {
    // overlayfs: exactly when -W works.
    const w = chRun(["-W", img, "--", "true"]).status === 0;
    assert.equal(chRun(["--feature=overlayfs"]).status, w ? 0 : 1);
    // tmpfs-xattrs: exactly when -W can make a directory where the image had one that was
    // removed (an opaque directory needs a user.* xattr on the tmpfs).
    if (w) {
      const x = chRun(["-W", img, "--", "sh", "-c", "rmdir /mnt/1 && mkdir /mnt/1"]).status === 0;
      assert.equal(chRun(["--feature", "tmpfs-xattrs"]).status, x ? 0 : 1);
    }
    // squash: squashfuse on PATH and /dev/fuse usable.
    let fuse = true;
    try {
      accessSync("/dev/fuse", constants.R_OK | constants.W_OK);
    } catch {
      fuse = false;
    }
    const squashfuse = run("sh", ["-c", "command -v squashfuse"]).status === 0;
    assert.equal(chRun(["--feature=squash"]).status, fuse && squashfuse ? 0 : 1);
    assert.equal(chRun(["--feature=seccomp"]).status, 0, "--seccomp: the filter installs, kexec_load returns 0");
    const u = chRun(["--feature=bogus"]);
    assert.equal(u.status, 31);
    assert.match(u.stderr, /^ch-run\[\d+\]: error: unknown feature: bogus\n$/);
  });
});

describe("test hooks: --test and --warnings", () => {
  it("--test=log logs at each level, as -q, -qq and -qqq allow", () => {
    const lines = (args: string[]) => chRun(args);
    const all = lines(["--test=log"]);
    assert.equal(all.status, 0);
    assert.match(all.stderr, /^ch-run\[\d+\]: info$/m);
    assert.match(all.stderr, /^ch-run\[\d+\]: warning: warning$/m);
    assert.doesNotMatch(all.stderr, /verbose|debug|trace/);
    assert.match(lines(["-vvv", "--test=log"]).stderr, /: trace\n.*: debug\n.*: verbose\n.*: info\n/);
    const q = lines(["-q", "--test=log"]).stderr;
    assert.ok(!q.includes("info") && q.includes("warning: warning"));
    for (const qq of ["-qq", "-qqq"]) assert.equal(lines([qq, "--test=log"]).stderr, "");
    const fail = lines(["-qqq", "--test=log-fail"]);
    assert.equal(fail.status, 31);
    assert.match(fail.stderr, /error: the program failed inexplicably \("log-fail" specified\)/);
    assert.doesNotMatch(fail.stderr, /info|warning/);
    const bad = lines(["--test=nope"]);
    assert.equal(bad.status, 31);
    assert.match(bad.stderr, /error: invalid --test argument: nope; see source code/);
  });

  it("--warnings=N logs N warnings and prints the first ones again at exit", () => {
    const count = (s: string, w: string) => s.split("\n").filter((l) => l.includes(w)).length;
    const zero = chRun(["--warnings=0"]);
    assert.equal(zero.status, 0);
    assert.equal(zero.stderr, "");
    const one = chRun(["--warnings=1"]);
    assert.equal(one.status, 0);
    assert.match(one.stderr, /^ch-run\[\d+\]: warning: reprinting first 1 warning\(s\)$/m);
    assert.equal(count(one.stderr, "this is warning 1!"), 2);
    // The buffer holds 4 KiB: the first warnings are printed again, the last ones not.
    const many = chRun(["--warnings=100"]);
    const kept = Number(/reprinting first (\d+) warning/.exec(many.stderr)?.[1]);
    const size = (n: number) =>
      Buffer.byteLength(`ch-run[${many.stderr.match(/\[(\d+)\]/)?.[1]}]: warning: this is warning ${n}!`) + 1;
    let used = 0;
    let fits = 0;
    while (fits < 100 && used + size(fits + 1) <= 4096) used += size(++fits);
    assert.equal(kept, fits);
    assert.equal(count(many.stderr, `this is warning ${kept}!`), 2);
    assert.equal(count(many.stderr, `this is warning ${kept + 1}!`), 1);
    assert.equal(count(many.stderr, "this is warning 100!"), 1);
  });

  it("prints warnings again below a failure, and never once the command ran", () => {
    const r = chRun(["-s", join(dir, "no-storage"), "-m", "/nowhere", img, "--", "true"]);
    assert.equal(r.status, 0);
    assert.equal(r.stderr.split("\n").filter((l) => l.includes("warning:")).length, 2);
    assert.doesNotMatch(r.stderr, /reprinting/, "the command was started: no reprint");
    const f = chRun(["-s", join(dir, "no-storage"), join(dir, "no-image"), "--", "true"]);
    assert.equal(f.status, 31);
    const lines = f.stderr.trimEnd().split("\n");
    assert.match(lines[0], /warning: storage directory not found: /);
    assert.match(lines[1], /error: can't find image: /);
    assert.match(lines[2], /warning: reprinting first 1 warning\(s\)$/);
    assert.equal(lines[3], lines[0]);
  });
});

describe("broken images, in Charliecloud's words", () => {
  /** Charliecloud's "broken image errors" test, on a copy of the image. */
  it("refuses a directory at /etc/hosts or /etc/resolv.conf, and missing required paths", () => {
    const b = busyboxImage(dir, "broken");
    const check = (args: string[], re: RegExp) => {
      const r = chRun([...args, b, "--", "true"]);
      assert.equal(r.status, 31, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, ERROR_LINE);
      assert.match(r.stderr, re);
    };
    for (const f of ["etc/hosts", "etc/resolv.conf"]) {
      if (!existsSync(`/${f}`)) continue; // bound only when the host has it
      rmSync(join(b, f));
      mkdirSync(join(b, f));
      check([], new RegExp(`error: can't bind /${f} to ${b}/${f}: Not a directory`));
      rmSync(join(b, f), { recursive: true });
      // Missing: skipped without a word, as optional.
      const r = chRun([b, "--", "true"]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, "");
      writeFileSync(join(b, f), "");
    }
    for (const f of ["etc/passwd", "etc/group"]) {
      rmSync(join(b, f));
      check([], new RegExp(`error: can't bind: destination not found: ${b}/${f} \\(`));
      mkdirSync(join(b, f));
      check([], new RegExp(`error: can't bind \\S+ to ${b}/${f}: Not a directory`));
      rmSync(join(b, f), { recursive: true });
      writeFileSync(join(b, f), "");
    }
    for (const d of ["proc", "sys", "tmp"]) {
      rmSync(join(b, d), { recursive: true });
      check([], new RegExp(`error: can't bind: destination not found: ${b}/${d} \\(`));
      writeFileSync(join(b, d), "");
      check([], new RegExp(`error: can't bind \\S+ to ${b}/${d}: Not a directory`));
      rmSync(join(b, d));
      mkdirSync(join(b, d));
    }
    rmSync(join(b, "tmp"), { recursive: true });
    check(["--private-tmp"], new RegExp(`error: can't mount tmpfs at ${b}/tmp: No such file or directory`));
    mkdirSync(join(b, "tmp"));
    // A missing bind destination in a read-only image, and one inside an earlier bind.
    check(["-b", `${dir}:/goops`], new RegExp(`error: can't mkdir: ${b}/goops: Read-only file system`));
    check(
      ["-b", `${dir}:/proc/doesnotexist`],
      new RegExp(`error: can't mkdir: ${b}/proc/doesnotexist under existing bind-mount ${b}/proc \\(`),
    );
    check(["-b", `${dir}/hoops`], new RegExp(`error: can't bind: source not found: ${dir}/hoops`));
    // Everything restored: it runs.
    assert.equal(chRun([b, "--", "true"]).status, 0);
  });
});

describe("--write-fake SIZE", () => {
  it("checks the size before anything is mounted, naming it", () => {
    for (const [size, why] of [
      ["abc", "want e.g. 4G, 512m or 50% of memory"],
      ["4q", "want e.g. 4G, 512m or 50% of memory"],
      ["4m,uid=0", "want e.g. 4G, 512m or 50% of memory"],
      ["", "want e.g. 4G, 512m or 50% of memory"],
      ["0", "0 would be no limit at all"],
      ["0%", "0 would be no limit at all"],
      ["0x0", "0 would be no limit at all"],
    ]) {
      const r = chRun([`--write-fake=${size}`, img, "--", "true"]);
      assert.equal(r.status, 31, size);
      // Charliecloud's test looks for its own words, which fail at the mount: they are kept.
      assert.equal(
        r.stderr.replace(/\[\d+\]/, "[N]").replace(/\(\S+\.ts:\d+ /, "(F "),
        `ch-run[N]: error: invalid --write-fake size: ${size} (${why}), so cannot mount tmpfs for overlay: Invalid argument (F 22)\n`,
      );
    }
  });

  it("accepts what tmpfs accepts, and the size holds", () => {
    const total = (size: string) => {
      const r = chRun([`-W${size}`, img, "--", "df", "-k", "/"]);
      assert.equal(r.status, 0, `${size}: ${r.stderr}`);
      return Number(r.stdout.trim().split("\n")[1].trim().split(/\s+/)[1]);
    };
    assert.equal(total("4m"), 4096);
    assert.equal(total("4M"), 4096);
    assert.equal(total("0x400000"), 4096);
    assert.equal(total("020000k"), 8192); // octal, as the kernel's memparse() reads it
    assert.ok(total("1%") > 0);
    assert.ok(total("1G") === 1024 * 1024);
    // Bare -W: 12% of memory, as Charliecloud's default; a later size wins over --home's default.
    const mem = Number(/MemTotal:\s+(\d+)/.exec(run("cat", ["/proc/meminfo"]).stdout)?.[1]);
    const dflt = total("");
    assert.ok(Math.abs(dflt - mem * 0.12) < mem * 0.01, `${dflt} vs 12% of ${mem}`);
    const r = chRun(["--home", "-W4m", img, "--", "df", "-k", "/"]);
    assert.equal(Number(r.stdout.trim().split("\n")[1].trim().split(/\s+/)[1]), 4096);
  });
});
