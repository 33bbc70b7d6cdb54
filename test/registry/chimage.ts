// Runs the built ch-image without blocking the event loop (the token server and proxy answer
// from this same process), in an environment the test controls: trust only from SSL_CERT_FILE
// (this machine's NODE_EXTRA_CA_CERTS and friends removed), no HTTP proxies, no stray credentials,
// retries without delay.
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { DIST, type Result } from "../helpers.ts";

export const CH_IMAGE = join(DIST, "ch-image");

const DROP =
  /^(NODE_EXTRA_CA_CERTS|NODE_OPTIONS|SSL_CERT_FILE|SSL_CERT_DIR|CURL_CA_BUNDLE|REQUESTS_CA_BUNDLE|https?_proxy|HTTPS?_PROXY|ALL_PROXY|all_proxy|no_proxy|NO_PROXY|CH_IMAGE_.*)$/;

export interface ChEnvOptions {
  /** Becomes SSL_CERT_FILE. */
  caBundle?: string;
  user?: string;
  pass?: string;
  extra?: Record<string, string>;
}

export function chEnv(opts: ChEnvOptions = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!DROP.test(k) && v !== undefined) env[k] = v;
  env.CH_IMAGE_RETRY_DELAY_MS = "0";
  if (opts.caBundle) env.SSL_CERT_FILE = opts.caBundle;
  if (opts.user !== undefined) env.CH_IMAGE_USERNAME = opts.user;
  if (opts.pass !== undefined) env.CH_IMAGE_PASSWORD = opts.pass;
  return { ...env, ...(opts.extra ?? {}) };
}

export interface Running {
  child: ChildProcess;
  done: Promise<Result>;
}

/** Starts `ch-image ARGS`; done resolves once it has exited and its output is read. With tty, it
 * runs under script(1), so that its stdout and stderr are a terminal (both come back as stdout). */
export function startChImage(args: string[], env: NodeJS.ProcessEnv, opts: { tty?: boolean; timeoutMs?: number } = {}): Running {
  const quote = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;
  const child = opts.tty
    ? spawn("script", ["-qfec", [CH_IMAGE, ...args].map(quote).join(" "), "/dev/null"], {
        env,
        stdio: ["ignore", "pipe", "pipe"],
      })
    : spawn(CH_IMAGE, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on("data", (c: Buffer) => out.push(c));
  child.stderr?.on("data", (c: Buffer) => err.push(c));
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 90_000);
  const done = new Promise<Result>((resolve) =>
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    }),
  );
  return { child, done };
}

export function chImage(
  args: string[],
  env: NodeJS.ProcessEnv,
  opts: { tty?: boolean; timeoutMs?: number } = {},
): Promise<Result> {
  return startChImage(args, env, opts).done;
}
