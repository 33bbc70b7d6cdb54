// biome-ignore-all lint/suspicious/noTemplateCurlyInString: the strings are Dockerfile text, not templates
// The Dockerfile parser and the stage plan, table by table against Docker's documented behaviour
// (the Dockerfile reference and BuildKit's parser).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Instruction, parseDockerfile, parseWords } from "../../src/builder/dockerfile.ts";
import { planStages } from "../../src/builder/stages.ts";
import { BuildArgs } from "../../src/builder/vars.ts";

const parse = (text: string) => parseDockerfile(text, "Dockerfile");
const insts = (text: string) => parse(text).instructions;
/** The instructions after a first line "FROM x". */
const after = (text: string) => insts(`FROM x\n${text}`).slice(1);
/** The one instruction after "FROM x". */
const one = (text: string): Instruction => {
  const i = after(text);
  assert.equal(i.length, 1, `one instruction in ${JSON.stringify(text)}`);
  return i[0];
};
/** [keyword, args, json] of each instruction. */
const shape = (list: Instruction[]) => list.map((i) => [i.keyword, i.args, i.json]);
const fails = (text: string, re: RegExp) => assert.throws(() => parse(text), re);

describe("parser directives", () => {
  it("# escape=` makes the backtick the escape and continuation character", () => {
    const df = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  /w\nCOPY a\\b c:\\\n");
    assert.equal(df.escape, "`");
    assert.deepEqual(shape(df.instructions.slice(1)), [
      ["run", ["dir c:\\   /w"], false],
      ["copy", ["a\\b", "c:\\"], false],
    ]);
  });
  it("are case-insensitive, allow spaces, and # syntax= is accepted and ignored", () => {
    for (const d of ["#ESCAPE=`", "#  Escape =  ` ", "# syntax=docker/dockerfile:1\n# escape=`", "\t# escape=`"])
      assert.equal(parse(`${d}\nFROM x\n`).escape, "`", d);
  });
  it("only at the top: after a comment, a blank line or an instruction they are comments", () => {
    for (const d of ["# hello\n# escape=`", "\n# escape=`", "FROM x\n# escape=`", "# unknown=1\n# escape=`"])
      assert.equal(parse(`${d}\nFROM x\n`).escape, "\\", JSON.stringify(d));
  });
  it("refuses a repeated directive and an escape other than \\ or `, naming the line", () => {
    fails("# escape=`\n# escape=\\\nFROM x\n", /^Error: Dockerfile:2: only one escape parser directive can be used$/);
    fails("# syntax=a\n# SYNTAX=b\nFROM x\n", /Dockerfile:2: only one syntax parser directive/);
    fails("# escape=x\nFROM x\n", /Dockerfile:1: invalid escape token 'x' does not match ` or \\/);
  });
  it("ignores a byte-order mark", () => {
    assert.equal(parse("\ufeff# escape=`\nFROM x\n").escape, "`");
  });
});

describe("lines", () => {
  it("comments, indentation, blank lines, CRLF and case-insensitive keywords", () => {
    const list = insts("# comment\n  \n\tfrom  x  AS  b\r\n  # indented comment\nrUn  echo # not a comment\r\n\nEnv A=1\n");
    assert.deepEqual(shape(list), [
      ["from", ["x", "AS", "b"], false],
      ["run", ["echo # not a comment"], false],
      ["env", ["A", "1"], false],
    ]);
    assert.deepEqual(
      list.map((i) => i.line),
      [3, 5, 7],
    );
  });
  it("continues lines ending in the escape character (spaces after it allowed)", () => {
    const i = one("RUN a \\\n  b \\  \n c\n");
    assert.deepEqual(i.args, ["a   b  c"]);
    assert.deepEqual([i.line, i.endLine], [2, 4]);
  });
  it("skips comment lines inside a continuation; warns about empty ones", () => {
    const df = parse("FROM x\nRUN a \\\n# c\n  # c2\n\n   \n b\nRUN z\n");
    assert.deepEqual(shape(df.instructions.slice(1)), [
      ["run", ["a  b"], false],
      ["run", ["z"], false],
    ]);
    assert.equal(df.warnings.length, 1);
    assert.match(df.warnings[0], /^Dockerfile:7: empty continuation line/);
  });
  it("an escaped escape character at the end doesn't continue", () => {
    assert.deepEqual(shape(after("RUN a \\\\\nRUN b\n")), [
      ["run", ["a \\\\"], false],
      ["run", ["b"], false],
    ]);
  });
  it("a continuation at the end of the file ends the instruction", () => {
    assert.deepEqual(one("RUN a \\").args, ["a"]);
    assert.deepEqual(one("RUN a \\\n").args, ["a"]);
    assert.deepEqual(one("RUN a \\\n# only a comment\n").args, ["a"]);
  });
  it("a line of only the escape character continues", () => {
    assert.deepEqual(one("RUN \\\n a\n").args, ["a"]);
  });
});

describe("exec (JSON) and shell forms", () => {
  const table: [string, unknown[], boolean][] = [
    ['CMD ["a", "b c"]', ["a", "b c"], true],
    ['CMD [ "a" ,"b\\"c" ]', ["a", 'b"c'], true],
    ["CMD []", [], true],
    ["CMD [a, b]", ["[a, b]"], false], // not JSON: shell form
    ["CMD ['a']", ["['a']"], false],
    ['CMD ["a",]', ['["a",]'], false],
    ['CMD ["unterminated"', ['["unterminated"'], false],
    ["CMD echo  [x]", ["echo  [x]"], false],
    ['ENTRYPOINT ["/bin/sh", "-c"]', ["/bin/sh", "-c"], true],
    ['RUN ["echo", "$HOME"]', ["echo", "$HOME"], true],
    ['SHELL ["/bin/bash", "-c"]', ["/bin/bash", "-c"], true],
    ["COPY a  b\t c/", ["a", "b", "c/"], false],
    ['COPY ["a b", "c d/"]', ["a b", "c d/"], true],
    ['COPY "a b" c/', ['"a', 'b"', "c/"], false], // Docker splits at white space, quotes or not
    ["VOLUME /a /b", ["/a", "/b"], false],
    ['VOLUME ["/a"]', ["/a"], true],
    ["EXPOSE 80  443/udp", ["80", "443/udp"], false],
    ["USER  u:g  x", ["u:g  x"], false],
    ["WORKDIR /a b", ["/a b"], false],
    ["STOPSIGNAL SIGKILL", ["SIGKILL"], false],
    ["MAINTAINER me <me@x>", ["me <me@x>"], false],
    ['HEALTHCHECK --interval=5m CMD ["curl", "-f"]', ["CMD", "curl", "-f"], true],
    ["HEALTHCHECK CMD curl -f x", ["CMD", "curl -f x"], false],
    ["HEALTHCHECK NONE", ["NONE"], false],
  ];
  for (const [text, args, json] of table)
    it(text, () => {
      const i = one(text);
      assert.deepEqual([i.args, i.json], [args, json]);
    });
  it("text after a JSON array is ignored, as Docker does, with a warning", () => {
    const df = parse('FROM x\nCMD ["a"] b\n');
    assert.deepEqual(shape(df.instructions.slice(1)), [["cmd", ["a"], true]]);
    assert.match(df.warnings[0], /^Dockerfile:2: text after the JSON array ignored, as Docker does: b$/);
  });
  it("a JSON array of anything but strings is an error", () => {
    fails("FROM x\n\nCMD [1]\n", /^Error: Dockerfile:3: when using JSON array syntax, arrays must be comprised of strings only$/);
    fails('FROM x\nCOPY ["a", null]\n', /Dockerfile:2: when using JSON array/);
  });
});

describe("ENV, LABEL, ARG", () => {
  const table: [string, [string, string | null][]][] = [
    ["ENV A=1", [["A", "1"]]],
    [
      'ENV A="a b" B=c\\ d',
      [
        ["A", '"a b"'],
        ["B", "c\\ d"],
      ],
    ],
    ["ENV A b c", [["A", "b c"]]], // legacy: the rest of the line is the value
    ["ENV A  b  c ", [["A", "b  c"]]],
    ["ENV A=", [["A", ""]]],
    [
      "LABEL a=b \"c d\"='e f'",
      [
        ["a", "b"],
        ['"c d"', "'e f'"],
      ],
    ],
    ["LABEL version 1.0", [["version", "1.0"]]],
    [
      "ARG A B=1 C=",
      [
        ["A", null],
        ["B", "1"],
        ["C", ""],
      ],
    ],
    ['ARG A="x y"', [["A", '"x y"']]],
  ];
  for (const [text, kv] of table)
    it(text, () => {
      const i = one(text);
      assert.deepEqual(i.kv, kv);
    });
  it("errors as Docker's", () => {
    fails("FROM x\nENV A=1 B\n", /Dockerfile:2: Syntax error - can't find = in "B". Must be of the form: name=value/);
    fails("FROM x\nENV A\n", /Dockerfile:2: ENV must have two arguments/);
    fails("FROM x\nENV\n", /Dockerfile:2: ENV requires at least one argument/);
    fails("FROM x\nENV =1\n", /Dockerfile:2: ENV names can not be blank/);
    fails("FROM x\nLABEL\n", /LABEL requires at least one argument/);
    fails("FROM x\nARG\n", /ARG requires at least one argument/);
    fails("FROM x\nARG =1\n", /ARG names can not be blank/);
  });
});

describe("heredocs", () => {
  it("RUN <<EOF: the lines up to the delimiter", () => {
    const i = after("RUN <<EOF\necho a\n  EOF\nEOF\nRUN b\n");
    assert.deepEqual(shape(i), [
      ["run", ["<<EOF"], false],
      ["run", ["b"], false],
    ]);
    assert.deepEqual(i[0].heredocs, [{ name: "EOF", fd: 0, expand: true, chomp: false, content: "echo a\n  EOF\n" }]);
    assert.deepEqual([i[0].line, i[0].endLine], [2, 5]);
  });
  it("<<-EOF strips leading tabs from the lines and the delimiter", () => {
    const [h] = one("RUN <<-EOF\n\techo a\n\t\t\tb\n  c\n\tEOF\n").heredocs;
    assert.equal(h.content, "echo a\nb\n  c\n");
    assert.equal(h.chomp, true);
  });
  it("a quoted delimiter (or part of it) turns substitution off", () => {
    const table: [string, string, boolean][] = [
      ["<<EOF", "EOF", true],
      ["<<'EOF'", "EOF", false],
      ['<<"EOF"', "EOF", false],
      ["<<E'O'F", "EOF", false],
      ["<<-'EOF'", "EOF", false],
    ];
    for (const [w, name, expand] of table) {
      const [h] = one(`RUN cat ${w}\nx\n${name}\n`).heredocs;
      assert.deepEqual([h.name, h.expand], [name, expand], w);
    }
  });
  it("several on one line, read in order; a file descriptor", () => {
    const i = one("RUN cat <<A 3<<B - /dev/fd/3\na1\nA\nb1\nB\n");
    assert.deepEqual(
      i.heredocs.map((h) => [h.name, h.fd, h.content]),
      [
        ["A", 0, "a1\n"],
        ["B", 3, "b1\n"],
      ],
    );
  });
  it("COPY <<EOF /dst, ADD, and ONBUILD's RUN", () => {
    const i = after("COPY <<one <<two /dst/\n1\none\n2\ntwo\nADD <<X /x\nx\nX\nONBUILD RUN <<Y\ny\nY\n");
    assert.deepEqual(shape(i), [
      ["copy", ["<<one", "<<two", "/dst/"], false],
      ["add", ["<<X", "/x"], false],
      ["onbuild", ["RUN <<Y\ny\nY"], false],
    ]);
    assert.deepEqual(
      i.map((x) => x.heredocs.map((h) => h.content)),
      [["1\n", "2\n"], ["x\n"], ["y\n"]],
    );
  });
  it("none in JSON form or in other instructions", () => {
    assert.deepEqual(shape(after('RUN ["cat", "<<EOF"]\nENV A=<<EOF\n')), [
      ["run", ["cat", "<<EOF"], true],
      ["env", ["A", "<<EOF"], false],
    ]);
    assert.deepEqual(one("RUN a <<< b\n").heredocs, []);
  });
  it("unterminated, or as COPY's destination: errors", () => {
    fails("FROM x\nRUN <<EOF\nx\n", /^Error: Dockerfile:2: unterminated heredoc EOF$/);
    fails("FROM x\nCOPY a <<EOF\nx\nEOF\n", /Dockerfile:2: COPY cannot accept a heredoc as a destination/);
  });
});

describe("flags", () => {
  const table: [string, Record<string, unknown>][] = [
    ["COPY --from=build --chown=1:2 --chmod=644 --link a b", { from: "build", chown: "1:2", chmod: "644", link: true }],
    ["COPY --link=false --parents --exclude=*.o --exclude=x a b", { link: false, parents: true, exclude: ["*.o", "x"] }],
    ['COPY --from="a b" c d', { from: "a b" }],
    ['COPY "--from=a" b c', {}], // a flag starts with --
    ["ADD --chown=u --checksum=sha256:00 --keep-git-dir=true a b", { chown: "u", checksum: "sha256:00", "keep-git-dir": true }],
    [
      "RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --network=none x",
      {
        mount: ["type=cache,target=/c", "type=tmpfs,target=/t"],
        network: "none",
      },
    ],
    ["HEALTHCHECK --interval=1m30s --retries=3 CMD x", { interval: "1m30s", retries: "3" }],
    ["RUN -- --mount=x", {}],
    ["RUN -x --y", {}],
  ];
  for (const [text, flags] of table)
    it(text, () => {
      assert.deepEqual(one(text).flags, flags);
    });
  it("FROM --platform", () => {
    assert.deepEqual(insts("FROM --platform=$BUILDPLATFORM x AS y\n")[0].flags, { platform: "$BUILDPLATFORM" });
  });
  it("arguments after the flags", () => {
    assert.deepEqual(one("RUN -- --mount=x").args, ["--mount=x"]);
    assert.deepEqual(one("COPY --from=a --link b c").args, ["b", "c"]);
  });
  it("unknown, value-less, repeated or non-boolean flags are errors, as in Docker", () => {
    const table: [string, RegExp][] = [
      ["COPY --form=a b c", /unknown flag: form/],
      ["CMD --x=1 y", /unknown flag: x/],
      ["ENV --x=1 A=1", /unknown flag: x/],
      ["ARG --x=1 A", /unknown flag: x/],
      ["COPY --from a b", /missing a value on flag: from/],
      ["COPY --link= a b", /missing a value on flag: link/],
      ["COPY --from=a --from=b c d", /duplicate flag specified: from/],
      ["COPY --link=yes a b", /expecting boolean value for flag link, not: yes/],
      ["HEALTHCHECK --interval=5 CMD x", /invalid duration "5"/],
      ["HEALTHCHECK --retries=-1 CMD x", /--retries cannot be negative/],
    ];
    for (const [text, re] of table) {
      fails(`FROM x\n${text}\n`, re);
      assert.throws(() => parse(`FROM x\n${text}\n`), /^Error: Dockerfile:2: /);
    }
  });
});

describe("instructions", () => {
  it("FROM: one or three arguments, a valid lower-cased stage name", () => {
    fails("FROM\n", /Dockerfile:1: FROM requires either one or three arguments/);
    fails("FROM a b\n", /FROM requires either one or three arguments/);
    fails("FROM a AS 1b\n", /invalid name for build stage: "1b", name can't start with a number or contain symbols/);
    fails("FROM a AS b/c\n", /invalid name for build stage/);
    assert.deepEqual(insts("FROM a as B-1.x_y\n")[0].args, ["a", "as", "B-1.x_y"]);
  });
  it("ONBUILD keeps the instruction as written; ONBUILD ONBUILD, FROM, MAINTAINER refused", () => {
    const i = one("ONBUILD  copy --from=a  x y");
    assert.deepEqual(i.args, ["copy --from=a  x y"]);
    assert.deepEqual(i.trigger, { keyword: "copy", flags: ["--from=a"], args: ["x", "y"], json: false });
    fails("FROM x\nONBUILD ONBUILD RUN x\n", /Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed/);
    fails("FROM x\nONBUILD from y\n", /FROM isn't allowed as an ONBUILD trigger/);
    fails("FROM x\nONBUILD MAINTAINER y\n", /MAINTAINER isn't allowed as an ONBUILD trigger/);
    fails("FROM x\nONBUILD\n", /ONBUILD requires at least one argument/);
  });
  it("argument counts", () => {
    const table: [string, RegExp][] = [
      ["COPY a", /COPY requires at least two arguments, but only one was provided/],
      ["ADD a", /ADD requires at least two arguments/],
      ["WORKDIR", /WORKDIR requires exactly one argument/],
      ["USER", /USER requires exactly one argument/],
      ["STOPSIGNAL", /STOPSIGNAL requires exactly one argument/],
      ["MAINTAINER", /MAINTAINER requires exactly one argument/],
      ["EXPOSE", /EXPOSE requires at least one argument/],
      ["VOLUME", /VOLUME requires at least one argument/],
      ['VOLUME [" "]', /VOLUME specified can not be an empty string/],
      ["SHELL /bin/sh -c", /SHELL requires the arguments to be in JSON form/],
      ["SHELL []", /SHELL requires at least one argument/],
      ["HEALTHCHECK", /HEALTHCHECK requires at least one argument/],
      ["HEALTHCHECK NONE x", /HEALTHCHECK NONE takes no arguments/],
      ["HEALTHCHECK CMD", /Missing command after HEALTHCHECK CMD/],
      ["HEALTHCHECK WHAT x", /Unknown type "WHAT" in HEALTHCHECK \(try CMD\)/],
    ];
    for (const [text, re] of table) fails(`FROM x\n${text}\n`, re);
  });
  it("errors name FILE:LINE (the instruction's first line) and come before anything else", () => {
    fails("FROM x\nRUN a \\\n  b\nFROOM y\n", /^Error: Dockerfile:4: unknown instruction: FROOM$/);
    fails("RUN x\nFROM y\n", /^Error: Dockerfile:1: no build stage in current context/);
    fails("\n# only a comment\n", /^Error: Dockerfile:2: file with no instructions$/);
    fails("", /Dockerfile:1: file with no instructions/);
    fails("ARG A=1\n", /Dockerfile:1: dockerfile contains no stages to build/);
    assert.throws(() => parseDockerfile("FROM x\nBAD\n", "sub/Dockerfile.foo"), /^Error: sub\/Dockerfile.foo:2: /);
  });
  it("ARG before FROM is allowed", () => {
    assert.deepEqual(shape(insts("ARG A=1\nFROM x\n")), [
      ["arg", ["A=1"], false],
      ["from", ["x"], false],
    ]);
  });
});

describe("parseWords (quotes kept, escapes kept)", () => {
  const table: [string, string[]][] = [
    ["a b  c", ["a", "b", "c"]],
    ['a="b c" d', ['a="b c"', "d"]],
    ["a='b \\' c", ["a='b \\'", "c"]],
    ['a="b \\" c"', ['a="b \\" c"']],
    ["a\\ b c", ["a\\ b", "c"]],
    ['""', ['""']],
    ["a\\", ["a"]],
  ];
  for (const [text, words] of table)
    it(text, () => {
      assert.deepEqual(parseWords(text, "\\"), words);
    });
});

describe("stages", () => {
  const plan = (text: string, buildArgs: string[] = [], target: string | null = null) =>
    planStages(parse(text), new BuildArgs(buildArgs), target, new Map());
  it("FROM an image, scratch, a global ARG, an earlier stage (case-insensitive)", () => {
    const p = plan("ARG V=3.19\nFROM alpine:$V AS Base\nFROM scratch\nFROM base\nFROM ${NONE:-debian}\n");
    assert.deepEqual(
      p.stages.map((s) => [s.name, s.base, s.source]),
      [
        ["base", "alpine:3.19", { kind: "image", ref: "alpine:3.19" }],
        [null, "scratch", { kind: "scratch" }],
        [null, "base", { kind: "stage", index: 0 }],
        [null, "debian", { kind: "image", ref: "debian" }],
      ],
    );
    assert.deepEqual(p.order, [3]);
    assert.equal(plan("ARG V=3.19\nFROM alpine:$V\n", ["V=edge"]).stages[0].base, "alpine:edge");
  });
  it("FROM names only an earlier stage", () => {
    const p = plan("FROM later AS first\nFROM x AS later\nFROM first\n");
    assert.deepEqual(p.stages[0].source, { kind: "image", ref: "later" });
  });
  it("builds only what the target needs, dependencies first", () => {
    const text = `FROM a AS unused
RUN x
FROM b AS lib
FROM c AS tool
FROM lib AS mid
COPY --from=tool /t /t
FROM scratch
COPY --from=mid /m /m
COPY --from=2 /l /l
COPY --from=registry.example/img:1 /i /i
RUN --mount=type=bind,from=unused2,target=/x true
`;
    const p = plan(text);
    assert.deepEqual(p.order, [1, 2, 3, 4]);
    assert.deepEqual(p.stages[4].needs, [3, 2]);
    assert.deepEqual(p.stages[4].images, ["registry.example/img:1", "unused2"]);
    assert.deepEqual(plan(text, [], "tool").order, [2]);
    assert.deepEqual(plan(text, [], "MID").order, [1, 2, 3]);
    assert.throws(() => plan(text, [], "nope"), /target stage "nope" could not be found/);
  });
  it("COPY --from a later stage, RUN --mount from=, substituted --from", () => {
    const p = plan(
      "FROM a\nARG S=two\nCOPY --from=$S x y\nRUN --mount=from=three true\nFROM b AS two\nFROM c AS three\n",
      [],
      null,
    );
    assert.equal(p.target, 2);
    assert.deepEqual(plan("FROM a\nARG S=two\nCOPY --from=$S x y\nFROM b AS two\nFROM c\nCOPY --from=0 a b\n").order, [1, 0, 2]);
  });
  it("refuses bad stage indexes and circular dependencies", () => {
    assert.throws(() => plan("FROM a\nCOPY --from=1 x y\n"), /^Error: Dockerfile:2: invalid stage index 1$/);
    assert.throws(() => plan("FROM a\nCOPY --from=-1 x y\n"), /invalid stage index -1/);
    assert.throws(() => plan("FROM a AS s\nCOPY --from=s x y\n"), /Dockerfile:2: circular dependency detected on stage: s/);
    assert.throws(
      () => plan("FROM a AS one\nCOPY --from=two x y\nFROM b AS two\nCOPY --from=one x y\n"),
      /circular dependency detected on stage: (one|two)/,
    );
  });
  it("FROM errors: blank after substitution, substitution failure", () => {
    assert.throws(() => plan("ARG A\nFROM $A\n"), /^Error: Dockerfile:2: base name \(\$A\) should not be blank$/);
    assert.throws(() => plan("FROM ${A:?set_A}\n"), /Dockerfile:1: failed to process .*A: set_A/);
  });
  it("warns about a repeated stage name; the later one wins for --from", () => {
    const p = plan("FROM a AS x\nFROM b AS x\nFROM c\nCOPY --from=x a b\n");
    assert.match(p.warnings[0], /Dockerfile:2: duplicate stage name "x"/);
    assert.deepEqual(p.order, [1, 2]);
  });
});
