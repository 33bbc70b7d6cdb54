// ch-image's commands on the build cache (cache.ts): build-cache [--reset] [--gc] [--tree],
// undelete, what delete and list -u need of it. Each takes the storage lock.
import { lstatSync } from "node:fs";
import { basename } from "node:path";
import { info } from "../cli/log.ts";
import { dirToName, imageName, nameToDir, type Storage } from "../image/storage.ts";
import { ChError } from "../sys/errors.ts";
import { type BuildMetadata, installState } from "./build.ts";
import { BuildCache, type StateRecord } from "./cache.ts";

export interface BuildCacheFlags {
  reset: boolean;
  gc: boolean;
  tree: boolean;
}

function size(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes;
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${n.toFixed(1)} ${units[u]}`;
}

/** The lines of --tree: each state under its parent, with the images that hold it. */
export function treeLines(states: StateRecord[], tags: Map<string, string[]>): string[] {
  const children = new Map<string | null, StateRecord[]>();
  const ids = new Set(states.map((s) => s.id));
  for (const s of states) {
    const p = s.parent !== null && ids.has(s.parent) ? s.parent : null;
    const list = children.get(p) ?? [];
    list.push(s);
    children.set(p, list);
  }
  const out: string[] = [];
  const walk = (parent: string | null, depth: number) => {
    const list = (children.get(parent) ?? []).sort((a, b) =>
      a.created < b.created ? -1 : a.created > b.created ? 1 : a.id < b.id ? -1 : 1,
    );
    for (const s of list) {
      const names = tags.get(s.id) ?? [];
      const layer = s.layer ? ` [${s.flat ? "flat " : ""}${s.entries} entries, ${size(s.bytes)}]` : "";
      const text = s.text.length > 60 ? `${s.text.slice(0, 57)}...` : s.text;
      out.push(
        `${"  ".repeat(depth)}* ${s.id.slice(0, 12)} ${text.replace(/\n/g, " ")}${layer}${names.length ? ` <- ${names.join(", ")}` : ""}`,
      );
      walk(s.id, depth + 1);
    }
  };
  walk(null, 0);
  return out;
}

/** ch-image build-cache: counts and sizes; --reset empties it, --gc removes what no image
 * needs, --tree shows the states. */
export function buildCacheCommand(storage: Storage, f: BuildCacheFlags): void {
  const cache = new BuildCache(storage.root);
  // exists() first, even only to list: it refuses a storage directory another user could write.
  if (storage.exists() && (f.reset || f.gc)) storage.lock();
  if (f.reset) {
    cache.reset();
    info(`build cache emptied: ${cache.dir}`);
  }
  if (f.gc) {
    const g = cache.gc();
    info(`build cache garbage collected: ${g.states} state(s), ${g.layers} layer(s) removed`);
  }
  const states = cache.states();
  const layers = new Set(cache.layers());
  const bytes = states.filter((s) => s.layer && layers.has(s.id)).reduce((n, s) => n + s.bytes, 0);
  const tags = new Map<string, string[]>();
  for (const kind of ["tags", "deleted"] as const)
    for (const d of cache.tagDirs(kind)) {
      const t = cache.tag(d, kind);
      if (!t) continue;
      const list = tags.get(t.state) ?? [];
      list.push(kind === "tags" ? dirToName(d) : `${dirToName(d)} (deleted)`);
      tags.set(t.state, list);
    }
  const out = [
    `states:           ${states.length}`,
    `layers:           ${layers.size} (${size(bytes)})`,
    `images recorded:  ${cache.tagDirs().length} (undeletable: ${cache.tagDirs("deleted").length})`,
    `cache directory:  ${cache.dir}`,
  ];
  if (f.tree) out.push(...treeLines(states, tags));
  process.stdout.write(`${out.join("\n")}\n`);
}

/** After `delete`: the images gone keep their record as the last deleted of their name. */
export function recordDeleted(storage: Storage, before: string[]): void {
  const cache = new BuildCache(storage.root);
  const now = new Set(storage.list());
  for (const name of before) {
    if (now.has(name)) continue;
    const dir = nameToDir(name);
    const t = cache.tag(dir);
    if (!t) continue;
    cache.setTag(dir, t, "deleted");
    cache.setTag(dir, null);
  }
}

/** Names of deleted images the build cache can restore. */
export function undeletable(storage: Storage): string[] {
  return new BuildCache(storage.root).tagDirs("deleted").map(dirToName);
}

/** ch-image undelete IMAGE: the last deleted image of that name, from the build cache. */
export async function undelete(storage: Storage, text: string): Promise<void> {
  const name = imageName(text);
  const cache = new BuildCache(storage.root);
  const dir = nameToDir(name);
  if (storage.has(name)) throw new ChError(`image still exists, not undeleting: ${name}`);
  const t = cache.tag(dir, "deleted");
  const r = t ? cache.get(t.state) : null;
  if (!r) throw new ChError(`no deleted image to undelete in the build cache: ${name}`);
  storage.init();
  storage.lock();
  const target = storage.imagePath(name);
  if (basename(target) !== dir) throw new ChError(`image name is stored differently: ${name}`);
  await installState(target, cache, r.chain, r.config as unknown as BuildMetadata);
  const st = lstatSync(target);
  cache.setTag(dir, { state: r.id, dev: st.dev, ino: st.ino, time: new Date().toISOString() });
  cache.setTag(dir, null, "deleted");
  info(`undeleted: ${name}`);
}
