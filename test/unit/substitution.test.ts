// biome-ignore-all lint/suspicious/noTemplateCurlyInString: the strings are Dockerfile text, not templates
// Variable substitution and scope, table by table against Docker's documented behaviour (its
// builder's shell-lexer test vectors and the Dockerfile reference's ARG/ENV examples).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseDockerfile } from "../../src/builder/dockerfile.ts";
import { expandWord, expandWords } from "../../src/builder/shell.ts";
import { planStages } from "../../src/builder/stages.ts";
import { BuildArgs, expandInstruction, globalArgs, platformArgs, StageScope } from "../../src/builder/vars.ts";

const ENV = new Map([
  ["PWD", "/home"],
  ["SHELL", "bash"],
  ["KOREAN", "한국어"],
  ["EMPTY", ""],
]);

// [input, expected]; null: an error.
const WORDS: [string, string | null][] = [
  ["hello", "hello"],
  ["he'll'o", "hello"],
  ["he'llo", null],
  ["he\\'llo", "he'llo"],
  ["he\\\\'llo", null],
  ["abc\\tdef", "abctdef"],
  ['"abc\\tdef"', "abc\\tdef"],
  ['"abc\\\\tdef"', "abc\\tdef"],
  ["'abc\\tdef'", "abc\\tdef"],
  ["hello\\", "hello"],
  ["hello\\\\", "hello\\"],
  ['"hello', null],
  ['"hello\\"', null],
  ['"hel\'lo"', "hel'lo"],
  ["'hello", null],
  ["'hello\\'", "hello\\"],
  ["'hello\\\\there'", "hello\\\\there"],
  [`"''"`, "''"],
  ["$.", "$."],
  ["$1", ""],
  ["he$1x", "hex"],
  ["he$.x", "he$.x"],
  ["he$pwd.", "he."], // names are case-sensitive
  ["he$PWD", "he/home"],
  ["he\\$PWD", "he$PWD"],
  ["he\\\\$PWD", "he\\/home"],
  ['"he\\$PWD"', "he$PWD"],
  ['"he\\\\$PWD"', "he\\/home"],
  ["\\${}", "${}"],
  ["he\\${}xx", "he${}xx"],
  ["${}", null],
  ["he${}xx", null],
  ["he${hi}xx", "hexx"],
  ["he${PWD}", "he/home"],
  ["he${.}", null],
  ["he${XXX:-000}xx", "he000xx"],
  ["he${PWD:-000}xx", "he/homexx"],
  ["he${XXX:-$PWD}xx", "he/homexx"],
  ["he${XXX:-${PWD:-yyy}}xx", "he/homexx"],
  ["he${XXX:-${YYY:-yyy}}xx", "heyyyxx"],
  ["he${XXX:YYY}", null],
  ["he${XXX:+${PWD}}xx", "hexx"],
  ["he${PWD:+${XXX}}xx", "hexx"],
  ["he${PWD:+${SHELL}}xx", "hebashxx"],
  ["he${XXX:+000}xx", "hexx"],
  ["he${PWD:+000}xx", "he000xx"],
  ["'he${XX}'", "he${XX}"],
  ['"he${PWD}"', "he/home"],
  [`"he'$PWD'"`, "he'/home'"],
  ['"$PWD"', "/home"],
  ["'$PWD'", "$PWD"],
  ["'\\$PWD'", "\\$PWD"],
  [`'"hello"'`, '"hello"'],
  ["he${PWD", null],
  ["he${PWD:=000}xx", null],
  ["he${PWD:+${PWD}:}xx", "he/home:xx"],
  ["he${XXX:-\\$PWD:}xx", "he$PWD:xx"],
  ["he${XXX:-\\${PWD}z}xx", "he${PWDz}xx"],
  ["안녕$KOREAN", "안녕한국어"],
  ["안'녕'하세요", "안녕하세요"],
  ["${{aaa}", null],
  ["${aaa}}", "}"],
  ["${aaa", null],
  ["${aaa:-bbb}}", "bbb}"],
  ["${aaa:-bbb", null],
  ["${aaa:-${bbb:-ccc}}", "ccc"],
  ["${aaa:-bbb ${foo}", null],
  ["${aaa:-bbb {foo}", "bbb {foo"],
  ["${:}", null],
  ["${:-bbb}", null],
  ["${:+bbb}", null],
  // Without the colon, only unset counts (set but empty doesn't).
  ["${EMPTY-x}", ""],
  ["${EMPTY:-x}", "x"],
  ["${NONE-x}", "x"],
  ["${EMPTY+x}", "x"],
  ["${EMPTY:+x}", ""],
  ["${NONE+x}", ""],
  ["${PWD?}", "/home"],
  ["${NONE?}", null],
  ["${EMPTY?}", ""],
  ["${EMPTY:?}", null],
  // Patterns: # and % shortest, ## and %% longest, / first and // all.
  ["${PWD#/h}", "ome"],
  ["${PWD#*o}", "me"],
  ["${SHELL##*[}", "bash"],
  ["${KOREAN#한}", "국어"],
  ["${PWD%e}", "/hom"],
  ["${PWD%o*}", "/h"],
  ["${PWD%%/*}", ""],
  ["${SHELL/a/A}", "bAsh"],
  ["${SHELL//[a-z]/x}", "bash"],
  ["${PWD//o?/_}", "/h_e"],
  ["${SHELL//\\*/x}", "bash"],
  ["${NONE#x}", ""],
  ["${PWD:#x}", null],
  ["${PWD=x}", null],
];

