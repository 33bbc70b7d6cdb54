// Debian's tinyproxy, an HTTP proxy (CONNECT tunnels and absolute-form requests), started as the
// test user on a free port of 127.0.0.1 with its own configuration, optionally requiring Basic
// proxy credentials; behind a tap, a TCP relay in this process that keeps every byte the client
// sends to the proxy, so a test can say what reached the proxy (tinyproxy doesn't log headers).
// stop() kills it; so does the test process's exit.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { type AddressInfo, connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { freePort, sleep } from "./http.ts";

export const TINYPROXY_BIN = "/usr/bin/tinyproxy";
const SETPRIV = "/usr/bin/setpriv";

export interface Tinyproxy {
  /** The tap's port: what clients are pointed at. */
  port: number;
  /** http://127.0.0.1:PORT, or with the proxy credentials when it requires them. */
  url: string;
  /** tinyproxy's own port (not behind the tap). */
  directPort: number;
  /** tinyproxy's log so far. */
  log(): string;
  /** The request lines tinyproxy logged ("CONNECT 127.0.0.1:443 HTTP/1.1", "GET http://..."). */
  requests(): string[];
  /** Every byte clients sent to the proxy so far (through the tap), as latin1. */
  sent(): string;
  /** The same, one string per connection, in the order they were opened. */
  connections(): string[];
  /** Forgets what was sent (the log stays; requests() counts from here too). */
  clear(): void;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of running) c.kill("SIGKILL");
});

/** Starts tinyproxy with its files under dir (created). auth: the proxy's Basic credentials. */
export async function startTinyproxy(dir: string, auth?: { user: string; pass: string }): Promise<Tinyproxy> {
  if (!existsSync(TINYPROXY_BIN)) throw new Error(`${TINYPROXY_BIN} missing: apt-get install tinyproxy`);
  mkdirSync(dir, { recursive: true });
  const logFile = join(dir, "tinyproxy.log");
  let child: ChildProcess | null = null;
  let directPort = 0;
  for (let attempt = 0; attempt < 5 && !child; attempt++) {
    directPort = await freePort();
    const cfg = join(dir, "tinyproxy.conf");
    // No ConnectPort line: CONNECT to any port (registries listen on free ports here).
    const lines = [
      `Port ${directPort}`,
      "Listen 127.0.0.1",
      "Timeout 60",
      `LogFile "${logFile}"`,
      "LogLevel Info",
      `PidFile "${join(dir, "tinyproxy.pid")}"`,
      "MaxClients 200",
      "Allow 127.0.0.1",
    ];
    if (auth) lines.push(`BasicAuth ${auth.user} ${auth.pass}`);
    writeFileSync(cfg, `${lines.join("\n")}\n`);
    writeFileSync(logFile, "");
    const [cmd, args] = existsSync(SETPRIV)
      ? [SETPRIV, ["--pdeathsig", "KILL", TINYPROXY_BIN, "-d", "-c", cfg]]
      : [TINYPROXY_BIN, ["-d", "-c", cfg]];
    const c = spawn(cmd, args, { env: { PATH: "/usr/bin:/bin" }, stdio: ["ignore", "ignore", "pipe"] });
    running.add(c);
    let exited = false;
    c.on("exit", () => {
      exited = true;
      running.delete(c);
    });
    for (let i = 0; i < 100 && !exited; i++) {
      if (await listening(directPort)) {
        child = c;
        break;
      }
      await sleep(50);
    }
    if (!child) c.kill("SIGKILL");
  }
  if (!child) throw new Error(`tinyproxy did not start:\n${readFileSync(logFile, "utf8")}`);
  const proc = child;

  // The tap: each client connection relayed to tinyproxy, its bytes kept.
  let kept: Buffer[][] = [];
  let logFrom = 0;
  const sockets = new Set<Socket>();
  const tap: Server = createServer((client) => {
    const upstream = connect({ host: "127.0.0.1", port: directPort });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    const mine: Buffer[] = [];
    kept.push(mine);
    client.on("data", (c: Buffer) => mine.push(Buffer.from(c)));
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => tap.listen(0, "127.0.0.1", resolve));
  const port = (tap.address() as AddressInfo).port;
  const log = () => readFileSync(logFile, "utf8");
  const creds = auth ? `${encodeURIComponent(auth.user)}:${encodeURIComponent(auth.pass)}@` : "";
  return {
    port,
    url: `http://${creds}127.0.0.1:${port}`,
    directPort,
    log,
    requests: () =>
      [
        ...log()
          .slice(logFrom)
          .matchAll(/Request \(file descriptor \d+\): (.*)$/gm),
      ].map((m) => m[1].trim()),
    sent: () => Buffer.concat(kept.flat()).toString("latin1"),
    connections: () => kept.map((c) => Buffer.concat(c).toString("latin1")),
    clear() {
      kept = [];
      logFrom = log().length;
    },
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => tap.close(() => resolve()));
      if (proc.exitCode === null) {
        const exit = new Promise((r) => proc.on("exit", r));
        proc.kill("SIGTERM");
        await exit;
      }
    },
  };
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    s.on("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}
