// Variable substitution in Dockerfile instructions, following the rules of Docker's builder
// (BuildKit's shell lexer), not a shell's: $NAME and ${NAME}; ${NAME:-word} ${NAME-word}
// ${NAME:+word} ${NAME+word} ${NAME:?msg} ${NAME?msg}; ${NAME#pat} ${NAME##pat} ${NAME%pat}
// ${NAME%%pat} ${NAME/pat/repl} ${NAME//pat/repl}; single quotes keep everything literal; double
// quotes keep everything but $ and the escape character before " $ or itself; outside quotes
// the escape character (\ or the `# escape=` one) makes the next character literal. An unset
// variable expands to nothing (Charliecloud's own builder leaves it as written; Docker doesn't).
// No command substitution, arithmetic or globbing: those are the shell's, in RUN.

/** Variables in scope: a Map works. */
export interface Vars {
  get(name: string): string | undefined;
}

export interface LexOptions {
  /** The escape character: "\\" (default) or "`". */
  escape?: string;
  /** Keep quote characters in the result (heredoc delimiter detection). */
  rawQuotes?: boolean;
  /** Keep escape characters in the result. */
  rawEscapes?: boolean;
  /** Quotes are ordinary characters (the content of a COPY heredoc). */
  skipQuotes?: boolean;
  /** Leave a reference to an unset variable as written. */
  skipUnset?: boolean;
}

export class SubstitutionError extends Error {}

const EMPTY: Vars = { get: () => undefined };

/** Go's unicode.IsSpace. */
export function isSpace(c: string): boolean {
  return /^[\t\n\v\f\r \u0085\u00a0\p{Z}]$/u.test(c);
}

const isLetter = (c: string) => /^\p{L}$/u.test(c);
const isDigit = (c: string) => /^\p{Nd}$/u.test(c);
/** POSIX special parameters: $@ $* $# $? $- $$ $! $0 (always unset here). */
const SPECIAL = new Set(["@", "*", "#", "?", "-", "$", "!", "0"]);

/** Word splitting after substitution: text from variables splits at white space, quoted and
 * escaped text doesn't. A word made only of empty quotes ("") is dropped, as Docker does. */
class Words {
  words: string[] = [];
  private buf = "";
  private inWord = false;

  addChar(c: string): void {
    if (isSpace(c)) {
      if (this.inWord && this.buf.length) {
        this.words.push(this.buf);
        this.buf = "";
        this.inWord = false;
      }
    } else this.addRaw(c);
  }

  addRaw(s: string): void {
    this.buf += s;
    this.inWord = true;
  }

  addString(s: string): void {
    for (const c of s) this.addChar(c);
  }

  finish(): string[] {
    if (this.buf.length) this.words.push(this.buf);
    this.buf = "";
    this.inWord = false;
    return this.words;
  }
}

class Lexer {
  private readonly chars: string[];
  private pos = 0;
  private rawEscapes: boolean;
  private readonly vars: Vars;
  private readonly o: LexOptions;

  constructor(source: string, vars: Vars, o: LexOptions) {
    this.vars = vars;
    this.o = o;
    this.chars = Array.from(source);
    this.rawEscapes = !!o.rawEscapes;
  }

  private get escape(): string {
    return this.o.escape ?? "\\";
  }

  private peek(): string | null {
    return this.pos < this.chars.length ? this.chars[this.pos] : null;
  }

  private next(): string | null {
    return this.pos < this.chars.length ? this.chars[this.pos++] : null;
  }

