// Registry credentials, as Charliecloud: $CH_IMAGE_USERNAME and $CH_IMAGE_PASSWORD, else (when
// authentication is wanted and standard input is a terminal) a prompt, the password unechoed.
// Kept in memory for the life of the process only; never printed or written.
import { ChError } from "../sys/errors.ts";

export interface UserPass {
  username: string;
  password: string;
}

export interface Credentials {
  /** The credentials, or null when there are none to be had. */
  get(): Promise<UserPass | null>;
}

/** Reads one line from the terminal in raw mode; the characters are echoed only if echo. */
function promptLine(question: string, echo: boolean): Promise<string> {
  const stdin = process.stdin;
  const out = process.stderr;
  out.write(question);
  stdin.setRawMode(true);
  stdin.resume();
  return new Promise((resolve, reject) => {
    let buf = "";
    const finish = () => {
      stdin.off("data", onData);
      stdin.setRawMode(false);
      stdin.pause();
      out.write("\n");
    };
    const onData = (d: Buffer) => {
      for (const ch of d.toString("utf8")) {
        if (ch === "\r" || ch === "\n") {
          finish();
          resolve(buf);
          return;
        }
        if (ch === "\u0003" || (ch === "\u0004" && buf === "")) {
          finish();
          reject(new ChError("authentication cancelled"));
          return;
        }
        if (ch === "\u007f" || ch === "\b") {
          if (buf.length > 0) {
            buf = [...buf].slice(0, -1).join("");
            if (echo) out.write("\b \b");
          }
          continue;
        }
        if (ch < " ") continue;
        buf += ch;
        if (echo) out.write(ch);
      }
    };
    stdin.on("data", onData);
  });
}

/** Credentials from env, else prompted for if `prompt` and stdin and stderr are terminals. */
export function credentialsFrom(env: Record<string, string | undefined>, prompt: boolean): Credentials {
  let remembered: UserPass | null = null;
  return {
    async get() {
      if (remembered) return remembered;
      const username = env.CH_IMAGE_USERNAME;
      const password = env.CH_IMAGE_PASSWORD;
      if (username !== undefined && password !== undefined) {
        remembered = { username, password };
        return remembered;
      }
      if (!prompt || !process.stdin.isTTY || !process.stderr.isTTY) return null;
      const u = await promptLine("Username: ", true);
      const p = await promptLine("Password: ", false);
      remembered = { username: u, password: p };
      return remembered;
    },
  };
}
