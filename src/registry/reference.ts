// Image references, Charliecloud's syntax: [HOST[:PORT]/][PATH/]NAME[:TAG][@sha256:DIGEST].
// The first component is a host when it has a "." or a ":" or is "localhost". The defaults
// (Docker Hub, "library/" for Docker Hub names without a path, tag "latest", port 443) are added
// in full to talk to the registry; in storage an image is named by storageName(), which adds the
// tag and leaves the other defaults out, so that every spelling of one image is one name:
// `busybox`, `busybox:latest` and `docker.io/library/busybox:latest` are all `busybox:latest`
// (directory img/busybox+latest), and `ch-run busybox` finds what `ch-image pull busybox:latest`
// stored.
import { ChError } from "../sys/errors.ts";

export const DOCKER_HUB = "registry-1.docker.io";

export interface ImageRef {
  host: string | null;
  port: number | null;
  /** Path components before the name. */
  path: string[];
  name: string;
  tag: string | null;
  /** Hex SHA-256, without "sha256:". */
  digest: string | null;
}

const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/;
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST = /^sha256:([0-9a-f]{64})$/;

function syntax(ref: string, at: number | null): ChError {
  const where = at === null ? "at end" : `char ${at + 1}`;
  return new ChError(`image ref syntax, ${where}: ${ref} (expected [HOST[:PORT]/][PATH/]NAME[:TAG][@sha256:DIGEST])`);
}

/** Parses a reference; "%" may stand for "/" (storage directory names). */
export function parseRef(text: string): ImageRef {
  const s = text.replaceAll("%", "/");
  if (s === "") throw syntax(text, null);
  let rest = s;
  let digest: string | null = null;
  const at = rest.indexOf("@");
  if (at >= 0) {
    const m = DIGEST.exec(rest.slice(at + 1));
    if (!m) throw syntax(text, at);
    digest = m[1];
    rest = rest.slice(0, at);
  }
  const parts = rest.split("/");
  let host: string | null = null;
  let port: number | null = null;
  let offset = 0;
  if (parts.length > 1 && (parts[0].includes(".") || parts[0].includes(":") || parts[0] === "localhost")) {
    const [h, p, ...extra] = parts[0].split(":");
    if (!HOST.test(h) || extra.length > 0) throw syntax(text, 0);
    if (p !== undefined) {
      if (!/^\d{1,5}$/.test(p) || Number(p) < 1 || Number(p) > 65535) throw syntax(text, h.length + 1);
      port = Number(p);
    }
    host = h;
    offset = parts[0].length + 1;
    parts.shift();
  }
  let last = parts.pop() as string;
  let tag: string | null = null;
  const colon = last.indexOf(":");
  if (colon >= 0) {
    tag = last.slice(colon + 1);
    if (!TAG.test(tag)) throw syntax(text, offset + parts.join("/").length + (parts.length ? 1 : 0) + colon + 1);
    last = last.slice(0, colon);
  }
  for (const c of [...parts, last]) {
    if (c === "") throw syntax(text, offset >= s.length ? null : offset);
    if (!COMPONENT.test(c)) {
      const bad = [...c].findIndex((ch, i) => !/[a-z0-9]/.test(ch) && (i === 0 || !/[._-]/.test(ch)));
      throw syntax(text, offset + Math.max(0, bad));
    }
    offset += c.length + 1;
  }
  return { host, port, path: parts, name: last, tag, digest };
}

/** The reference as written (no defaults added). */
export function refString(r: ImageRef): string {
  let s = "";
  if (r.host !== null) s += r.port !== null ? `${r.host}:${r.port}/` : `${r.host}/`;
  s += [...r.path, r.name].join("/");
  if (r.tag !== null) s += `:${r.tag}`;
  if (r.digest !== null) s += `@sha256:${r.digest}`;
  return s;
}

/** Docker Hub's names, all meaning DOCKER_HUB. */
const DOCKER_HUB_ALIASES = new Set([DOCKER_HUB, "docker.io", "index.docker.io"]);

/** The name of the image of this reference in storage (see the top of this file): host in lower
 * case, without port 443 (unless the host would then read as a path component) and without
 * Docker Hub's own name; no "library/" for Docker Hub; tag "latest" when there is neither tag nor
 * digest. Equivalent references give the same name, and the name parses back to itself. */
export function storageName(r: ImageRef): string {
  let host = r.host === null ? null : r.host.toLowerCase();
  let port = r.port;
  if (host !== null && port === 443 && (host.includes(".") || host === "localhost")) port = null;
  if (host !== null && port === null && DOCKER_HUB_ALIASES.has(host)) host = null;
  const path = host === null && r.path.length === 1 && r.path[0] === "library" ? [] : r.path;
  const tag = r.tag === null && r.digest === null ? "latest" : r.tag;
  return refString({ host, port, path, name: r.name, tag, digest: r.digest });
}

/** The registry of references without a host: Docker Hub, or as Charliecloud's environment
 * says: $CH_REGY_DEFAULT_HOST, $CH_REGY_DEFAULT_PORT (else 443), and $CH_REGY_PATH_PREFIX, path
 * components put before the reference's own. */
export function defaultRegistry(env: Record<string, string | undefined> = process.env): {
  host: string;
  port: number | null;
  prefix: string[];
} {
  const host = env.CH_REGY_DEFAULT_HOST;
  if (host === undefined) return { host: DOCKER_HUB, port: null, prefix: [] };
  if (!HOST.test(host)) throw new ChError(`$CH_REGY_DEFAULT_HOST: not a host name: ${host === "" ? '""' : host}`);
  let port: number | null = null;
  const p = env.CH_REGY_DEFAULT_PORT;
  if (p !== undefined) {
    if (!/^\d{1,5}$/.test(p) || Number(p) < 1 || Number(p) > 65535)
      throw new ChError(`$CH_REGY_DEFAULT_PORT: not a port number: ${p === "" ? '""' : p}`);
    port = Number(p);
  }
  const prefix = (env.CH_REGY_PATH_PREFIX ?? "").split("/").filter((c) => c !== "");
  for (const c of prefix) if (!COMPONENT.test(c)) throw new ChError(`$CH_REGY_PATH_PREFIX: invalid path component: ${c}`);
  return { host: host.toLowerCase(), port, prefix };
}

/** The reference with every default filled in (the registry: see defaultRegistry()). */
export function canonical(r: ImageRef, env: Record<string, string | undefined> = process.env): ImageRef {
  let path = r.path;
  let port = r.port;
  let host: string;
  if (r.host !== null) host = r.host.toLowerCase();
  else {
    const d = defaultRegistry(env);
    host = d.host;
    port = d.port;
    path = [...d.prefix, ...path];
  }
  if (DOCKER_HUB_ALIASES.has(host)) host = DOCKER_HUB;
  if (host === DOCKER_HUB && path.length === 0) path = ["library"];
  const tag = r.tag === null && r.digest === null ? "latest" : r.tag;
  return { host, port: port ?? 443, path, name: r.name, tag, digest: r.digest };
}

/** Repository path on the registry: PATH/NAME. */
export function repository(r: ImageRef): string {
  return [...r.path, r.name].join("/");
}

/** What to ask the registry's manifests endpoint for: the digest if any, else the tag. */
export function version(r: ImageRef): string {
  if (r.digest !== null) return `sha256:${r.digest}`;
  return r.tag ?? "latest";
}

/** Full reference for messages: registry-1.docker.io:443/library/alpine:latest. */
export function fullRef(r: ImageRef): string {
  return refString(canonical(r));
}
