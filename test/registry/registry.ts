// Debian's docker-registry (the CNCF distribution registry, 2.8) started as the test user on a
// free port of 127.0.0.1, storage in a directory of the test's; plain HTTP, TLS, htpasswd Basic
// auth or token auth. stop() kills it; so does the test process's exit, whatever happens.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { TestCA } from "./certs.ts";
import { freePort, request, sleep } from "./http.ts";
import type { TokenServer } from "./token.ts";

export const REGISTRY_BIN = "/usr/bin/docker-registry";
const SETPRIV = "/usr/bin/setpriv";

export interface RegistryOptions {
  /** Serve HTTPS with the CA's server certificate. */
  tls?: TestCA;
  /** Basic auth against these users (bcrypt htpasswd file). */
  htpasswd?: Record<string, string>;
  /** Token auth through this token server, whose signing certificate is in rootcertbundle. */
  token?: { server: TokenServer; rootcertbundle: string };
}

export interface Registry {
  /** 127.0.0.1:PORT, as written in image references. */
  host: string;
  port: number;
  /** http(s)://127.0.0.1:PORT */
  url: string;
  tls: boolean;
  /** The test CA's PEM when TLS, for the harness's own requests. */
  caPem?: string;
  /** Storage root of the registry's filesystem driver. */
  dataDir: string;
  dir: string;
  log: string;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of running) c.kill("SIGKILL");
});

function config(dir: string, port: number, opts: RegistryOptions): string {
  const lines = [
    "version: 0.1",
    "log:",
    "  level: error",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${join(dir, "data")}`,
    "  delete:",
    "    enabled: true",
    "  maintenance:",
    "    uploadpurging:",
    "      enabled: false",
    "http:",
    `  addr: 127.0.0.1:${port}`,
    "  secret: ch-test-secret",
  ];
  if (opts.tls) lines.push("  tls:", `    certificate: ${opts.tls.serverCert}`, `    key: ${opts.tls.serverKey}`);
  if (opts.htpasswd) {
    const file = join(dir, "htpasswd");
    let text = "";
    for (const [user, pass] of Object.entries(opts.htpasswd))
      text += `${execFileSync("htpasswd", ["-Bbn", user, pass], { encoding: "utf8" }).trim()}\n`;
    writeFileSync(file, text);
    lines.push("auth:", "  htpasswd:", "    realm: ch-test-registry", `    path: ${file}`);
  } else if (opts.token) {
    const t = opts.token.server;
    lines.push(
      "auth:",
      "  token:",
      `    realm: ${t.realm}`,
      `    service: ${t.service}`,
      `    issuer: ${t.issuer}`,
      `    rootcertbundle: ${opts.token.rootcertbundle}`,
    );
  }
  return `${lines.join("\n")}\n`;
}

async function startOnce(dir: string, opts: RegistryOptions): Promise<Registry | null> {
  const port = await freePort();
  const cfg = join(dir, "config.yml");
  writeFileSync(cfg, config(dir, port, opts));
  const log = join(dir, "registry.log");
  writeFileSync(log, "");
  // A clean environment: REGISTRY_* variables would override the configuration.
  // With setpriv --pdeathsig, the registry dies with the test process however that ends.
  const [cmd, args] = existsSync(SETPRIV)
    ? [SETPRIV, ["--pdeathsig", "KILL", REGISTRY_BIN, "serve", cfg]]
    : [REGISTRY_BIN, ["serve", cfg]];
  const child = spawn(cmd, args, {
    env: { PATH: "/usr/bin:/bin", HOME: dir },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const out: Buffer[] = [];
  child.stdout?.on("data", (c: Buffer) => out.push(c));
  child.stderr?.on("data", (c: Buffer) => out.push(c));
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.on("exit", () => {
      exited = true;
      running.delete(child);
      writeFileSync(log, Buffer.concat(out));
      resolve();
    }),
  );
  const scheme = opts.tls ? "https" : "http";
  const url = `${scheme}://127.0.0.1:${port}`;
  for (let i = 0; i < 200 && !exited; i++) {
    try {
      const r = await request(`${url}/v2/`, { ca: opts.tls?.caPem });
      if (r.status === 200 || r.status === 401) {
        return {
          host: `127.0.0.1:${port}`,
          port,
          url,
          tls: !!opts.tls,
          caPem: opts.tls?.caPem,
          dataDir: join(dir, "data"),
          dir,
          log,
          stop: async () => {
            if (!exited) {
              child.kill("SIGTERM");
              const t = setTimeout(() => child.kill("SIGKILL"), 3000);
              await exit;
              clearTimeout(t);
            }
          },
        };
      }
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  if (!exited) child.kill("SIGKILL");
  await exit;
  const text = Buffer.concat(out).toString();
  if (/address already in use/.test(text)) return null; // lost the port race: try another
  throw new Error(`docker-registry did not start on port ${port}:\n${text}`);
}

/** Starts a registry with its files under dir (created). */
export async function startRegistry(dir: string, opts: RegistryOptions = {}): Promise<Registry> {
  if (!existsSync(REGISTRY_BIN)) throw new Error(`${REGISTRY_BIN} missing: apt-get install docker-registry`);
  mkdirSync(dir, { recursive: true });
  for (let i = 0; i < 5; i++) {
    const r = await startOnce(dir, opts);
    if (r) return r;
  }
  throw new Error("docker-registry: no free port after 5 tries");
}

/** The file holding a blob in the registry's storage (to tamper with it). */
export function blobFile(reg: Registry, digest: string): string {
  const hex = digest.replace(/^sha256:/, "");
  return join(reg.dataDir, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
}

/** Flips one byte of a blob in the registry's storage, keeping its size: the registry (which
 * does not check on reading) then serves bytes that don't match the digest. */
export function tamperBlobOnDisk(reg: Registry, digest: string, offset = 0): void {
  const f = blobFile(reg, digest);
  const b = readFileSync(f);
  b[Math.min(offset, b.length - 1)] ^= 0xff;
  writeFileSync(f, b);
}
