// The Dockerfile language, parsed by the rules of Docker's own parser (BuildKit's dockerfile
// frontend), corner cases included: parser directives (`# escape=`, `# syntax=`, `# check=`) only
// at the top; comments; line continuation with the escape character, also at the end of the file,
// over comment lines and (with a warning) empty lines; JSON (exec) form, falling back to shell
// form when the text isn't a JSON array; heredocs (RUN, COPY, ADD); instruction flags
// (--name=value, checked per instruction); ENV's legacy `ENV name value` form; case-insensitive
// keywords. Everything that Docker reports before building is reported here, as FILE:LINE.
// No variable is substituted here: that happens per instruction as it is built (shell.ts,
// stages.ts).
import { ChError } from "../sys/errors.ts";
import { expandWords, isSpace, SubstitutionError } from "./shell.ts";

export type FlagValue = string | boolean | string[];

export interface Heredoc {
  /** The delimiter word, quotes removed. */
  name: string;
  /** File descriptor written before << (0 when none). */
  fd: number;
  /** Whether variables in the content are substituted (delimiter not quoted). */
  expand: boolean;
  /** <<- : leading tabs removed from the content's lines and from the delimiter line. */
  chomp: boolean;
  /** The lines between the instruction and the delimiter, newlines included. */
  content: string;
}

/** ONBUILD's instruction, kept for the image metadata; Docker checks it only when it runs. */
export interface Trigger {
  keyword: string;
  flags: string[];
  args: string[];
  json: boolean;
}

export interface Instruction {
  file: string;
  /** First and last line in the file (heredoc bodies included). */
  line: number;
  endLine: number;
  /** Lower case. */
  keyword: string;
  /** The instruction with its continuation lines joined, as Docker keeps it. */
  text: string;
  flags: Record<string, FlagValue>;
  /** Arguments as Docker's parser splits them (quotes still in; ENV and LABEL as alternating
   * names and values). */
  args: string[];
  /** ENV, LABEL, ARG: the names and values (an ARG without a default has null). */
  kv: [string, string | null][] | null;
  /** Exec form: the arguments were a JSON array. */
  json: boolean;
  heredocs: Heredoc[];
  trigger: Trigger | null;
  /** The file's escape character. */
  escape: string;
}

export interface Dockerfile {
  file: string;
  /** The escape character: "\\" or "`". */
  escape: string;
  instructions: Instruction[];
  warnings: string[];
}

/** A Dockerfile error: FILE:LINE: message. */
export function syntaxError(file: string, line: number, message: string): ChError {
  return new ChError(`${file}:${line}: ${message}`);
}

class LineError extends Error {}

// ---- Lines ----

/** Docker's reWhitespace: the separator of words in FROM, EXPOSE, COPY... (no newline). */
const WS = /[\t\v\f\r ]+/;

function trimLeft(s: string): string {
  let i = 0;
  while (i < s.length && isSpace(s[i])) i++;
  return s.slice(i);
}

function trimSpace(s: string): string {
  let j = s.length;
  while (j > 0 && isSpace(s[j - 1])) j--;
  return trimLeft(s.slice(0, j));
}

const trimNewline = (s: string) => s.replace(/[\r\n]+$/, "");
const isComment = (s: string) => trimLeft(s).startsWith("#");

/** Splits at the first run of white space: [before, after] or [s]. */
function splitOnce(s: string): string[] {
  const m = WS.exec(s);
  return m ? [s.slice(0, m.index), s.slice(m.index + m[0].length)] : [s];
}

