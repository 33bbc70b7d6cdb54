// --force-cmd: under root emulation (--force=seccomp), arguments added to the commands whose
// own checks defeat it. The default list, replaced (not extended) by --force-cmd as
// Charliecloud's: apt and apt-get drop privileges to the user _apt for downloads, which the
// faked setuid(2) does not do, so they are told to stay root.
import type { ForceCmd } from "./cli.ts";

export const DEFAULT_FORCE_CMDS: ForceCmd[] = [
  { cmd: "apt", args: ["-o", "APT::Sandbox::User=root"] },
  { cmd: "apt-get", args: ["-o", "APT::Sandbox::User=root"] },
];

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'"'"'`)}'`;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The RUN command with the ARGs of each matching CMD added after it. Exec form: argv[0] is
 * CMD (or a path ending in /CMD). Shell form (`shell` is the image's shell, argv its words then
 * the script): CMD where a simple command starts (the script's start, or after ; & | ( or a
 * newline, past any VAR=value assignments), as a word of its own. */
export function forceCommand(argv: string[], shellForm: boolean, cmds: ForceCmd[]): string[] {
  if (!shellForm) {
    const base = argv[0]?.split("/").pop();
    const hit = cmds.find((c) => c.cmd === base);
    return hit ? [argv[0], ...hit.args, ...argv.slice(1)] : argv;
  }
  let script = argv[argv.length - 1];
  for (const c of cmds) {
    const re = new RegExp(
      `(^|[;&|(\\n])(\\s*(?:[A-Za-z_][A-Za-z0-9_]*=\\S*\\s+)*)((?:[^\\s;&|()]*/)?${escapeRegExp(c.cmd)})(?=[\\s;&|)]|$)`,
      "g",
    );
    script = script.replace(re, (_m, pre: string, assigns: string, cmd: string) =>
      [`${pre}${assigns}${cmd}`, ...c.args.map(shellQuote)].join(" "),
    );
  }
  return [...argv.slice(0, -1), script];
}
