// ch-run as an ordinary user: a real container from a busybox image made offline.
import assert from "node:assert/strict";
import { type ChildProcess, type StdioOptions, spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { busyboxImage, CH_RUN, chRun, cleanup, copyWithLibs, ERROR_LINE, run, tmp } from "../helpers.ts";

let dir: string;
let img: string;
const uid = process.getuid?.() ?? -1;
const gid = process.getgid?.() ?? -1;

before(() => {
  assert.notEqual(uid, 0, "container tests must run as an ordinary user (npm test does this for root)");
  dir = tmp();
  img = busyboxImage(dir);
});
after(() => cleanup(dir));

describe("ch-run basics", () => {
  it("runs a command in the image", () => {
    const r = chRun([img, "--", "echo", "hello"]);
    assert.equal(r.stderr, "");
    assert.equal(r.stdout, "hello\n");
    assert.equal(r.status, 0);
  });

  it("runs without -- as in the FAQ", () => {
    const r = chRun([img, "echo", "hi"]);
    assert.equal(r.stdout, "hi\n");
  });

  it("is the invoking user inside, with a name from the synthesized passwd", () => {
    const r = chRun([img, "--", "sh", "-c", "id -u; id -g; id -un; grep -c . /etc/passwd"]);
    const [u, g, name] = r.stdout.trim().split("\n");
    assert.equal(Number(u), uid);
    assert.equal(Number(g), gid);
    assert.equal(name, process.env.USER);
  });

  it("gives root inside with --uid 0, and a dummy entry for unknown IDs", () => {
    assert.equal(chRun(["--uid", "0", img, "--", "id", "-un"]).stdout, "root\n");
    assert.equal(chRun(["--uid=4242", img, "--", "id", "-un"]).stdout, "charlie\n");
    assert.equal(chRun(["--gid=4243", img, "--", "id", "-gn"]).stdout, "charliegroup\n");
  });

  it("shows the image's own passwd with --no-passwd", () => {
    assert.equal(chRun(["--no-passwd", img, "--", "cat", "/etc/passwd"]).stdout, "root:x:0:0:root:/root:/bin/sh\n");
  });

  it("keeps the FAQ's --uid 0 quirk: only the user's own files, as outside", () => {
    const f = join(dir, "cantreadme");
    writeFileSync(f, "surprise\n");
    chmodSync(f, 0o000);
    const plain = chRun([img, "--", "cat", f]);
    assert.notEqual(plain.status, 0);
    assert.match(plain.stderr, /Permission denied/);
    const root = chRun(["--uid", "0", img, "--", "cat", f]);
    assert.equal(root.stdout, "surprise\n");
    // Not an escalation: a root-only host file stays unreadable.
    const shadow = chRun(["--uid", "0", img, "--", "cat", "/proc/1/environ"]);
    assert.notEqual(shadow.status, 0);
  });

  it("maps the user's group to GID 5 with --gid=5, so chown to tty works (FAQ)", () => {
    const f = join(dir, "ptyfile");
    writeFileSync(f, "");
    const r = chRun(["--gid=5", img, "--", "sh", "-c", `id -g; chown ${uid}:5 ${f} && stat -c %g ${f}`]);
    assert.equal(r.stdout, "5\n5\n");
    assert.notEqual(chRun([img, "--", "chown", `${uid}:5`, f]).status, 0);
  });

  it("shares the host network, where ping has no raw socket (FAQ)", () => {
    for (const args of [[img], ["--uid=0", img]]) {
      const r = chRun([...args, "--", "ping", "-c", "1", "127.0.0.1"]);
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /permission denied \(are you root\?\)/);
    }
  });
});

