// The planner's bind-mount steps, in Charliecloud's order and with its messages: the host's
// /dev, /proc and /sys (required), host files when the image has them (optional), the host's
// $TMPDIR (or /tmp) at /tmp, $HOME at /home/$USER with --home, then the user's --bind. A
// destination the image lacks is an error, or made with mkdir -p where the container is
// writable; a type mismatch (a directory where a file goes) fails at mount(2) with ENOTDIR,
// as in Charliecloud: "can't bind SRC to DST: Not a directory".
import { posix } from "node:path";
import { ChError } from "../sys/errors.ts";
import { type ContainerView, type Mounted, missingDirs, type Resolved } from "./binds.ts";
import type { HostFs } from "./hostfs.ts";
import type { Op } from "./plan.ts";

const EROFS = 30;
const ENOENT = 2;

/** Host files bound into the container when both sides have them. */
export const OPTIONAL_FILES = [
  "/etc/hosts",
  "/etc/machine-id",
  "/etc/resolv.conf",
  "/var/lib/hugetlbfs",
  "/etc/opt/cray/wlm_detect",
  "/opt/cray/wlm_detect",
  "/opt/cray/alps",
  "/opt/cray/udreg",
  "/opt/cray/ugni",
  "/opt/cray/xpmem",
  "/var/opt/cray/alps",
  "/var/spool/slurmd",
];

export class Mounts {
  readonly ops: Op[];
  readonly view: ContainerView;
  readonly fs: HostFs;
  /** The container's root as the host sees it while planning (the image, or -W's overlay). */
  newroot: string;
  /** Whether the image can take new directories (-w, -W). */
  writable = false;

  constructor(ops: Op[], view: ContainerView, fs: HostFs, newroot: string) {
    this.ops = ops;
    this.view = view;
    this.fs = fs;
    this.newroot = newroot;
  }

  /** A container path as the host sees it now. */
  at(p: string): string {
    return posix.join(this.newroot, p);
  }

  mounted(m: Mounted): void {
    this.view.mounts.push(m);
  }

  /** Resolves a destination that must exist. */
  required(p: string): Resolved {
    const r = this.view.resolve(p);
    if (r.type === null) throw new ChError(`can't bind: destination not found: ${this.at(p)}`);
    return r;
  }

  bindHost(src: string, dst: string): void {
    this.ops.push({ op: "bind", src, dst: this.at(dst), what: `can't bind ${src} to ${this.at(dst)}` });
    this.mounted({ dst, src });
  }

  mkdirs(dirs: string[]): void {
    for (const d of dirs) {
      this.view.created.add(d);
      this.ops.push({ op: "mkdir", path: this.at(d), what: `can't mkdir: ${this.at(d)}` });
    }
  }

  /** /dev, /proc, /sys, then the optional host files the image has too. */
  defaults(): void {
    for (const d of ["/dev", "/proc", "/sys"]) this.bindHost(d, this.required(d).path);
    for (const f of OPTIONAL_FILES) {
      if (!this.fs.stat(f)) continue; // a host symlink is followed, as mount(2) does
      const r = this.view.resolve(f);
      if (r.type === null || r.type === "link") continue;
      this.bindHost(f, r.path);
    }
  }

  /** /tmp: a private tmpfs (-t), or the host's $TMPDIR, else its /tmp. */
  tmp(privateTmp: boolean, hostTmp: string): void {
    if (privateTmp) {
      const dst = this.view.resolve("/tmp").path;
      this.ops.push({ op: "tmpfs", dst: this.at(dst), options: "mode=1777", what: `can't mount tmpfs at ${this.at(dst)}` });
      this.mounted({ dst, src: null, type: "dir" });
      return;
    }
    if (!this.fs.stat(hostTmp)) throw new ChError(`can't bind: source not found: ${hostTmp}`, { errno: ENOENT });
    this.bindHost(hostTmp, this.required("/tmp").path);
  }

  /** A bind whose destination is made if missing and the container can take it: the user's
   * --bind and --home's. `src` is absolute; `shown` is how the user gave it. */
  bindMakingDst(src: string, shown: string, dst: string): void {
    if (!this.fs.stat(src)) throw new ChError(`can't bind: source not found: ${shown}`, { errno: ENOENT });
    const r = this.view.resolve(dst);
    if (r.type === null) {
      const missing = r.missing ?? r.path;
      // Inside a bind of a host directory: never made (it would be made on the host).
      if (r.under && r.under.src !== null)
        throw new ChError(`can't mkdir: ${this.at(missing)} under existing bind-mount ${this.at(r.under.dst)}`);
      // In the image: only if it is writable (in a tmpfs of ours, always).
      if (!r.under && !this.writable) throw new ChError(`can't mkdir: ${this.at(missing)}`, { errno: EROFS });
      this.mkdirs(missingDirs(r));
    }
    this.bindHost(src, r.path);
  }
}
