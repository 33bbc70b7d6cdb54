// Looking at what a pull left behind: trees, and whether any file holds a secret.
import { lstatSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** Every path under dir, relative, sorted; directories end with "/", symlinks with "@". */
export function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of readdirSync(join(dir, rel))) {
      const r = rel ? `${rel}/${e}` : e;
      const st = lstatSync(join(dir, r));
      if (st.isDirectory()) {
        out.push(`${r}/`);
        walk(r);
      } else out.push(st.isSymbolicLink() ? `${r}@` : r);
    }
  };
  walk("");
  return out.sort();
}

/** Files under dir (recursively, symlinks not followed) that contain any of needles, as
 * "FILE: NEEDLE". Unreadable files are reported too. */
export function filesContaining(dir: string, needles: string[]): string[] {
  const hits: string[] = [];
  const bufs = needles.map((n) => Buffer.from(n));
  const walk = (p: string) => {
    const st = lstatSync(p);
    if (st.isDirectory()) {
      for (const e of readdirSync(p)) walk(join(p, e));
      return;
    }
    for (let i = 0; i < needles.length; i++) if (p.includes(needles[i])) hits.push(`${p}: name contains ${needles[i]}`);
    if (!st.isFile()) return;
    let data: Buffer;
    try {
      data = readFileSync(p);
    } catch {
      hits.push(`${p}: unreadable`);
      return;
    }
    for (let i = 0; i < bufs.length; i++) if (data.includes(bufs[i])) hits.push(`${p}: ${needles[i]}`);
  };
  walk(dir);
  return hits;
}