describe("file systems", () => {
  it("mounts the image read-only by default", () => {
    const r = chRun([img, "--", "touch", "/x"]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /Read-only file system/);
  });

  it("re-mounts read-only on a file system with locked flags (the FAQ's NFS failure)", (t) => {
    const fs = process.env.CH_TEST_LOCKED_FS;
    if (!fs) return t.skip("CH_TEST_LOCKED_FS not set (.ci/run mounts a strictatime,nosuid,nodev tmpfs)");
    const parent = mkdtempSync(join(fs, "img-"));
    try {
      const locked = busyboxImage(parent);
      const r = chRun([locked, "--", "sh", "-c", "touch /x; grep ' / ' /proc/self/mountinfo"]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /Read-only file system/);
      assert.match(r.stdout, / \/ ro,nosuid,nodev/);
    } finally {
      cleanup(parent);
    }
  });

  it("writes to the image with -w", () => {
    assert.equal(chRun(["-w", img, "--", "touch", "/written"]).status, 0);
    assert.ok(existsSync(join(img, "written")));
  });

  it("overlays a tmpfs with -W: writes work and vanish", () => {
    const r = chRun(["-W", img, "--", "sh", "-c", "echo x > /fake && cat /fake && mkdir -p /usr/new && ls /bin/busybox"]);
    assert.equal(r.stdout, "x\n/bin/busybox\n");
    assert.ok(!existsSync(join(img, "fake")));
    assert.equal(chRun(["--write-fake=4m", img, "--", "sh", "-c", "echo y > /f2 && cat /f2"]).stdout, "y\n");
  });

  it("binds /dev, /proc, /sys and the host's /tmp", () => {
    const mark = join(dir, "seen-in-container");
    writeFileSync(mark, "tmp");
    const r = chRun([img, "--", "sh", "-c", `test -c /dev/null && test -d /proc/self && test -d /sys/kernel && cat ${mark}`]);
    assert.equal(r.stdout, "tmp");
  });

  it("gives a private /tmp with -t", () => {
    const r = chRun(["-t", img, "--", "sh", "-c", "touch /tmp/private-x && ls /tmp"]);
    assert.equal(r.stdout, "private-x\n");
    assert.ok(!existsSync("/tmp/private-x"));
  });

  it("binds $HOME at /home/$USER with --home", () => {
    const r = chRun(["--home", img, "--", "sh", "-c", 'echo $HOME; test -d "$HOME" && echo ok']);
    assert.equal(r.stdout, `/home/${process.env.USER}\nok\n`);
  });

  it("binds with -b SRC:DST and -b SRC", () => {
    const src = join(dir, "data");
    mkdirSync(src, { recursive: true });
    writeFileSync(join(src, "f"), "bound\n");
    assert.equal(chRun(["-b", `${src}:/mnt/3`, img, "--", "cat", "/mnt/3/f"]).stdout, "bound\n");
    // Default destination: the same path; under /tmp it exists through the /tmp bind.
    assert.equal(chRun(["--bind", src, img, "--", "cat", `${src}/f`]).stdout, "bound\n");
  });

  it("refuses a bind destination missing from a read-only image, naming it (Charliecloud's words)", () => {
    const r = chRun(["-b", `${dir}:/nonexistent`, img, "--", "true"]);
    assert.equal(r.status, 31);
    assert.match(r.stderr, ERROR_LINE);
    assert.match(r.stderr, new RegExp(`error: can't mkdir: ${img}/nonexistent: Read-only file system`));
  });

  it("creates a missing bind destination in a writable image, but never inside an earlier bind", () => {
    const src = join(dir, "data2");
    mkdirSync(src, { recursive: true });
    writeFileSync(join(src, "g"), "made\n");
    assert.equal(chRun(["-W", "-b", `${src}:/new/dir`, img, "--", "cat", "/new/dir/g"]).stdout, "made\n");
    assert.ok(!existsSync(join(img, "new")));
    const r = chRun(["-W", "-b", `${src}:/tmp/chtest-not-there/x`, img, "--", "true"]);
    assert.equal(r.status, 31);
    assert.match(r.stderr, /can't mkdir: \S+\/tmp\/chtest-not-there under existing bind-mount \S+\/tmp \(/);
  });

  it("names a missing bind source", () => {
    const r = chRun(["-b", "/no/such/source:/mnt/0", img, "--", "true"]);
    assert.equal(r.status, 31);
    assert.match(r.stderr, /^ch-run\[\d+\]: error: can't bind: source not found: \/no\/such\/source: No such file or directory/);
  });

  it("reports a failed setup step from the container with errno", () => {
    // A directory onto a file: mount(2) fails inside the new namespaces.
    const r = chRun(["-b", `${dir}:/etc/hosts`, img, "--", "true"]);
    assert.equal(r.status, 31);
    assert.match(r.stderr, ERROR_LINE);
    assert.match(r.stderr, new RegExp(`can't bind ${dir} to ${img}/etc/hosts: Not a directory \\(execute\\.ts:\\d+ 20\\)`));
  });
});

describe("environment", () => {
  it("passes the host's environment through, sets HOME, PATH, CH_RUNNING, unsets TMPDIR", () => {
    const env = { ...process.env, FOO: "bar", TMPDIR: "/var/tmp", PATH: "/usr/local/bin:/usr/bin" };
    const r = chRun([img, "--", "env"], { env });
    const vars = new Map(
      r.stdout
        .trim()
        .split("\n")
        .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
    );
    assert.equal(vars.get("FOO"), "bar");
    assert.equal(vars.get("HOME"), "/root");
    assert.equal(vars.get("PATH"), "/usr/local/bin:/usr/bin:/bin");
    assert.equal(vars.get("CH_RUNNING"), "Weird Al Yankovic");
    assert.equal(vars.has("TMPDIR"), false);
  });

  it("applies --set-env and --unset-env in command-line order, with expansion", () => {
    const file = join(dir, "env.txt");
    writeFileSync(file, "A=1\n\nB='two'\nC=$A:x\n");
    const r = chRun(
      [
        "--set-env=X=1",
        "--unset-env=X",
        "--set-env=Y=2",
        `--set-env=${file}`,
        "--set-env",
        "--unset-env=IMAGE_V*",
        img,
        "--",
        "env",
      ],
      { env: { ...process.env, PATH: "/bin" } },
    );
    const lines = r.stdout.split("\n");
    assert.ok(!lines.some((l) => l.startsWith("X=")));
    for (const want of ["Y=2", "A=1", "B=two", "C=1:x", "IMAGE_PATH=/opt:/bin"]) assert.ok(lines.includes(want), want);
    assert.ok(!lines.some((l) => l.startsWith("IMAGE_VAR=")));
    const raw = chRun(["--env-no-expand", "--set-env=D=$HOME", img, "--", "sh", "-c", "echo $D"]);
    assert.equal(raw.stdout, "$HOME\n");
  });

  it("reports a bad --set-env file line with its number", () => {
    const file = join(dir, "bad-env.txt");
    writeFileSync(file, "A=1\n\nnot an assignment\n");
    const r = chRun([`--set-env=${file}`, img, "--", "true"]);
    assert.equal(r.status, 31);
    assert.match(r.stderr, new RegExp(`can't parse variable: no delimiter: ${file}:3 `));
  });

  it("runs an X11 client against the host's X server (socket under /tmp, DISPLAY passed through)", async (t) => {
    const xdpyinfo = "/usr/bin/xdpyinfo";
    if (!existsSync("/usr/bin/Xvfb") || !existsSync(xdpyinfo)) return t.skip("needs Xvfb and xdpyinfo (.ci/run installs them)");
    const x11 = busyboxImage(dir, "x11");
    copyWithLibs(xdpyinfo, x11);
    const display = 50 + (process.pid % 200);
    const server = spawn("/usr/bin/Xvfb", [`:${display}`, "-nolisten", "tcp"], { stdio: "ignore" });
    try {
      const socket = `/tmp/.X11-unix/X${display}`;
      for (let i = 0; i < 250 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 20));
      const r = chRun([x11, "--", xdpyinfo], { env: { ...process.env, DISPLAY: `:${display}` } });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`name of display:\\s+:${display}`));
    } finally {
      server.kill();
    }
  });
});

