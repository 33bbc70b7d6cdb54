// A minimal busybox image for the benchmarks (Debian's busybox-static), in a new temporary
// directory; returns [image, directory to remove].
import { copyFileSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export function benchImage(applets) {
  const dir = mkdtempSync(join(tmpdir(), "ch-bench-"));
  const img = join(dir, "img");
  for (const d of ["bin", "dev", "proc", "sys", "tmp", "etc", "root", "home"]) mkdirSync(join(img, d), { recursive: true });
  copyFileSync("/bin/busybox", join(img, "bin/busybox"));
  for (const a of applets) symlinkSync("busybox", join(img, "bin", a));
  writeFileSync(join(img, "etc/passwd"), "root:x:0:0::/root:/bin/sh\n");
  writeFileSync(join(img, "etc/group"), "root:x:0:\n");
  return [img, dir];
}
