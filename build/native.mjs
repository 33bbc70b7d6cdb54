// Builds the freestanding native parts (launcher, waiter, join holder, launcher executable) from src/sys/native/*.c and writes
// src/sys/native/blobs.ts, and ch-run's descriptor helper (keepfd.c) into keepfd-blob.ts. The generated file is committed, so building the binary needs no C
// compiler; `node build/native.mjs --check` verifies that it matches the sources.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const src = join(root, "src/sys/native");
const out = join(src, "blobs.ts");
const check = process.argv.includes("--check");

const arches = [
  { name: "x64", prefix: "", uname: "x86_64" },
  { name: "arm64", prefix: "aarch64-linux-gnu-", uname: "aarch64" },
];
const cflags = [
  "-Os",
  "-fPIC",
  "-nostdlib",
  "-ffreestanding",
  "-fno-stack-protector",
  "-fno-builtin",
  "-fno-asynchronous-unwind-tables",
  "-fno-unwind-tables",
  "-fno-jump-tables",
  "-fcf-protection=none",
  "-Wall",
  "-Wextra",
  "-Werror",
];

function have(cmd) {
  try {
    execFileSync(cmd, ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

function compiler(arch) {
  // The host compiler builds the host's architecture; a cross compiler the other.
  const hostArch = process.arch === "x64" ? "x64" : "arm64";
  return arch.name === hostArch ? "" : arch.prefix;
}

const sha = (b) => createHash("sha256").update(b).digest("hex");
const sourceHash = sha(
  Buffer.concat(
    ["syscall.h", "prog.h", "supervise.h", "launcher.c", "waiter.c", "holder.c", "exec.c", "errno.txt"].map((f) =>
      readFileSync(join(src, f)),
    ),
  ),
);
// The descriptor helper (keepfd.c, a Node-API module) goes to its own generated file.
const keepfdOut = join(src, "keepfd-blob.ts");
const keepfdHash = sha(Buffer.concat(["syscall.h", "keepfd.c"].map((f) => readFileSync(join(src, f)))));
const CROSS_PACKAGES = "gcc libc6-dev gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu";

// --check without the compilers (a user who changed no C source needs none): the sources must be
// the ones blobs.ts was generated from. With the compilers (CI installs them), every blob is
// rebuilt and compared byte for byte.
if (check && !arches.every((a) => have(`${compiler(a)}gcc`))) {
  const committed = /^\/\/ Source hash: ([0-9a-f]{64})$/m.exec(readFileSync(out, "utf8"))?.[1];
  if (committed !== sourceHash) {
    console.error(
      `native: src/sys/native/*.c changed since blobs.ts was generated; rebuilding it needs C compilers for both architectures: sudo apt-get install -y ${CROSS_PACKAGES}, then node build/native.mjs`,
    );
    process.exit(1);
  }
  const keepfdCommitted = /^\/\/ Source hash: ([0-9a-f]{64})$/m.exec(readFileSync(keepfdOut, "utf8"))?.[1];
  if (keepfdCommitted !== keepfdHash) {
    console.error(
      `native: src/sys/native/keepfd.c changed since keepfd-blob.ts was generated; rebuilding it needs C compilers for both architectures: sudo apt-get install -y ${CROSS_PACKAGES}, then node build/native.mjs`,
    );
    process.exit(1);
  }
  console.log("native: sources unchanged since blobs.ts was generated (no cross compiler here to rebuild and compare them)");
  process.exit(0);
}

const tmp = mkdtempSync(join(tmpdir(), "ch-native-"));
const blobs = {};
const keepfds = {};
// strerror(3) texts for the launcher executable (exec.c), which has no libc: errno.txt, made
// once from glibc ("N text" a line).
const errtext = readFileSync(join(src, "errno.txt"), "utf8")
  .trim()
  .split("\n")
  .map((l) => /^(\d+) (.*)$/.exec(l));
const texts = [];
for (const [, n, t] of errtext) texts[Number(n)] = t;
writeFileSync(
  join(tmp, "errtext.h"),
  `static const char *const ERRTEXT[] = {${Array.from(texts, (t) => JSON.stringify(t ?? "Unknown error")).join(",")}};\n#define ERRTEXT_N ${texts.length}\n`,
);
try {
  for (const arch of arches) {
    const p = compiler(arch);
    if (!have(`${p}gcc`)) {
      console.error(`native: ${p}gcc not found; cannot build ${arch.name}: sudo apt-get install -y ${CROSS_PACKAGES}`);
      process.exit(1);
    }
    const cf = arch.name === "x64" ? cflags : cflags.filter((f) => f !== "-fcf-protection=none");
    // Launcher: position-independent code only, one .text section, no data.
    const lo = join(tmp, `launcher-${arch.name}.o`);
    execFileSync(`${p}gcc`, [...cf, "-c", join(src, "launcher.c"), "-o", lo]);
    const sections = execFileSync(`${p}objdump`, ["-h", lo], { encoding: "utf8" });
    for (const m of sections.matchAll(/^\s*\d+\s+(\S+)\s+([0-9a-f]+)/gm)) {
      const [, name, size] = m;
      if (name !== ".text" && !name.startsWith(".note") && !name.startsWith(".comment") && Number.parseInt(size, 16) > 0)
        throw new Error(`launcher (${arch.name}) has a non-empty section ${name}: it must be pure code`);
    }
    const relocs = execFileSync(`${p}objdump`, ["-r", lo], { encoding: "utf8" });
    if (/R_/.test(relocs)) throw new Error(`launcher (${arch.name}) needs relocations:\n${relocs}`);
    const lb = join(tmp, `launcher-${arch.name}.bin`);
    execFileSync(`${p}objcopy`, ["-O", "binary", "-j", ".text", lo, lb]);
    const symbols = execFileSync(`${p}nm`, [lo], { encoding: "utf8" });
    const entry = /^([0-9a-f]+) T launch$/m.exec(symbols);
    const fwd = /^([0-9a-f]+) T forward_to_main$/m.exec(symbols);
    if (!entry || !fwd) throw new Error("launcher: no symbol 'launch' or 'forward_to_main'");
    // Waiter and join holder: static freestanding executables.
    const executable = (name, extra = []) => {
      const out = join(tmp, `${name}-${arch.name}`);
      execFileSync(`${p}gcc`, [
        ...cf.filter((f) => f !== "-fPIC"),
        "-static",
        "-s",
        "-Wl,--build-id=none",
        "-Wl,-z,noexecstack",
        ...extra,
        "-I",
        tmp,
        join(src, `${name}.c`),
        "-o",
        out,
      ]);
      return readFileSync(out);
    };
    blobs[arch.name] = {
      launcher: readFileSync(lb),
      launcherEntry: Number.parseInt(entry[1], 16),
      forwardEntry: Number.parseInt(fwd[1], 16),
      waiter: executable("waiter"),
      holder: executable("holder"),
      exec: executable("exec", ["-Wl,-z,noseparate-code", "-Wl,-z,max-page-size=4096"]),
    };
    // The descriptor helper: a shared object whose only undefined symbols are Node-API's.
    const kf = join(tmp, `keepfd-${arch.name}.node`);
    execFileSync(`${p}gcc`, [
      ...cf,
      "-shared",
      "-s",
      "-Wl,--build-id=none",
      "-Wl,-z,noexecstack",
      "-Wl,-z,noseparate-code",
      "-Wl,-z,max-page-size=4096",
      "-Wl,--hash-style=gnu",
      join(src, "keepfd.c"),
      "-o",
      kf,
    ]);
    keepfds[arch.name] = readFileSync(kf);
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

let text = `// Generated by build/native.mjs from launcher.c, waiter.c, holder.c and exec.c: do not edit.\n`;
text += `// Source hash: ${sourceHash}\n\n`;
text += `export interface NativeBlobs {\n  launcher: string;\n  launcherEntry: number;\n  forwardEntry: number;\n  waiter: string;\n  holder: string;\n  exec: string;\n  /** SHA-256 of exec, verified before ch-run runs it from a file. */\n  execSha256: string;\n}\n\n`;
text += `export const blobs: Record<"x64" | "arm64", NativeBlobs> = {\n`;
for (const [name, b] of Object.entries(blobs)) {
  text += `  ${name}: {\n`;
  text += `    // ${b.launcher.length} bytes of code\n    launcher:\n      "${b.launcher.toString("base64")}",\n`;
  text += `    launcherEntry: ${b.launcherEntry},\n`;
  text += `    forwardEntry: ${b.forwardEntry},\n`;
  text += `    execSha256: "${sha(b.exec)}",\n`;
  for (const name of ["waiter", "holder", "exec"]) {
    text += `    // ${b[name].length}-byte static ELF\n    ${name}:\n`;
    const lines = b[name].toString("base64").match(/.{1,96}/g) ?? [];
    text += lines.map((l, i) => `      "${l}"${i < lines.length - 1 ? " +" : ","}`).join("\n");
    text += "\n";
  }
  text += `  },\n`;
}
text += `};\n`;

let keepfdText = `// Generated by build/native.mjs from keepfd.c: do not edit.\n// Source hash: ${keepfdHash}\n\n`;
keepfdText += `/** ch-run's descriptor helper (a Node-API module) by arch, and its SHA-256. */\n`;
keepfdText += `export const keepfdBlobs: Record<"x64" | "arm64", { sha256: string; module: string }> = {\n`;
for (const [name, b] of Object.entries(keepfds)) {
  const lines = b.toString("base64").match(/.{1,96}/g) ?? [];
  keepfdText += `  ${name}: {\n    sha256: "${sha(b)}",\n    // ${b.length}-byte shared object\n    module:\n`;
  keepfdText += lines.map((l, i) => `      "${l}"${i < lines.length - 1 ? " +" : ","}`).join("\n");
  keepfdText += "\n  },\n";
}
keepfdText += "};\n";

if (check) {
  let old = "";
  try {
    old = readFileSync(out, "utf8");
  } catch {}
  if (old !== text) {
    console.error("native: src/sys/native/blobs.ts is out of date; run: node build/native.mjs");
    process.exit(1);
  }
  let oldKeepfd = "";
  try {
    oldKeepfd = readFileSync(keepfdOut, "utf8");
  } catch {}
  if (oldKeepfd !== keepfdText) {
    console.error("native: src/sys/native/keepfd-blob.ts is out of date; run: node build/native.mjs");
    process.exit(1);
  }
  console.log("native: blobs up to date");
} else {
  writeFileSync(out, text);
  writeFileSync(keepfdOut, keepfdText);
  for (const [name, b] of Object.entries(blobs))
    console.log(
      `native: ${name}: launcher ${b.launcher.length} B, waiter ${b.waiter.length} B, holder ${b.holder.length} B, exec ${b.exec.length} B, keepfd ${keepfds[name].length} B`,
    );
}