  /** Reads up to `stop` (consumed) or the end; returns the text and its words. */
  processUntil(stop: string | null, rawEscapes: boolean): [string, string[]] {
    const saved = this.rawEscapes;
    this.rawEscapes = rawEscapes;
    try {
      let result = "";
      const words = new Words();
      for (let c = this.peek(); c !== null; c = this.peek()) {
        if (stop !== null && c === stop) {
          this.next();
          return [result, words.finish()];
        }
        if (c === "$") {
          const v = this.dollar();
          result += v;
          words.addString(v);
        } else if ((c === "'" || c === '"') && !this.o.skipQuotes) {
          const v = c === "'" ? this.singleQuoted() : this.doubleQuoted();
          result += v;
          words.addRaw(v);
        } else {
          this.next();
          if (c === this.escape) {
            if (this.rawEscapes) {
              result += c;
              words.addRaw(c);
            }
            const e = this.next();
            if (e === null) break; // an escape character at the end is dropped
            result += e;
            words.addRaw(e);
          } else {
            result += c;
            words.addChar(c);
          }
        }
      }
      if (stop !== null) throw new SubstitutionError(`unexpected end of statement while looking for matching ${stop}`);
      return [result, words.finish()];
    } finally {
      this.rawEscapes = saved;
    }
  }

  private singleQuoted(): string {
    let r = this.o.rawQuotes ? "'" : "";
    this.next();
    for (;;) {
      const c = this.next();
      if (c === null) throw new SubstitutionError("unexpected end of statement while looking for matching single-quote");
      if (c === "'") return this.o.rawQuotes ? `${r}'` : r;
      r += c;
    }
  }

  private doubleQuoted(): string {
    let r = this.o.rawQuotes ? '"' : "";
    this.next();
    for (;;) {
      const p = this.peek();
      if (p === null) throw new SubstitutionError("unexpected end of statement while looking for matching double-quote");
      if (p === '"') {
        this.next();
        return this.o.rawQuotes ? `${r}"` : r;
      }
      if (p === "$") {
        r += this.dollar();
        continue;
      }
      let c = this.next() as string;
      if (c === this.escape) {
        const n = this.peek();
        if (n === null) continue; // dropped; the missing quote is reported next
        if (n === '"' || n === "$" || n === this.escape) {
          if (this.rawEscapes) r += c;
          c = this.next() as string;
        }
      }
      r += c;
    }
  }

  /** A name after $: digits, one special parameter, or letters, digits and _. */
  private name(): string {
    let name = "";
    for (let c = this.peek(); c !== null; c = this.peek()) {
      if (name === "" && isDigit(c)) {
        while (this.peek() !== null && isDigit(this.peek() as string)) name += this.next();
        return name;
      }
      if (name === "" && SPECIAL.has(c)) return this.next() as string;
      if (!isLetter(c) && !isDigit(c) && c !== "_") break;
      name += this.next();
    }
    return name;
  }

  private dollar(): string {
    this.next();
    if (this.peek() !== "{") {
      const name = this.name();
      if (name === "") return "$";
      const v = this.vars.get(name);
      if (v === undefined && this.o.skipUnset) return `$${name}`;
      return v ?? "";
    }
    this.next();
    const p = this.peek();
    if (p === null) throw new SubstitutionError("syntax error: missing '}'");
    if (p === "{" || p === "}" || p === ":") throw new SubstitutionError("syntax error: bad substitution");
    const name = this.name();
    let op = this.next();
    if (op === null) throw new SubstitutionError("syntax error: missing '}'");
    const value = this.vars.get(name);
    const set = value !== undefined;
    if (op === "}") {
      if (!set && this.o.skipUnset) return `\${${name}}`;
      return value ?? "";
    }
    if (op === "/") return this.replace(name, value);
    let colon = false;
    let ops = op;
    if (op === ":") {
      colon = true;
      op = this.next();
      if (op === null) throw new SubstitutionError("syntax error: missing '}'");
      ops += op;
    } else if (!"+-?#%".includes(op)) throw new SubstitutionError(`unsupported modifier (${ops}) in substitution`);
    const pattern = op === "#" || op === "%";
    if (colon && pattern) throw new SubstitutionError(`unsupported modifier (${ops}) in substitution`);
    let word = this.word(pattern);
    if (!"+-?#%".includes(op)) throw new SubstitutionError(`unsupported modifier (${ops}) in substitution`);
    if (!set && this.o.skipUnset) return `\${${name}${ops}${word}}`;
    const empty = !set || (colon && value === "");
    switch (op) {
      case "-":
        return empty ? word : (value as string);
      case "+":
        return empty ? "" : word;
      case "?":
        if (!set) throw new SubstitutionError(`${name}: ${word || "is not allowed to be unset"}`);
        if (empty) throw new SubstitutionError(`${name}: ${word || "is not allowed to be empty"}`);
        return value as string;
      default: {
        // # and % remove the shortest matching prefix or suffix, ## and %% the longest.
        let greedy = false;
        if (word.startsWith(op)) {
          greedy = true;
          word = word.slice(op.length);
        }
        return op === "#" ? trimPrefix(word, value ?? "", greedy) : trimSuffix(word, value ?? "", greedy);
      }
    }
  }

