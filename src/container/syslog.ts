// ch-run logs its command line to syslog first thing, as Charliecloud's does (sites audit with
// it): facility user, level info, tag the program's name, "uid=UID args=N: ARGV", each argument
// as Charliecloud serializes it. Built with `node build/build.mjs --disable-syslog` (as
// Charliecloud's `configure --disable-syslog`), it logs nothing.
//
// Test hook: $CH_TEST_SYSLOG_SOCKET names the socket instead of /dev/log, so that a test can
// read what is logged. It is no way around the log for a user, who can always run a copy built
// without it.

declare const __CH_SYSLOG__: boolean | undefined;

/** Whether this build logs to syslog. */
export const SYSLOG_ENABLED = typeof __CH_SYSLOG__ === "undefined" || __CH_SYSLOG__;

export const SYSLOG_SOCKET = "/dev/log";
const LOG_USER_INFO = (1 << 3) | 6;

/** One argument as Charliecloud logs it: as is if it has only printable ASCII that neither the
 * shell nor double quotes treat specially; else in double quotes, with \ before ! " $ \ and `.
 * Other characters are copied as they are (UTF-8 stays UTF-8). */
export function argToString(arg: string): string {
  let quote = false;
  let out = "";
  for (const ch of arg) {
    const code = ch.charCodeAt(0);
    if (code <= 32 || code >= 127) quote = true;
    if ('!"$\\`'.includes(ch)) {
      out += "\\";
      quote = true;
    } else if ("#%&'()*;<=>?[]^{|}~".includes(ch)) quote = true;
    out += ch;
  }
  return quote ? `"${out}"` : out;
}

export function argvToString(argv: string[]): string {
  return argv.map(argToString).join(" ");
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** The message syslog(3) sends: "<PRI>Mmm dd hh:mm:ss TAG: MESSAGE" (local time, day padded
 * with a space, no PID). */
export function syslogMessage(tag: string, uid: number, argv: string[], now = new Date()): string {
  const two = (n: number) => String(n).padStart(2, "0");
  const stamp = `${MONTHS[now.getMonth()]} ${String(now.getDate()).padStart(2, " ")} ${two(now.getHours())}:${two(now.getMinutes())}:${two(now.getSeconds())}`;
  return `<${LOG_USER_INFO}>${stamp} ${tag}: uid=${uid} args=${argv.length}: ${argvToString(argv)}`;
}

/** Where to send it: /dev/log, or the test hook's socket. */
export function syslogSocket(env: Record<string, string | undefined>): string {
  return env.CH_TEST_SYSLOG_SOCKET || SYSLOG_SOCKET;
}