describe("substitution (Docker's shell lexer)", () => {
  for (const [input, want] of WORDS)
    it(`${input} → ${want ?? "error"}`, () => {
      if (want === null) assert.throws(() => expandWord(input, ENV), /failed to process/);
      else assert.equal(expandWord(input, ENV), want);
    });

  it("names the problem", () => {
    assert.throws(() => expandWord("${NONE?must be set}", ENV), /NONE: must be set$/);
    assert.throws(() => expandWord("${NONE?}", ENV), /NONE: is not allowed to be unset$/);
    assert.throws(() => expandWord("${EMPTY:?}", ENV), /EMPTY: is not allowed to be empty$/);
    assert.throws(() => expandWord("${PWD", ENV), /failed to process "\$\{PWD": syntax error: missing '\}'/);
    assert.throws(() => expandWord("${}", ENV), /bad substitution/);
    assert.throws(() => expandWord("${X:=y}", ENV), /unsupported modifier \(:=\)/);
  });

  it("splits words after substitution, not inside quotes", () => {
    const vars = new Map([["V", "a  b"]]);
    assert.deepEqual(expandWords("x $V 'c d' \"e $V\"", vars), ["x", "a", "b", "c d", "e a  b"]);
    assert.deepEqual(expandWords("  80/tcp   ${P:-443}  ", vars), ["80/tcp", "443"]);
    assert.deepEqual(expandWords('a "" b', vars), ["a", "b"]);
  });

  it("uses the escape directive's character", () => {
    assert.equal(expandWord("C:\\dir`$PWD", ENV, { escape: "`" }), "C:\\dir$PWD");
    assert.equal(expandWord('"a`"b"', ENV, { escape: "`" }), 'a"b');
  });

  it("can leave unset variables and quotes as written (heredoc delimiters)", () => {
    assert.equal(expandWord("$X${Y}${Z:-w}", ENV, { skipUnset: true }), "$X${Y}${Z:-w}");
    assert.deepEqual(expandWords("'E'O\"F\"", undefined, { rawQuotes: true }), ["'E'O\"F\""]);
  });

  it("treats quotes as text in COPY heredoc content", () => {
    assert.equal(expandWord("say \"$SHELL\" '$PWD'\n", ENV, { skipQuotes: true }), "say \"bash\" '/home'\n");
  });
});

/** The stage scope after its instructions, for a one-stage Dockerfile. */
function scopeAfter(text: string, buildArgs: string[] = [], env: Record<string, string> = {}) {
  const df = parseDockerfile(text, "Dockerfile");
  const args = new BuildArgs(buildArgs, env);
  const first = df.instructions.findIndex((i) => i.keyword === "from");
  const globals = globalArgs(df.instructions.slice(0, first), args, new Map());
  const scope = new StageScope(globals, args, [["PATH", "/bin"]]);
  const out = df.instructions.slice(first + 1).map((i) => scope.apply(i));
  return { scope, out, args };
}

