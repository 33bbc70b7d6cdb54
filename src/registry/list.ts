// ch-image list REF: what is known of an image locally and in its registry (the architectures
// it is available for, with their manifest digests).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ChError } from "../sys/errors.ts";
import { Registry, readBody, retrying, StatusError, Transport } from "./http.ts";
import { archCandidates, imageEntries, platformArch } from "./manifest.ts";
import type { ClientOptions } from "./pull.ts";
import { getManifest } from "./pull.ts";
import { fullRef, type ImageRef, refString, version } from "./reference.ts";

function row(label: string, value: string): string {
  return `${`${label}:`.padEnd(21)}${value}\n`;
}

/** The architecture of a local image, from its ch/metadata.json. */
export function localArch(dir: string): string | null {
  try {
    const j = JSON.parse(readFileSync(join(dir, "ch", "metadata.json"), "utf8")) as { arch?: unknown };
    return typeof j.arch === "string" ? j.arch : null;
  } catch {
    return null;
  }
}

/** The report, as lines; local is the image's directory if it is in storage. */
export async function describeImage(ref: ImageRef, local: string | null, opts: ClientOptions, hostArch: string): Promise<string> {
  let out = row("details of image", refString(ref));
  out += row("in local storage", local ? `yes${localArch(local) ? ` (${localArch(local)})` : ""}` : "no");
  out += row("full remote ref", fullRef(ref));
  const transport = new Transport({ tlsVerify: opts.tlsVerify });
  const reg = new Registry(ref, transport, { tlsVerify: opts.tlsVerify, auth: opts.auth, push: false });
  try {
    let top: Awaited<ReturnType<typeof getManifest>>;
    try {
      top = await getManifest(reg, version(ref));
    } catch (e) {
      if (e instanceof StatusError && [401, 403, 404].includes(e.status)) {
        out += row("available remotely", `no (HTTP ${e.status})`);
        return out;
      }
      // The local image is worth showing even when the registry can't be reached.
      if (local && e instanceof ChError) {
        out += row("available remotely", `unknown: ${e.message}`);
        return out;
      }
      throw e;
    }
    out += row("available remotely", "yes");
    if (top.parsed.kind === "index") {
      out += row("remote arch-aware", "yes");
      out += row("host architecture", hostArch);
      const entries = imageEntries(top.parsed.manifests)
        .map((d) => [platformArch(d.platform), d.digest] as const)
        .sort((a, b) => a[0].localeCompare(b[0]));
      entries.forEach(([arch, digest], i) => {
        const text = `${arch.padEnd(10)}${digest.replace(/^sha256:/, "").slice(0, 11)}`;
        out += i === 0 ? row("archs available", text) : `${" ".repeat(21)}${text}\n`;
      });
      const ok = entries.some(([a]) => archCandidates(hostArch).includes(a));
      if (!ok) out += row("note", `no image for the host's architecture ${hostArch}`);
    } else {
      out += row("remote arch-aware", "no");
      out += row("host architecture", hostArch);
      // The architecture is in the config.
      const cfg = top.parsed.config;
      const arch = await retrying(
        "config",
        async () => {
          const res = await reg.request("GET", `blobs/${cfg.digest}`, { what: `blob ${cfg.digest}` });
          const j = JSON.parse((await readBody(res, 16 << 20)).toString("utf8")) as { architecture?: string; variant?: string };
          return j.architecture ? (j.variant ? `${j.architecture}/${j.variant}` : j.architecture) : "unknown";
        },
        reg.signal,
      );
      out += row("archs available", `${arch.padEnd(10)}${(top.digest ?? "").replace(/^sha256:/, "").slice(0, 11)}`);
    }
    return out;
  } finally {
    transport.close();
  }
}