describe("exit status and errors", () => {
  it("exits with the command's status, and 128+N for signal N", () => {
    assert.equal(chRun([img, "--", "sh", "-c", "exit 7"]).status, 7);
    // ch-run is its command's process (as Charliecloud's, which execs it): a command killed by a
    // signal kills ch-run, and a shell says 128+N.
    assert.equal(chRun([img, "--", "sh", "-c", "kill -TERM $$"]).signal, "SIGTERM");
    assert.equal(run("sh", ["-c", `"$0" "$1" -- sh -c 'kill -TERM $$'; echo $?`, CH_RUN, img]).stdout, "143\n");
  });

  it("exits 49 when the command can't be executed", () => {
    const r = chRun([img, "--", "no-such-command"]);
    assert.equal(r.status, 49);
    assert.match(
      r.stderr,
      /^ch-run\[\d+\]: error: can't execve\(2\): no-such-command: No such file or directory \(execute\.ts:\d+ 2\)\n$/,
    );
  });

  it("runs an image by name from storage (-s or $CH_IMAGE_STORAGE)", () => {
    const storage = join(dir, "storage");
    mkdirSync(join(storage, "img"), { recursive: true });
    busyboxImage(join(storage, "img"), "example.com+5050%foo+latest");
    const r = chRun(["-s", storage, "example.com:5050/foo:latest", "--", "echo", "by name"]);
    assert.equal(r.stdout, "by name\n", r.stderr);
    const e = chRun(["example.com:5050/foo:latest", "--", "echo", "env"], { env: { ...process.env, CH_IMAGE_STORAGE: storage } });
    assert.equal(e.stdout, "env\n");
    const w = chRun(["-w", "-s", storage, "example.com:5050/foo:latest", "--", "true"]);
    assert.equal(w.status, 31);
    assert.match(w.stderr, /--write invalid when running by name/);
  });

  it("reproduces the FAQ's first example", () => {
    const r = chRun(["foo", "--", "echo", "hello"], { cwd: dir });
    assert.equal(r.status, 31);
    assert.match(r.stderr, /^ch-run\[\d+\]: error: can't find image: foo: No such file or directory \(image\.ts:\d+ 2\)\n$/);
  });

  for (const [args, what] of [
    [["--uid=abc", "IMG", "--", "true"], /--uid: no digits found: abc/],
    [["-b", "/tmp:relative", "IMG", "--", "true"], /--bind: destination must be absolute: relative/],
    [["--unset-env=", "IMG", "--", "true"], /--unset-env: GLOB must have non-zero length/],
  ] as [string[], RegExp][]) {
    it(`rejects ${args.join(" ")} in one line, exit 31`, () => {
      const r = chRun(args.map((a) => (a === "IMG" ? img : a)));
      assert.equal(r.status, 31);
      assert.match(r.stderr, /^ch-run\[\d+\]: error: [^\n]+\n$/);
      assert.match(r.stderr, what);
      assert.equal(r.stdout, "");
    });
  }

  it("rejects an unknown option as argp does: getopt's words, exit 64", () => {
    const r = chRun(["--bogus", img, "--", "true"]);
    assert.equal(r.status, 64);
    assert.equal(
      r.stderr,
      "ch-run: unrecognized option '--bogus'\nTry 'ch-run --help' or 'ch-run --usage' for more information.\n",
    );
  });

  it("prints setup steps with -v and nothing extra with -q", () => {
    const v = chRun(["-v", img, "--", "true"]);
    assert.match(v.stderr, /bind \/dev -> /);
    assert.match(v.stderr, /pivot_root into /);
    assert.equal(chRun(["-q", img, "--", "true"]).stderr, "");
    assert.equal(chRun(["-qq", img, "--", "echo", "hidden"]).stdout, "");
  });
});

describe("descriptors, signals, resources", () => {
  it("passes stdio and inherited descriptors, and none of Node's", () => {
    const extra = openSync(join(dir, "fd5.txt"), "w");
    const stdio: StdioOptions = ["pipe", "pipe", "pipe", "ignore", "ignore", extra];
    const fds = (r: { stdout: string }) =>
      r.stdout
        .trim()
        .split("\n")
        .map(Number)
        .sort((a, b) => a - b);
    // What a plain process started the same way gets (3 is ls's own handle on the directory).
    const want = fds(run("ls", ["/proc/self/fd"], { stdio }));
    assert.ok(want.includes(5));
    assert.deepEqual(fds(chRun([img, "--", "ls", "/proc/self/fd"], { stdio })), want);
  });

  it("keeps an inherited descriptor with its descriptor helper, without loading koffi", () => {
    // A private directory of this test's own shows what ch-run wrote there: the helper, not
    // koffi's module (which the launch would write there first if it loaded it).
    const rt = join(dir, "keepfd-rt");
    mkdirSync(rt, { mode: 0o700 });
    const out = join(dir, "keepfd-fd5.txt");
    const extra = openSync(out, "w");
    const env = { ...process.env, XDG_RUNTIME_DIR: rt };
    const r = chRun([img, "--", "sh", "-c", "echo through >&5"], {
      env,
      stdio: ["pipe", "pipe", "pipe", "ignore", "ignore", extra],
    });
    closeSync(extra);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(readFileSync(out, "utf8"), "through\n");
    const files = readdirSync(join(rt, "charliecloud"));
    assert.ok(
      files.some((f) => /^ch-run-keepfd-.*\.node$/.test(f)),
      files.join(" "),
    );
    assert.ok(!files.some((f) => f.startsWith("koffi-")), `koffi's module was loaded: ${files.join(" ")}`);
    // With no descriptor to keep, the helper still finds that out (quicker than JavaScript), and
    // koffi is not loaded either.
    const rt2 = join(dir, "keepfd-rt2");
    mkdirSync(rt2, { mode: 0o700 });
    assert.equal(chRun([img, "--", "true"], { env: { ...env, XDG_RUNTIME_DIR: rt2 } }).status, 0);
    assert.deepEqual(
      readdirSync(join(rt2, "charliecloud"))
        .filter((f) => f.endsWith(".node"))
        .map((f) => f.replace(/-[0-9a-f]{16}\.node$/, "")),
      [`ch-run-keepfd-${process.arch}`],
    );
  });

  it("passes inherited descriptors of every kind as found by the helper, written on this first start, and none of Node's", () => {
    // 5 and 6: both ends of one pipe, left (ch-run can't tell them from Node's own pairs); 7: the
    // single end of another; 8: a regular file and 9: /dev/null, which Node marks close-on-exec
    // at start-up (/dev/null is left: Node opens one too); 40: a regular file, 41: /dev/null,
    // neither marked. 3 is ls's own handle on the directory. A private directory of its own: the
    // helper is written there on this start, after which ch-run must have no more open than before.
    // (A command line no other test runs: no launch remembered elsewhere is replayed instead.)
    const rt = join(dir, "keepfd-every-rt");
    mkdirSync(rt, { mode: 0o700 });
    const script =
      'true | { exec 5<>/proc/self/fd/0 6<&5 0</dev/null; true | { exec 7<>/proc/self/fd/0 0</dev/null; exec "$0" "$1" -- ls /proc/self/fd/ 8</etc/passwd 9>/dev/null 40</etc/passwd 41>/dev/null; }; }';
    const r = run("bash", ["-c", script, CH_RUN, img], { env: { ...process.env, XDG_RUNTIME_DIR: rt } });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(
      r.stdout
        .trim()
        .split("\n")
        .map(Number)
        .sort((a, b) => a - b),
      [0, 1, 2, 3, 7, 8, 40, 41],
    );
    assert.ok(
      readdirSync(join(rt, "charliecloud")).some((f) => /^ch-run-keepfd-.*\.node\.verified$/.test(f)),
      "the helper was not written on this start",
    );
  });

  it("says so when no private directory can hold the descriptor helper (all noexec), exit 31", () => {
    const t = join(dir, "keepfd-noexec-tmp");
    const h = join(dir, "keepfd-noexec-home");
    mkdirSync(t);
    mkdirSync(h);
    const script =
      'mount -t tmpfs -o noexec tmpfs "$TMPDIR" && mount -t tmpfs -o noexec tmpfs "$HOME" && exec "$0" "$1" -- true 5>"$2"';
    const r = run("unshare", ["-Urm", "sh", "-c", script, CH_RUN, img, join(dir, "keepfd-noexec-fd5")], {
      env: { PATH: "/usr/bin:/bin", HOME: h, USER: "u", TMPDIR: t },
    });
    assert.equal(r.status, 31, r.stderr);
    assert.match(
      r.stderr,
      /^ch-run\[\d+\]: error: can't load the descriptor helper: no private directory for the descriptor helper \(.*failed to map segment.*\); set XDG_CACHE_HOME .* \(keepfd\.ts:\d+ 0\)\n$/,
    );
  });

  function start(args: string[]): Promise<{ child: ChildProcess; out: () => string }> {
    const child = spawn(CH_RUN, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout?.on("data", (d) => {
      out += d;
    });
    return new Promise((resolve, reject) => {
      const t = setInterval(() => {
        if (/ready[^\n]*\n/.test(out)) {
          clearInterval(t);
          resolve({ child, out: () => out });
        }
      }, 10);
      child.on("exit", () => {
        clearInterval(t);
        reject(new Error(`exited early: ${out}`));
      });
    });
  }
  // "close" waits for the output too ("exit" can come before the last of it is read); the SIGKILL
  // test waits for "exit", since an orphan would hold the pipe open.
  const exited = (c: ChildProcess, event: "close" | "exit" = "close") =>
    new Promise<number | null>((res) => c.on(event, (code, sig) => res(code ?? (sig ? -1 : null))));

  for (const sig of ["INT", "TERM", "HUP", "QUIT", "USR1", "USR2", "WINCH", "CONT"] as const) {
    it(`forwards SIG${sig} to the command`, { timeout: 20_000 }, async () => {
      const script = `trap 'echo got-${sig}; exit 3' ${sig}; echo ready; while :; do sleep 0.05; done`;
      const { child, out } = await start([img, "--", "sh", "-c", script]);
      const done = exited(child);
      child.kill(`SIG${sig}`);
      assert.equal(await done, 3);
      assert.match(out(), new RegExp(`got-${sig}`));
    });
  }

  it("stops when the command stops, and goes on with SIGCONT", { timeout: 20_000 }, async () => {
    // SIGSTOP to the command itself: SIGTSTP would be ignored if the test runs in an orphaned
    // process group, as it does under CI.
    const { child, out } = await start([
      img,
      "--",
      "sh",
      "-c",
      "echo ready $$; i=0; while [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done; echo end",
    ]);
    const inner = Number(/ready (\d+)/.exec(out())?.[1]);
    const done = exited(child);
    const state = () => readFileSync(`/proc/${child.pid}/stat`, "utf8").split(") ")[1][0];
    process.kill(inner, "SIGSTOP");
    for (let i = 0; i < 100 && state() !== "T"; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(state(), "T", "ch-run stopped with its command");
    child.kill("SIGCONT");
    assert.equal(await done, 0);
    assert.match(out(), /end/);
  });

  it("is its command's process: the same PID, a signal to it reaches the command, nothing left behind", async () => {
    const { child, out } = await start([
      img,
      "--",
      "sh",
      "-c",
      "trap 'echo got-TERM $$; exit 5' TERM; echo ready $$; while :; do sleep 0.05; done",
    ]);
    assert.equal(Number(/ready (\d+)/.exec(out())?.[1]), child.pid, "the command's PID is ch-run's");
    const done = exited(child);
    process.kill(child.pid ?? 0, "SIGTERM");
    assert.equal(await done, 5);
    assert.match(out(), new RegExp(`got-TERM ${child.pid}`));
    assert.ok(!existsSync(`/proc/${child.pid}`), "no process left");
  });

  it("leaves the command no orphan when ch-run is killed with SIGKILL", { timeout: 20_000 }, async () => {
    const { child, out } = await start([img, "--", "sh", "-c", "echo ready $$; sleep 30"]);
    const inner = Number(/ready (\d+)/.exec(out())?.[1]);
    const done = exited(child, "exit");
    child.kill("SIGKILL");
    await done;
    for (let i = 0; i < 100 && existsSync(`/proc/${inner}`); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(!existsSync(`/proc/${inner}`), "the command died with ch-run");
  });

  it("gives the command blocking standard descriptors and no ignored signal (Node's own settings)", () => {
    // A FIFO opened O_NONBLOCK: the flag belongs to the open file, which the command shares.
    const fifo = join(dir, "fifo");
    run("mkfifo", [fifo]);
    const fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    try {
      const r = spawnSync(CH_RUN, [img, "--", "grep", "-E", "^(flags|SigIgn)", "/proc/self/fdinfo/1", "/proc/self/status"], {
        stdio: ["ignore", fd, "pipe"],
        encoding: "utf8",
      });
      assert.equal(r.status, 0, r.stderr);
      const buf = Buffer.alloc(4096);
      const out = buf.subarray(0, readSync(fd, buf)).toString();
      const flags = Number.parseInt(/fdinfo\/1:flags:\s+([0-7]+)/.exec(out)?.[1] ?? "", 8);
      assert.equal(flags & constants.O_NONBLOCK, 0, out);
      assert.match(out, /status:SigIgn:\s+0+\n/);
    } finally {
      closeSync(fd);
    }
  });

  it("prints a step that fails in the container's setup as one error line, then the warnings again", () => {
    const r = chRun(["--mount=/x", "-c", "/no/such/dir", img, "--", "true"]);
    assert.equal(r.status, 31);
    const w = "warning: --mount invalid with directory image, ignoring";
    const p = "ch-run\\[\\d+\\]: ";
    assert.match(
      r.stderr,
      new RegExp(
        `^${p}${w}\\n${p}error: can't cd to /no/such/dir: No such file or directory \\(execute\\.ts:\\d+ 2\\)\\n${p}warning: reprinting first 1 warning\\(s\\)\\n${p}${w}\\n$`,
      ),
    );
  });

  it("passes over a private directory mounted noexec for its launcher", () => {
    // In a mount namespace of its own, $TMPDIR is a tmpfs mounted noexec: the launcher goes to the
    // next place (~/.cache/charliecloud), and the container starts from there.
    const home = join(dir, "noexec-home");
    const t = join(dir, "noexec-tmp");
    mkdirSync(home);
    mkdirSync(t);
    const script = 'mount -t tmpfs -o noexec tmpfs "$TMPDIR" && exec "$0" "$1" -- echo "$$"';
    const r = run("unshare", ["-Urm", "sh", "-c", script, CH_RUN, img], {
      env: { PATH: "/usr/bin:/bin", HOME: home, USER: "u", TMPDIR: t },
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^\d+\n$/);
    assert.ok(readdirSync(join(home, ".cache/charliecloud")).some((f) => f.startsWith("ch-run-exec-")));
  });

  it("runs a plan too large for the launcher's arguments on the clone path", () => {
    // 0.9 MB of environment and 0.9 MB of the command's arguments: ch-run starts (under the
    // 2 MB that an 8 MiB stack allows), and so would the command, but the launcher's arguments
    // and environment hold both and the plan (the arguments again, base64): too large (E2BIG).
    const big: Record<string, string> = {};
    for (let i = 0; i < 9; i++) big[`BIG${i}`] = "x".repeat(100_000);
    const args = Array.from({ length: 9 }, (_, i) => String(i).repeat(100_000)); // distinct: the plan holds each once;
    const r = run(
      "sh",
      // biome-ignore lint/suspicious/noTemplateCurlyInString: the shell's
      ["-c", 'ulimit -s 8192 && exec "$0" "$@"', CH_RUN, "-v", img, "--", "sh", "-c", 'echo "${#BIG8} $# ${#9}"', "x", ...args],
      { env: { ...process.env, ...big } },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stderr,
      /no launcher executable \(plan too large for the launcher's arguments \(\d+ bytes\)\): starting the container from Node/,
    );
    assert.equal(r.stdout, "100000 9 100000\n");
  });

  it("writes no temporary files", () => {
    // Other test files run beside this one, so look only at what ch-run could leave: its own
    // TMPDIR stays empty, and nothing of its kind appears in /tmp.
    const own = join(dir, "own-tmp");
    mkdirSync(own);
    const env = { ...process.env, TMPDIR: own };
    const before = new Set(readdirSync("/tmp"));
    chRun([img, "--", "true"], { env });
    chRun([img, "--", "no-such-command"], { env });
    chRun(["-b", "/no/such", img, "--", "true"], { env });
    // Only the private directory of the files ch-run runs from (the launcher, koffi's module,
    // the descriptor helper) and the launches it remembers, which stay for the next start: no
    // temporary file.
    const kept = readdirSync(own);
    assert.ok(
      kept.every((f) => f === `.charliecloud-${uid}`),
      kept.join(" "),
    );
    for (const f of kept.flatMap((d) => readdirSync(join(own, d))))
      assert.match(
        f,
        new RegExp(
          `^(ch-run-exec-${process.arch}-[0-9a-f]{16}|(koffi-[\\d.]+|ch-run-keepfd)-${process.arch}-[0-9a-f]{16}\\.node)(\\.verified|\\.runs)?$|^ch-run-memo-[0-9a-f]{2}$`,
        ),
      );
    const added = readdirSync("/tmp").filter((f) => !before.has(f) && /ch-run|passwd|group|koffi|waiter/.test(f));
    assert.deepEqual(added, []);
  });
});

describe("CH_RUN_STATUS_FD: ch-run's own failures told apart from the command's status", () => {
  /** Runs ch-run with a pipe at descriptor 3 named by CH_RUN_STATUS_FD; its status and what it said there. */
  const withChannel = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const r = spawnSync(CH_RUN, args, {
      stdio: ["ignore", "pipe", "pipe", "pipe"],
      env: { ...process.env, CH_RUN_STATUS_FD: "3", ...env },
      encoding: "utf8",
    });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr, said: String(r.output[3] ?? "") };
  };

  for (const [path, pre] of [
    ["the launcher executable", [] as string[]],
    ["the clone path (--join)", ["--join-ct=1", "--join-tag=status-fd"]],
  ] as const) {
    it(`on ${path}: started, failed to execute, or never started`, () => {
      for (const code of [31, 49]) {
        const r = withChannel([...pre, img, "--", "sh", "-c", `exit ${code}`]);
        assert.deepEqual([r.status, r.said], [code, "started\n"], r.stderr);
      }
      // Found on the second PATH entry: the first one's failure is not said.
      const second = withChannel([...pre, img, "--", "sh", "-c", "exit 49"], { PATH: "/nowhere:/bin" });
      assert.deepEqual([second.status, second.said], [49, "started\n"], second.stderr);
      const missing = withChannel([...pre, img, "--", "/nowhere"]);
      assert.deepEqual([missing.status, missing.said], [49, "started\nfailed\n"]);
      assert.match(missing.stderr, /error: can't execve\(2\): \/nowhere: No such file or directory/);
      const cd = withChannel([...pre, "--cd=/nowhere", img, "--", "true"]);
      assert.deepEqual([cd.status, cd.said], [31, ""]);
      // The command inherits neither the descriptor nor the variable.
      // biome-ignore lint/suspicious/noTemplateCurlyInString: shell text, not a template
      const own = withChannel([...pre, img, "--", "sh", "-c", "ls /proc/self/fd; echo ${CH_RUN_STATUS_FD-unset}"]);
      assert.equal(own.status, 0, own.stderr);
      assert.deepEqual(own.stdout.trim().split("\n").sort(), ["0", "1", "2", "3", "unset"].sort());
    });
  }

  it("refuses a descriptor that is not open, not above 2, or not inherited", () => {
    // 4: open, but Node's own (its epoll, eventfd or libuv pipes come right after 3), which
    // the launcher would write to (and die of SIGPIPE on one of those pipes).
    for (const v of ["77", "1", "x", "4"]) {
      const r = withChannel([img, "--", "true"], { CH_RUN_STATUS_FD: v });
      assert.equal(r.status, 31);
      assert.match(r.stderr, new RegExp(`error: CH_RUN_STATUS_FD: not an open descriptor above 2: ${v} `));
    }
  });
});