describe("which instructions Docker substitutes", () => {
  const text = `FROM x
ENV V=val D=/dir P=80
ADD $V $D/
COPY --chown=$V:$V --chmod=$P --from=$V $V $D/
ENV E=$V
EXPOSE $P \${P}/udp
LABEL $V=$V
STOPSIGNAL $V
USER $V
VOLUME $D
WORKDIR $D
ONBUILD RUN $V
RUN echo $V
CMD echo $V
ENTRYPOINT ["$V"]
SHELL ["$V"]
HEALTHCHECK CMD $V
RUN --mount=type=bind,from=$V,target=$D,'"source=$D,b"' true
`;
  const { out } = scopeAfter(text);
  const by = (k: string) => out.filter((e) => e.inst.keyword === k);
  it("ADD COPY (and their flags) ENV EXPOSE LABEL STOPSIGNAL USER VOLUME WORKDIR, RUN --mount", () => {
    assert.deepEqual(by("add")[0].args, ["val", "/dir/"]);
    const copy = by("copy")[0];
    assert.deepEqual(copy.args, ["val", "/dir/"]);
    assert.deepEqual(copy.flags, { chown: "val:val", chmod: "80", from: "val" });
    assert.deepEqual(by("env")[1].kv, [["E", "val"]]);
    assert.deepEqual(by("expose")[0].args, ["80", "80/udp"]);
    assert.deepEqual(by("label")[0].kv, [["val", "val"]]);
    for (const k of ["stopsignal", "user"]) assert.deepEqual(by(k)[0].args, ["val"]);
    for (const k of ["volume", "workdir"]) assert.deepEqual(by(k)[0].args, ["/dir"]);
    assert.deepEqual(by("run")[1].flags.mount, ['type=bind,from=val,target=/dir,"source=/dir,b"']);
  });
  it("not ONBUILD RUN CMD ENTRYPOINT SHELL HEALTHCHECK", () => {
    assert.deepEqual(by("onbuild")[0].args, ["RUN $V"]);
    assert.deepEqual(by("run")[0].args, ["echo $V"]);
    assert.deepEqual(by("cmd")[0].args, ["echo $V"]);
    for (const k of ["entrypoint", "shell"]) assert.deepEqual(by(k)[0].args, ["$V"]);
    assert.deepEqual(by("healthcheck")[0].args, ["CMD", "$V"]);
  });
  it("every pair of one ENV sees the variables before the line", () => {
    // Dockerfile reference: ENV abc=hello / ENV abc=bye def=$abc / ENV ghi=$abc
    const { scope } = scopeAfter("FROM x\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n");
    assert.equal(scope.vars.get("def"), "hello");
    assert.equal(scope.vars.get("ghi"), "bye");
  });
  it("removes quotes in ENV values, keeps the legacy form's rest of line", () => {
    const { scope } = scopeAfter("FROM x\nENV A=\"a b\" B='$PWD' C=x\\ y\nENV D  one  two \n");
    assert.deepEqual([...scope.imageEnv].slice(1), [
      ["A", "a b"],
      ["B", "$PWD"],
      ["C", "x y"],
      ["D", "one  two"],
    ]);
  });
  it("substitutes a COPY heredoc only when its delimiter isn't quoted", () => {
    const { out } = scopeAfter('FROM x\nENV V=val\nCOPY <<A <<"B" /d/\n"$V"\nA\n$V\nB\n');
    assert.deepEqual(out[1].args, ["<<A", '<<"B"', "/d/"]);
    assert.deepEqual(
      out[1].heredocs.map((h) => h.content),
      ['"val"\n', "$V\n"],
    );
  });
  it("names FILE:LINE when substitution fails", () => {
    assert.throws(() => scopeAfter("FROM x\n\nWORKDIR ${D:?no dir}\n"), /^Error: Dockerfile:3: failed to process .*D: no dir$/);
  });
});