/** Lines with their newline, as Go's scanner with Docker's split function gives them. */
function splitLines(text: string): string[] {
  const lines = text.split(/(?<=\n)/);
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

// ---- Parser directives ----

const DIRECTIVES = new Set(["syntax", "escape", "check"]);
const DIRECTIVE = /^([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*$/;

class Directives {
  escape = "\\";
  private done = false;
  private readonly seen = new Set<string>();
  /** Line continuation: an escape character at the end, not itself escaped. */
  continuation = /([^\\])\\[ \t]*$|^\\[ \t]*$/;

  /** Whether the (left-trimmed) line is a parser directive; applies it. */
  check(line: string): boolean {
    if (this.done) return false;
    const m = line.startsWith("#") ? DIRECTIVE.exec(trimLeft(line.slice(1))) : null;
    const key = m?.[1].toLowerCase();
    if (!m || !key || !DIRECTIVES.has(key)) {
      this.done = true;
      return false;
    }
    if (this.seen.has(key)) throw new LineError(`only one ${key} parser directive can be used`);
    this.seen.add(key);
    if (key === "escape") {
      const v = m[2];
      if (v !== "`" && v !== "\\") throw new LineError(`invalid escape token '${v}' does not match \` or \\`);
      this.escape = v;
      const e = v === "`" ? "`" : "\\\\";
      this.continuation = new RegExp(`([^${e}])${e}[ \\t]*$|^${e}[ \\t]*$`);
    }
    return true;
  }

  /** [line without its continuation character, whether the instruction ends here]. */
  trimContinuation(line: string): [string, boolean] {
    if (!this.continuation.test(line)) return [line, true];
    return [line.replace(this.continuation, "$1"), false];
  }
}

// ---- Words and flags ----

/** Words separated by white space, quotes and escapes kept (Docker's parseWords). */
export function parseWords(rest: string, esc: string): string[] {
  const cs = Array.from(rest);
  const words: string[] = [];
  let phase: "space" | "word" | "quote" = "space";
  let word = "";
  let quote = "";
  let blankOK = false;
  for (let pos = 0; pos <= cs.length; pos++) {
    let ch = pos < cs.length ? cs[pos] : "";
    if (phase === "space") {
      if (pos === cs.length) break;
      if (isSpace(ch)) continue;
      phase = "word";
    }
    if (pos === cs.length) {
      if (blankOK || word) words.push(word);
      break;
    }
    if (phase === "word") {
      if (isSpace(ch)) {
        phase = "space";
        if (blankOK || word) words.push(word);
        word = "";
        blankOK = false;
        continue;
      }
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOK = true;
        phase = "quote";
      }
      if (ch === esc) {
        if (pos + 1 === cs.length) continue; // an escape at the end is dropped
        word += ch;
        ch = cs[++pos];
      }
      word += ch;
      continue;
    }
    if (ch === quote) phase = "word";
    if (ch === esc && quote !== "'") {
      if (pos + 1 === cs.length) {
        phase = "word";
        continue;
      }
      word += ch;
      ch = cs[++pos];
    }
    word += ch;
  }
  return words;
}

/** Leading --flags of an instruction's arguments: [rest, flags]. Quotes and backslashes in a
 * flag are processed; "--" ends the flags (Docker's extractBuilderFlags). */
function extractFlags(line: string): [string, string[]] {
  const cs = Array.from(line);
  const words: string[] = [];
  let phase: "space" | "word" | "quote" = "space";
  let word = "";
  let quote = "";
  let blankOK = false;
  for (let pos = 0; pos <= cs.length; pos++) {
    let ch = pos < cs.length ? cs[pos] : "";
    if (phase === "space") {
      if (pos === cs.length) break;
      if (isSpace(ch)) continue;
      if (ch !== "-" || cs[pos + 1] !== "-") return [cs.slice(pos).join(""), words];
      phase = "word";
    }
    if (pos === cs.length) {
      if (word !== "--" && (blankOK || word)) words.push(word);
      break;
    }
    if (phase === "word") {
      if (isSpace(ch)) {
        phase = "space";
        if (word === "--") return [cs.slice(pos).join(""), words];
        if (blankOK || word) words.push(word);
        word = "";
        blankOK = false;
        continue;
      }
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOK = true;
        phase = "quote";
        continue;
      }
      if (ch === "\\") {
        if (pos + 1 === cs.length) continue;
        ch = cs[++pos];
      }
      word += ch;
      continue;
    }
    if (ch === quote) {
      phase = "word";
      continue;
    }
    if (ch === "\\") {
      if (pos + 1 === cs.length) {
        phase = "word";
        continue;
      }
      ch = cs[++pos];
    }
    word += ch;
  }
  return ["", words];
}

type FlagKind = "bool" | "string" | "strings";

/** The flags each instruction takes (Docker's, stable syntax); others are errors. */
const FLAGS: Record<string, Record<string, FlagKind>> = {
  add: {
    chown: "string",
    chmod: "string",
    link: "bool",
    "keep-git-dir": "bool",
    checksum: "string",
    exclude: "strings",
    unpack: "bool",
  },
  copy: { chown: "string", from: "string", chmod: "string", link: "bool", parents: "bool", exclude: "strings" },
  from: { platform: "string" },
  run: { mount: "strings", network: "string", security: "string" },
  healthcheck: {
    interval: "string",
    timeout: "string",
    "start-period": "string",
    "start-interval": "string",
    retries: "string",
  },
};

function parseFlags(keyword: string, raw: string[]): Record<string, FlagValue> {
  const spec = FLAGS[keyword] ?? {};
  const out: Record<string, FlagValue> = {};
  for (const arg of raw) {
    const body = arg.slice(2); // extractFlags only returns words starting with --
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const value = eq < 0 ? null : body.slice(eq + 1);
    const kind = Object.hasOwn(spec, name) ? spec[name] : undefined;
    if (!kind) throw new LineError(`unknown flag: ${name}`);
    if (name in out && kind !== "strings") throw new LineError(`duplicate flag specified: ${name}`);
    if (kind === "bool") {
      if (value === "") throw new LineError(`missing a value on flag: ${name}`);
      const v = (value ?? "true").toLowerCase();
      if (v !== "true" && v !== "false") throw new LineError(`expecting boolean value for flag ${name}, not: ${value}`);
      out[name] = v === "true";
    } else {
      if (value === null) throw new LineError(`missing a value on flag: ${name}`);
      if (kind === "string") out[name] = value;
      else out[name] = [...((out[name] as string[] | undefined) ?? []), value];
    }
  }
  return out;
}

// ---- Argument forms ----

/** Decodes a JSON array of strings at the start of `rest`, as Go's json.Decoder does (text after
 * the array is ignored): [strings, text after] or null when it isn't a JSON array. */
function jsonArray(rest: string): [string[], string] | null {
  const s = trimLeft(rest);
  if (!s.startsWith("[")) return null;
  let depth = 0;
  let inString = false;
  let escaped = false;
  let end = -1;
  for (let i = 0; i < s.length && end < 0; i++) {
    const c = s[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "[" || c === "{") depth++;
    else if (c === "]" || c === "}") if (--depth === 0) end = i + 1;
  }
  if (end < 0) return null;
  let value: unknown;
  try {
    value = JSON.parse(s.slice(0, end));
  } catch {
    return null;
  }
  if (!Array.isArray(value)) return null;
  if (!value.every((v) => typeof v === "string"))
    throw new LineError("when using JSON array syntax, arrays must be comprised of strings only");
  return [value, s.slice(end)];
}

interface Node {
  keyword: string;
  /** As written, for messages. */
  word: string;
  flags: string[];
  args: string[];
  kv: [string, string][] | null;
  json: boolean;
  /** Text after a JSON array, ignored (Docker ignores it too). */
  ignored: string;
  child: Node | null;
  rest: string;
}

/** ENV and LABEL: `name=value ...`, or the legacy `name value` (the rest of the line). */
function nameValues(rest: string, keyword: string, esc: string): [string, string][] {
  const words = parseWords(rest, esc);
  if (!words.length) return [];
  if (!words[0].includes("=")) {
    const parts = splitOnce(rest);
    if (parts.length < 2) throw new LineError(`${keyword} must have two arguments`);
    return [[parts[0], parts[1]]];
  }
  return words.map((w) => {
    const eq = w.indexOf("=");
    if (eq < 0) throw new LineError(`Syntax error - can't find = in ${JSON.stringify(w)}. Must be of the form: name=value`);
    return [w.slice(0, eq), w.slice(eq + 1)];
  });
}

/** One instruction line (continuations joined): keyword, flags, arguments. */
function parseNode(line: string, esc: string): Node {
  const [word, restRaw] = splitOnce(trimSpace(line));
  const keyword = word.toLowerCase();
  const [restFlags, flags] = restRaw === undefined ? ["", []] : extractFlags(restRaw);
  const rest = trimSpace(restFlags);
  const node: Node = { keyword, word, flags, args: [], kv: null, json: false, ignored: "", child: null, rest };
  const whitespaceList = () => (rest === "" ? [] : rest.split(WS));
  const maybeJson = (fallback: () => string[]) => {
    const j = jsonArray(rest);
    if (j) {
      [node.args, node.ignored] = j;
      node.json = true;
    } else node.args = fallback();
  };
  switch (keyword) {
    case "add":
    case "copy":
    case "volume":
      maybeJson(whitespaceList);
      break;
    case "run":
    case "cmd":
    case "entrypoint":
    case "shell":
      if (rest !== "") maybeJson(() => [rest]);
      break;
    case "env":
    case "label":
      node.kv = nameValues(rest, keyword.toUpperCase(), esc);
      node.args = node.kv.flat();
      break;
    case "arg":
      node.args = parseWords(rest, esc);
      break;
    case "expose":
    case "from":
      node.args = whitespaceList();
      break;
    case "maintainer":
    case "stopsignal":
    case "user":
    case "workdir":
      node.args = rest === "" ? [] : [rest];
      break;
    case "healthcheck": {
      const [type, cmd] = splitOnce(rest);
      if (type === "") break;
      const sub = trimLeft(cmd ?? "");
      if (sub === "") node.args = [type];
      else {
        const j = jsonArray(sub);
        if (j) {
          node.args = [type, ...j[0]];
          node.ignored = j[1];
          node.json = true;
        } else node.args = [type, sub];
      }
      break;
    }
    case "onbuild":
      if (rest !== "") {
        node.child = parseNode(rest, esc);
        node.args = [node.child.keyword, ...node.child.args];
      }
      break;
    default:
      break; // unknown: refused below, as an instruction
  }
  return node;
}

// ---- Heredocs ----

const HEREDOC = /^(\d*)<<(-?)([^<]*)$/;

/** The heredoc a word starts (<<EOF, <<-"EOF", 3<<EOF), or null. */
export function heredocWord(word: string): Omit<Heredoc, "content"> | null {
  const m = HEREDOC.exec(word);
  if (!m || m[3] === "") return null;
  const plain = expandWords(m[3], undefined, { skipUnset: true });
  if (plain.length !== 1) return null;
  const raw = expandWords(m[3], undefined, { skipUnset: true, rawQuotes: true });
  const quotes = (s: string) => s.split(/['"]/).length - 1;
  return { name: plain[0], fd: m[1] ? Number(m[1]) : 0, expand: quotes(plain[0]) === quotes(raw[0]), chomp: m[2] === "-" };
}

/** Whether a word starts a heredoc (a word Docker can't lex isn't one). */
export function isHeredoc(word: string): boolean {
  try {
    return heredocWord(word) !== null;
  } catch {
    return false;
  }
}

function heredocsOf(line: string): Omit<Heredoc, "content">[] {
  let words: string[];
  try {
    words = expandWords(line, undefined, { rawQuotes: true, rawEscapes: true, skipUnset: true });
  } catch {
    return []; // Docker ignores a line it can't split here
  }
  const docs: Omit<Heredoc, "content">[] = [];
  for (const w of words) {
    const d = heredocWord(w);
    if (d) docs.push(d);
  }
  return docs;
}

// ---- Instructions ----

const GO_DURATION = /^[-+]?(0|([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+)$/;

/** Docker's checks of each instruction's arguments (its instructions package). */
function checkInstruction(n: Node, kv: [string, string | null][] | null): void {
  const K = n.keyword.toUpperCase();
  const atLeastOne = () => {
    if (!n.args.length) throw new LineError(`${K} requires at least one argument`);
  };
  const exactlyOne = () => {
    if (n.args.length !== 1) throw new LineError(`${K} requires exactly one argument`);
  };
  switch (n.keyword) {
    case "env":
    case "label":
      if (!kv?.length) throw new LineError(`${K} requires at least one argument`);
      if (kv.some(([k]) => k === "")) throw new LineError(`${K} names can not be blank`);
      break;
    case "arg":
      atLeastOne();
      if (kv?.some(([k]) => k === "")) throw new LineError("ARG names can not be blank");
      break;
    case "maintainer":
    case "workdir":
    case "user":
    case "stopsignal":
      exactlyOne();
      break;
    case "add":
    case "copy":
      if (n.args.length < 2)
        throw new LineError(
          `${K} requires at least two arguments, but only one was provided. Destination could not be determined`,
        );
      if (isHeredoc(n.args[n.args.length - 1])) throw new LineError(`${K} cannot accept a heredoc as a destination`);
      break;
    case "from":
      if (n.args.length === 3 && n.args[1].toLowerCase() === "as") {
        if (!/^[a-z][a-z0-9-_.]*$/.test(n.args[2].toLowerCase()))
          throw new LineError(
            `invalid name for build stage: ${JSON.stringify(n.args[2])}, name can't start with a number or contain symbols`,
          );
      } else if (n.args.length !== 1) throw new LineError("FROM requires either one or three arguments");
      break;
    case "onbuild": {
      atLeastOne();
      const t = n.args[0].toUpperCase();
      if (t === "ONBUILD") throw new LineError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
      if (t === "MAINTAINER" || t === "FROM") throw new LineError(`${t} isn't allowed as an ONBUILD trigger`);
      break;
    }
    case "expose":
      atLeastOne();
      break;
    case "volume":
      atLeastOne();
      if (n.args.some((v) => trimSpace(v) === "")) throw new LineError("VOLUME specified can not be an empty string");
      break;
    case "shell":
      atLeastOne();
      if (!n.json) throw new LineError("SHELL requires the arguments to be in JSON form");
      break;
    case "healthcheck": {
      atLeastOne();
      const type = n.args[0].toUpperCase();
      if (type === "NONE") {
        if (n.args.length > 1) throw new LineError("HEALTHCHECK NONE takes no arguments");
      } else if (type === "CMD") {
        if (n.args.length < 2) throw new LineError("Missing command after HEALTHCHECK CMD");
      } else throw new LineError(`Unknown type ${JSON.stringify(type)} in HEALTHCHECK (try CMD)`);
      break;
    }
    case "run":
    case "cmd":
    case "entrypoint":
      break;
    default:
      throw new LineError(`unknown instruction: ${n.word}`);
  }
}

function checkHealthFlags(flags: Record<string, FlagValue>): void {
  for (const f of ["interval", "timeout", "start-period", "start-interval"])
    if (typeof flags[f] === "string" && flags[f] !== "" && !GO_DURATION.test(flags[f] as string))
      throw new LineError(`time: invalid duration ${JSON.stringify(flags[f])}`);
  const r = flags.retries;
  if (typeof r === "string" && r !== "") {
    if (!/^[-+]?\d+$/.test(r)) throw new LineError(`strconv.ParseInt: parsing ${JSON.stringify(r)}: invalid syntax`);
    if (Number(r) < 0) throw new LineError(`--retries cannot be negative (${Number(r)})`);
  }
}

function argPairs(words: string[]): [string, string | null][] {
  return words.map((w) => {
    const eq = w.indexOf("=");
    return eq < 0 ? [w, null] : [w.slice(0, eq), w.slice(eq + 1)];
  });
}

/** Removes the leading tabs of every line (<<-). */
export function chompTabs(s: string): string {
  return s.replace(/^\t+/gm, "");
}

/** Parses a Dockerfile; `file` names it in messages. Throws FILE:LINE: message. */
export function parseDockerfile(text: string, file: string): Dockerfile {
  const lines = splitLines(text);
  if (lines.length && lines[0].startsWith("\ufeff")) lines[0] = lines[0].slice(1);
  const d = new Directives();
  const instructions: Instruction[] = [];
  const warnings: string[] = [];
  let i = 0;
  let seenFrom = false;
  while (i < lines.length) {
    const start = i + 1;
    const token = trimLeft(trimNewline(lines[i++]));
    try {
      if (d.check(token)) continue;
    } catch (e) {
      if (e instanceof LineError) throw syntaxError(file, start, e.message);
      throw e;
    }
    if (isComment(token)) continue;
    let [line, end] = d.trimContinuation(token);
    if (end && line === "") continue;
    let emptyContinuation = false;
    while (!end && i < lines.length) {
      const next = trimNewline(lines[i++]);
      if (isComment(next)) continue;
      if (trimLeft(next) === "") {
        emptyContinuation = true;
        continue;
      }
      let part: string;
      [part, end] = d.trimContinuation(next);
      line += part;
    }
    let endLine = i;
    try {
      const n = parseNode(line, d.escape);
      if (emptyContinuation)
        warnings.push(`${file}:${endLine}: empty continuation line (Docker warns that these will become errors)`);
      if (n.ignored.trim() !== "")
        warnings.push(`${file}:${start}: text after the JSON array ignored, as Docker does: ${n.ignored.trim()}`);
      const kv: [string, string | null][] | null = n.keyword === "arg" ? argPairs(n.args) : n.kv;
      checkInstruction(n, kv);
      const flags = parseFlags(n.keyword, n.flags);
      if (n.keyword === "healthcheck") checkHealthFlags(flags);
      // Heredocs: RUN, COPY, ADD (also as ONBUILD's trigger) in shell form.
      const host = n.keyword === "onbuild" ? n.child : n;
      const heredocs: Heredoc[] = [];
      if (host && ["run", "copy", "add"].includes(host.keyword) && !host.json && line.includes("<<")) {
        for (const h of heredocsOf(line)) {
          let content = "";
          let done = false;
          while (i < lines.length) {
            const l = lines[i++];
            const t = h.chomp ? trimNewline(l).replace(/^\t+/, "") : trimNewline(l);
            if (t === h.name) {
              done = true;
              break;
            }
            content += l;
          }
          if (!done) throw new LineError(`unterminated heredoc ${h.name}`);
          heredocs.push({ ...h, content: h.chomp ? chompTabs(content) : content });
        }
        endLine = i;
      }
      if (n.keyword === "from") seenFrom = true;
      else if (!seenFrom && n.keyword !== "arg") throw new LineError("no build stage in current context (FROM must come first)");
      let args = n.args;
      let trigger: Trigger | null = null;
      if (n.keyword === "onbuild" && n.child) {
        const c = n.child;
        trigger = { keyword: c.keyword, flags: c.flags, args: c.args, json: c.json };
        let expr = line.replace(/^\s*ONBUILD\s*/i, "");
        for (const h of heredocs) expr += `\n${h.content}${h.name}`;
        args = [expr];
      }
      instructions.push({
        file,
        line: start,
        endLine,
        keyword: n.keyword,
        text: line,
        flags,
        args,
        kv,
        json: n.json,
        heredocs,
        trigger,
        escape: d.escape,
      });
    } catch (e) {
      if (e instanceof LineError || e instanceof SubstitutionError) throw syntaxError(file, start, e.message);
      throw e;
    }
  }
  if (!instructions.length) throw syntaxError(file, Math.max(lines.length, 1), "file with no instructions");
  if (!seenFrom) throw syntaxError(file, instructions[0].line, "dockerfile contains no stages to build (no FROM)");
  return { file, escape: d.escape, instructions, warnings };
}
