// fnmatch(3) with FNM_EXTMATCH, as glibc matches --unset-env globs for Charliecloud: * ? [...]
// (with [!...], [^...], ranges and [:classes:]), backslash escapes, and the extended patterns
// ?(a|b) *(a|b) +(a|b) @(a|b) !(a|b). No flags beyond that: * matches / and a leading dot.
// A small backtracking matcher, not a regular expression: !(...) needs "anything that is not",
// which regular expressions do not say well.

type Node =
  | { t: "char"; c: string }
  | { t: "any" }
  | { t: "star" }
  | { t: "set"; negate: boolean; test: (c: string) => boolean }
  | { t: "ext"; op: "?" | "*" | "+" | "@" | "!"; alts: Node[][] };

const CLASSES: Record<string, (c: string) => boolean> = {
  alnum: (c) => /[A-Za-z0-9]/.test(c),
  alpha: (c) => /[A-Za-z]/.test(c),
  blank: (c) => c === " " || c === "\t",
  cntrl: (c) => c.charCodeAt(0) < 32 || c.charCodeAt(0) === 127,
  digit: (c) => /[0-9]/.test(c),
  graph: (c) => c.charCodeAt(0) > 32 && c.charCodeAt(0) < 127,
  lower: (c) => /[a-z]/.test(c),
  print: (c) => c.charCodeAt(0) >= 32 && c.charCodeAt(0) < 127,
  punct: (c) => /[!-/:-@[-`{-~]/.test(c),
  space: (c) => /[ \t\n\v\f\r]/.test(c),
  upper: (c) => /[A-Z]/.test(c),
  xdigit: (c) => /[0-9A-Fa-f]/.test(c),
};

/** Parses a bracket expression starting at p[i] === "["; null if it is not one (then "[" is a
 * plain character, as in fnmatch). */
function parseSet(p: string, i: number): { node: Node; end: number } | null {
  let j = i + 1;
  let negate = false;
  if (p[j] === "!" || p[j] === "^") {
    negate = true;
    j++;
  }
  const tests: ((c: string) => boolean)[] = [];
  let first = true;
  while (j < p.length) {
    if (p[j] === "]" && !first) {
      const node: Node = { t: "set", negate, test: (c) => tests.some((f) => f(c)) };
      return { node, end: j + 1 };
    }
    first = false;
    if (p[j] === "[" && p[j + 1] === ":") {
      const close = p.indexOf(":]", j + 2);
      const cls = close < 0 ? undefined : CLASSES[p.slice(j + 2, close)];
      if (cls) {
        tests.push(cls);
        j = close + 2;
        continue;
      }
    }
    let lo = p[j];
    if (lo === "\\" && j + 1 < p.length) lo = p[++j];
    j++;
    if (p[j] === "-" && j + 1 < p.length && p[j + 1] !== "]") {
      let hi = p[j + 1];
      j += 2;
      if (hi === "\\" && j < p.length) hi = p[j++];
      const [a, b] = [lo, hi];
      tests.push((c) => c >= a && c <= b);
    } else {
      const one = lo;
      tests.push((c) => c === one);
    }
  }
  return null;
}

/** Parses p[i..] up to (not including) a "|" or ")" at depth 0 when nested. */
function parseSeq(p: string, i: number, nested: boolean): { nodes: Node[]; end: number } {
  const nodes: Node[] = [];
  while (i < p.length) {
    const c = p[i];
    if (nested && (c === "|" || c === ")")) break;
    if ("?*+@!".includes(c) && p[i + 1] === "(") {
      const alts: Node[][] = [];
      let j = i + 2;
      let closed = false;
      for (;;) {
        const seq = parseSeq(p, j, true);
        alts.push(seq.nodes);
        j = seq.end;
        if (p[j] === "|") {
          j++;
          continue;
        }
        if (p[j] === ")") closed = true;
        break;
      }
      if (closed) {
        nodes.push({ t: "ext", op: c as "?" | "*" | "+" | "@" | "!", alts });
        i = j + 1;
        continue;
      }
      // Unbalanced: the characters are themselves.
    }
    if (c === "*") nodes.push({ t: "star" });
    else if (c === "?") nodes.push({ t: "any" });
    else if (c === "[") {
      const set = parseSet(p, i);
      if (set) {
        nodes.push(set.node);
        i = set.end;
        continue;
      }
      nodes.push({ t: "char", c });
    } else if (c === "\\" && i + 1 < p.length) nodes.push({ t: "char", c: p[++i] });
    else nodes.push({ t: "char", c });
    i++;
  }
  return { nodes, end: i };
}

function matchAt(nodes: Node[], k: number, s: string, i: number, end: number): boolean {
  if (k === nodes.length) return i === end;
  const n = nodes[k];
  switch (n.t) {
    case "char":
      return i < end && s[i] === n.c && matchAt(nodes, k + 1, s, i + 1, end);
    case "any":
      return i < end && matchAt(nodes, k + 1, s, i + 1, end);
    case "set":
      return i < end && n.test(s[i]) !== n.negate && matchAt(nodes, k + 1, s, i + 1, end);
    case "star":
      for (let j = i; j <= end; j++) if (matchAt(nodes, k + 1, s, j, end)) return true;
      return false;
    case "ext": {
      const whole = (from: number, to: number) => n.alts.some((a) => matchAt(a, 0, s, from, to));
      const rest = (j: number) => matchAt(nodes, k + 1, s, j, end);
      // Zero or more repetitions from position j, then the rest.
      const more = (j: number): boolean => {
        if (rest(j)) return true;
        for (let m = j + 1; m <= end; m++) if (whole(j, m) && more(m)) return true;
        return false;
      };
      switch (n.op) {
        case "@":
          for (let j = i; j <= end; j++) if (whole(i, j) && rest(j)) return true;
          return false;
        case "?":
          if (rest(i)) return true;
          for (let j = i; j <= end; j++) if (whole(i, j) && rest(j)) return true;
          return false;
        case "*":
          return more(i);
        case "+":
          for (let j = i; j <= end; j++) if (whole(i, j) && more(j)) return true;
          return false;
        case "!":
          for (let j = i; j <= end; j++) if (!whole(i, j) && rest(j)) return true;
          return false;
      }
    }
  }
}

/** Whether `name` matches `pattern`, as fnmatch(pattern, name, FNM_EXTMATCH) == 0. */
export function fnmatch(pattern: string, name: string): boolean {
  return matchAt(parseSeq(pattern, 0, false).nodes, 0, name, 0, name.length);
}