  /** The word of ${NAME<op>word}, up to the closing brace. */
  private word(rawEscapes: boolean): string {
    try {
      return this.processUntil("}", rawEscapes)[0];
    } catch (e) {
      if (this.peek() === null) throw new SubstitutionError("syntax error: missing '}'");
      throw e;
    }
  }

  private replace(name: string, value: string | undefined): string {
    const all = this.peek() === "/";
    if (all) this.next();
    let pattern: string;
    try {
      pattern = this.processUntil("/", true)[0];
    } catch (e) {
      if (this.peek() === null) throw new SubstitutionError(`syntax error: missing '/' in \${}`);
      throw e;
    }
    const replacement = this.word(true);
    if (value === undefined && this.o.skipUnset) return `\${${name}/${pattern}/${replacement}}`;
    const re = patternRegExp(pattern, true, false, all);
    return (value ?? "").replace(re, () => replacement);
  }
}

/** A shell pattern (* and ?, \ escaping them) as a regular expression. */
function patternRegExp(pattern: string, greedy: boolean, anchored: boolean, global = false): RegExp {
  let out = anchored ? "^" : "";
  const p = Array.from(pattern);
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === "*") out += greedy ? ".*" : ".*?";
    else if (c === "?") out += ".";
    else if (c === "\\") {
      // \} and \/ inside ${} were escapes of the ${} syntax, not of the pattern.
      if (p[i + 1] === "}" || p[i + 1] === "/") continue;
      const n = p[++i];
      if (n !== "*" && n !== "?" && n !== "\\")
        throw new SubstitutionError(`invalid pattern (${pattern}) in substitution: invalid escape '\\${n ?? ""}'`);
      out += `\\${n}`;
    } else if ("[]{}.+()|^$".includes(c)) out += `\\${c}`;
    else out += c;
  }
  return new RegExp(out, global ? "gu" : "u");
}

function trimPrefix(pattern: string, value: string, greedy: boolean): string {
  const m = patternRegExp(pattern, greedy, true).exec(value);
  return m ? value.slice(m[0].length) : value;
}

/** Reverses a pattern, keeping each escape before the character it escapes. */
function reversePattern(pattern: string): string {
  const p = Array.from(pattern);
  const out: string[] = [];
  for (let i = 0; i < p.length; ) {
    if (p[i] === "\\" && i < p.length - 1) {
      out.unshift(p[i], p[i + 1]);
      i += 2;
    } else out.unshift(p[i++]);
  }
  return out.join("");
}

function trimSuffix(pattern: string, value: string, greedy: boolean): string {
  // The shortest match at the end is the shortest at the start of the reversed string.
  const rev = (s: string) => Array.from(s).reverse().join("");
  return rev(trimPrefix(reversePattern(pattern), rev(value), greedy));
}

function lex(source: string, vars: Vars, opts: LexOptions): [string, string[]] {
  try {
    return new Lexer(source, vars, opts).processUntil(null, !!opts.rawEscapes);
  } catch (e) {
    if (e instanceof SubstitutionError) throw new SubstitutionError(`failed to process ${JSON.stringify(source)}: ${e.message}`);
    throw e;
  }
}

/** Substitutes variables in one word, removing quotes and escapes (Docker's ProcessWord). */
export function expandWord(source: string, vars: Vars = EMPTY, opts: LexOptions = {}): string {
  return lex(source, vars, opts)[0];
}

/** Same, then splits into words at unquoted white space (Docker's ProcessWords). */
export function expandWords(source: string, vars: Vars = EMPTY, opts: LexOptions = {}): string[] {
  return lex(source, vars, opts)[1];
}