describe("ARG scope (Dockerfile reference)", () => {
  it("a global ARG is for FROM only, unless the stage declares it again", () => {
    const df = parseDockerfile("ARG V=1\nARG IMG=alp${V}\nFROM $IMG\nUSER ${V:-none}\nARG V\nUSER $V\n", "Dockerfile");
    const plan = planStages(df, new BuildArgs(), null, new Map());
    assert.equal(plan.stages[0].base, "alp1");
    const scope = new StageScope(plan.globals, new BuildArgs());
    const users = plan.stages[0].instructions.map((i) => scope.apply(i)).filter((e) => e.inst.keyword === "user");
    assert.deepEqual(
      users.map((e) => e.args[0]),
      ["none", "1"],
    );
  });
  it("an ARG takes effect from its line; --build-arg beats the default", () => {
    // Reference: USER ${username:-some_user} / ARG username / USER $username
    const text = "FROM x\nUSER ${username:-some_user}\nARG username\nUSER $username\nARG d=def\nUSER $d\n";
    const users = (o: ReturnType<typeof scopeAfter>) => o.out.filter((e) => e.inst.keyword === "user").map((e) => e.args[0]);
    assert.deepEqual(users(scopeAfter(text)), ["some_user", "", "def"]);
    assert.deepEqual(users(scopeAfter(text, ["username=what_user", "d=given"])), ["some_user", "what_user", "given"]);
  });
  it("an ARG default is substituted; a later ENV or ARG of the same name wins", () => {
    const { scope } = scopeAfter("FROM x\nARG A=a\nARG B=${A}b\nENV A=env\nARG C=$A\nARG A=arg\n");
    assert.equal(scope.vars.get("B"), "ab");
    assert.equal(scope.vars.get("C"), "env");
    assert.equal(scope.vars.get("A"), "arg");
    assert.equal(scope.imageEnv.get("A"), "env"); // only ENV goes in the image
    assert.equal(scope.imageEnv.has("B"), false);
  });
  it("an ARG without a value and without --build-arg is unset", () => {
    const { scope } = scopeAfter("FROM x\nARG A\nENV B=${A-unset}\n");
    assert.equal(scope.vars.has("A"), false);
    assert.equal(scope.vars.get("B"), "unset");
  });
  it("--build-arg KEY takes the environment's value; none is an error", () => {
    const { scope } = scopeAfter("FROM x\nARG K\n", ["K"], { K: "from-env" });
    assert.equal(scope.vars.get("K"), "from-env");
    assert.throws(() => new BuildArgs(["K"], {}), /--build-arg: K: no value and not in environment/);
    assert.equal(new BuildArgs(["K=a=b"]).get("K"), "a=b");
    assert.equal(new BuildArgs(["K="]).get("K"), "");
    assert.throws(() => new BuildArgs(["=v"]), /invalid name/);
  });
  it("warns about a --build-arg no ARG of a built stage declares", () => {
    const df = parseDockerfile("ARG G\nFROM x AS unused\nARG U\nFROM y\nARG S\n", "Dockerfile");
    const plan = planStages(df, new BuildArgs(["G=1", "S=2", "U=3", "NOPE=4", "HTTP_PROXY=p"]), null, new Map());
    assert.deepEqual(plan.warnings, ["one or more build-args were not consumed: U, NOPE"]);
  });
  it("a stage built FROM another keeps its ENV and ARGs", () => {
    const df = parseDockerfile("FROM x AS a\nARG A=1\nENV E=2\nFROM a\nCOPY --from=img${A}${E} s d\n", "Dockerfile");
    const plan = planStages(df, new BuildArgs(), null, new Map());
    assert.deepEqual(plan.stages[1].images, ["img12"]);
  });
});

describe("predefined ARGs", () => {
  it("proxy variables come from the environment or --build-arg, reach RUN, never the image", () => {
    const host = { HTTP_PROXY: "http://env:3128", no_proxy: "localhost", HOME: "/home/u" };
    const { scope } = scopeAfter("FROM x\nENV A=1\n", ["https_proxy=http://arg:3128"], host);
    const run = scope.runEnv();
    assert.equal(run.get("HTTP_PROXY"), "http://env:3128");
    assert.equal(run.get("https_proxy"), "http://arg:3128");
    assert.equal(run.get("no_proxy"), "localhost");
    assert.equal(run.has("HOME"), false);
    assert.deepEqual([...scope.imageEnv.keys()], ["PATH", "A"]);
    // Declared, the environment gives its value to substitution too.
    const d = scopeAfter("FROM x\nARG HTTP_PROXY\nENV P=$HTTP_PROXY\n", [], host).scope;
    assert.equal(d.vars.get("P"), "http://env:3128");
    assert.equal(d.imageEnv.has("HTTP_PROXY"), false);
  });
  it("platform ARGs are global: FROM sees them, a stage after ARG NAME", () => {
    assert.equal(platformArgs("x64").get("TARGETPLATFORM"), "linux/amd64");
    assert.equal(platformArgs("arm64").get("BUILDARCH"), "arm64");
    assert.equal(platformArgs("arm64").get("TARGETVARIANT"), "");
    assert.equal(platformArgs("arm").get("TARGETVARIANT"), "v7");
    const df = parseDockerfile("FROM img-$TARGETARCH\nENV A=${TARGETOS:-none}\nARG TARGETOS\nENV B=$TARGETOS\n", "D");
    const plan = planStages(df, new BuildArgs(), null, platformArgs("x64"));
    assert.equal(plan.stages[0].base, "img-amd64");
    const scope = new StageScope(plan.globals, new BuildArgs());
    for (const i of plan.stages[0].instructions) scope.apply(i);
    assert.deepEqual([scope.vars.get("A"), scope.vars.get("B")], ["none", "linux"]);
  });
});

describe("expandInstruction", () => {
  it("leaves instructions alone when nothing is in scope", () => {
    const [inst] = parseDockerfile("FROM x\nRUN a\n", "D").instructions.slice(1);
    const e = expandInstruction(inst, new Map());
    assert.deepEqual(e.args, ["a"]);
  });
});
