// Image names in storage: every spelling of one reference is one name (and one directory), the
// one name check refuses what would make an odd directory, and the storage safety check refuses
// what another user could have made or can write.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { globRegExp, imageName, isGlob, nameToDir, type StatFacts, unsafe, validImageName } from "../../src/image/storage.ts";
import { canonical, fullRef, parseRef, refString, storageName } from "../../src/registry/reference.ts";
import { ChError } from "../../src/sys/errors.ts";

const HEX = "0123456789abcdef".repeat(4);

describe("storage names of references", () => {
  // [spellings..., storage name, directory in img/]
  const same: [string[], string, string][] = [
    [
      [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "library/busybox:latest",
        "docker.io/busybox",
        "docker.io/library/busybox:latest",
        "index.docker.io/library/busybox",
        "registry-1.docker.io/library/busybox",
        "registry-1.docker.io:443/library/busybox:latest",
        "Docker.IO/library/busybox",
        "docker.io:443/busybox",
      ],
      "busybox:latest",
      "busybox+latest",
    ],
    [["alpine:3.19", "library/alpine:3.19", "docker.io/library/alpine:3.19"], "alpine:3.19", "alpine+3.19"],
    [["user/image", "user/image:latest", "docker.io/user/image"], "user/image:latest", "user%image+latest"],
    [["a/b/c:1", "registry-1.docker.io:443/a/b/c:1"], "a/b/c:1", "a%b%c+1"],
    [["127.0.0.1:5000/bb", "127.0.0.1:5000/bb:latest"], "127.0.0.1:5000/bb:latest", "127.0.0.1+5000%bb+latest"],
    [["example.com/x", "example.com:443/x", "EXAMPLE.com/x:latest"], "example.com/x:latest", "example.com%x+latest"],
    [["localhost/x", "localhost:443/x:latest"], "localhost/x:latest", "localhost%x+latest"],
    // Only Docker Hub has an implied "library/".
    [["quay.io/library/x"], "quay.io/library/x:latest", "quay.io%library%x+latest"],
    // A digest is a version of its own: no tag added.
    [[`busybox@sha256:${HEX}`, `docker.io/library/busybox@sha256:${HEX}`], `busybox@sha256:${HEX}`, `busybox@sha256+${HEX}`],
    [[`busybox:1@sha256:${HEX}`], `busybox:1@sha256:${HEX}`, `busybox+1@sha256+${HEX}`],
  ];

  it("gives every spelling of one image the same name, with tag latest and Docker Hub implied", () => {
    for (const [spellings, name, dir] of same)
      for (const s of spellings) {
        assert.equal(storageName(parseRef(s)), name, s);
        assert.equal(imageName(s), name, s);
        assert.equal(nameToDir(imageName(s)), dir, s);
      }
  });

  it("names a storage name by itself, and never by another image's name", () => {
    const names = same.map(([, n]) => n);
    for (const n of names) assert.equal(imageName(n), n, n);
    assert.equal(new Set(names).size, names.length);
  });

  it("keeps what is not a default: other ports, hosts without a dot, other tags, other paths", () => {
    const kept: [string, string][] = [
      ["docker.io:5000/busybox", "docker.io:5000/busybox:latest"],
      ["registry-1.docker.io:80/library/x", "registry-1.docker.io:80/library/x:latest"],
      // Without the port, "examplecom" would read as a path component: the port stays.
      ["examplecom:443/x", "examplecom:443/x:latest"],
      ["busybox:1.36", "busybox:1.36"],
      ["library/library/x", "library/library/x:latest"],
      ["other/busybox", "other/busybox:latest"],
    ];
    for (const [text, name] of kept) assert.equal(imageName(text), name, text);
    assert.notEqual(imageName("busybox"), imageName("busybox:1"));
    assert.notEqual(imageName("busybox"), imageName("quay.io/busybox"));
    assert.notEqual(imageName("busybox"), imageName("127.0.0.1:5000/busybox"));
  });

  it("still talks to the registry with every default filled in", () => {
    assert.equal(fullRef(parseRef(imageName("busybox"))), "registry-1.docker.io:443/library/busybox:latest");
    assert.equal(fullRef(parseRef(imageName("Docker.IO/x/y"))), "registry-1.docker.io:443/x/y:latest");
    assert.equal(fullRef(parseRef(imageName("127.0.0.1:5000/bb"))), "127.0.0.1:5000/bb:latest");
  });
});

describe("the one image name check", () => {
  it("refuses empty and odd names, saying why", () => {
    const bad: [string, RegExp][] = [
      ["", /invalid image name: "": empty/],
      [".", /invalid image name: \.: image ref syntax/],
      ["..", /invalid image name: \.\.: image ref syntax/],
      ["../x", /invalid image name: \.\.\/x: image ref syntax, char 1/],
      ["a/../b", /image ref syntax/],
      ["/abs", /image ref syntax, char 1/],
      ["x/", /image ref syntax, at end/],
      ["a//b", /image ref syntax/],
      ["a%b", /"%" and "\+" are not allowed/],
      ["a+b", /"%" and "\+" are not allowed/],
      ["Upper", /image ref syntax, char 1/],
      ["a b", /image ref syntax/],
      ["a\0b", /image ref syntax/],
      ["a:", /image ref syntax/],
      ["a@sha256:abc", /image ref syntax/],
      ["-x", /image ref syntax/],
      [".hidden", /image ref syntax/],
      // A tag that would make the directory look like an interrupted write (TARGET.partial-HOST.PID).
      ["foo:x.partial-h.1", /not usable as a directory name: foo\+x\.partial-h\.1/],
    ];
    for (const [text, re] of bad) {
      assert.throws(() => imageName(text), re, JSON.stringify(text));
      assert.equal(validImageName(text), false, JSON.stringify(text));
    }
  });

  it("gives a directory name that is one plain component", () => {
    for (const text of ["a", "a/b/c:d", "h.io:1/p/n@sha256:".concat(HEX), "localhost/x"]) {
      const dir = nameToDir(imageName(text));
      assert.ok(!dir.includes("/") && dir !== "." && dir !== ".." && !dir.startsWith("."), dir);
    }
  });
});

describe("storage safety check", () => {
  const UID = 1001;
  const facts = (o: { uid?: number; mode?: number; type?: "dir" | "file" | "link" }): StatFacts => ({
    uid: o.uid ?? UID,
    mode: o.mode ?? 0o40755,
    isDirectory: () => (o.type ?? "dir") === "dir",
    isFile: () => o.type === "file",
    isSymbolicLink: () => o.type === "link",
  });

  it("accepts a directory or file of the user's, writable by the user alone", () => {
    assert.equal(unsafe(facts({ mode: 0o40700 }), UID, "directory"), null);
    assert.equal(unsafe(facts({ mode: 0o40755 }), UID, "directory"), null);
    assert.equal(unsafe(facts({ mode: 0o100644, type: "file" }), UID, "file"), null);
  });

  it("refuses what another user owns, even if nobody else can write it", () => {
    assert.equal(unsafe(facts({ uid: 1002, mode: 0o40700 }), UID, "directory"), "is owned by UID 1002, not by you (UID 1001)");
    assert.equal(unsafe(facts({ uid: 0 }), UID, "directory"), "is owned by UID 0, not by you (UID 1001)");
    assert.match(unsafe(facts({ uid: 1002, type: "file", mode: 0o100600 }), UID, "file") ?? "", /owned by UID 1002/);
  });

  it("refuses what group or others can write, sticky or not", () => {
    assert.equal(unsafe(facts({ mode: 0o40777 }), UID, "directory"), "is writable by group and others (mode 0777)");
    assert.equal(unsafe(facts({ mode: 0o41777 }), UID, "directory"), "is writable by group and others (mode 1777)");
    assert.equal(unsafe(facts({ mode: 0o40757 }), UID, "directory"), "is writable by others (mode 0757)");
    assert.equal(unsafe(facts({ mode: 0o40775 }), UID, "directory"), "is writable by group (mode 0775)");
    assert.equal(unsafe(facts({ mode: 0o100666, type: "file" }), UID, "file"), "is writable by group and others (mode 0666)");
  });

  it("refuses symlinks and the wrong kind of file", () => {
    assert.equal(unsafe(facts({ type: "link", mode: 0o120777 }), UID, "directory"), "is a symbolic link");
    assert.equal(unsafe(facts({ type: "link", mode: 0o120777 }), UID, "file"), "is a symbolic link");
    assert.equal(unsafe(facts({ type: "file", mode: 0o100644 }), UID, "directory"), "is not a directory");
    assert.equal(unsafe(facts({ type: "dir" }), UID, "file"), "is not a regular file");
  });
});

describe("delete's globs (Python's fnmatch, over directory names)", () => {
  const matches = (glob: string, names: string[]) => names.filter((n) => globRegExp(glob).test(n));
  const names = ["foo+latest", "foo+1.0", "foobar+latest", "a%b+latest", "a%c%d+latest", "x.y+1", "[odd]", "f*o"];

  it("has *, ?, [SET] and [!SET]; the rest is literal", () => {
    assert.deepEqual(matches("foo*", names), ["foo+latest", "foo+1.0", "foobar+latest"]);
    assert.deepEqual(matches("foo+*", names), ["foo+latest", "foo+1.0"]);
    assert.deepEqual(
      matches("a%*", names),
      ["a%b+latest", "a%c%d+latest"],
      "* crosses %: a/* takes a/c/d too, as Charliecloud's",
    );
    assert.deepEqual(matches("?.y+1", names), ["x.y+1"]);
    assert.deepEqual(matches("x?y+1", names), ["x.y+1"]);
    assert.deepEqual(matches("x.y+?", names), ["x.y+1"]);
    assert.deepEqual(matches("xxy+1", names), [], ". is literal");
    assert.deepEqual(matches("a%[bc]*", names), ["a%b+latest", "a%c%d+latest"]);
    assert.deepEqual(matches("a%[!b]*", names), ["a%c%d+latest"]);
    assert.deepEqual(matches("[[]odd]", names), ["[odd]"]);
    assert.deepEqual(matches("[]", names), [], "an unclosed [ is literal");
    assert.deepEqual(matches("f[*]o", names), ["f*o"]);
    assert.deepEqual(matches("(.*)", [".*", "(.*)", "x"]), ["(.*)"], "regular expression syntax is literal");
    assert.deepEqual(matches("a\\b", ["a\\b", "ab"]), ["a\\b"]);
  });

  it("tells globs from names", () => {
    for (const g of ["a*", "a?", "a[b]"]) assert.ok(isGlob(g), g);
    for (const g of ["a", "a/b:1", "a%b", ".."]) assert.ok(!isGlob(g), g);
  });
});

describe("registry of references without a host ($CH_REGY_DEFAULT_HOST, _PORT, $CH_REGY_PATH_PREFIX)", () => {
  const full = (ref: string, env: Record<string, string>) => refString(canonical(parseRef(ref), env));

  it("is Docker Hub by default, else the host, port (443) and path prefix given", () => {
    assert.equal(full("alpine", {}), "registry-1.docker.io:443/library/alpine:latest");
    assert.equal(full("alpine", { CH_REGY_DEFAULT_HOST: "reg.example.com" }), "reg.example.com:443/alpine:latest");
    assert.equal(
      full("a/b:1", { CH_REGY_DEFAULT_HOST: "Reg.Example.com", CH_REGY_DEFAULT_PORT: "5000" }),
      "reg.example.com:5000/a/b:1",
    );
    assert.equal(
      full("alpine", { CH_REGY_DEFAULT_HOST: "reg.example.com", CH_REGY_PATH_PREFIX: "mirror/hub/" }),
      "reg.example.com:443/mirror/hub/alpine:latest",
    );
    // Docker Hub given as the default still has its library/.
    assert.equal(full("alpine", { CH_REGY_DEFAULT_HOST: "docker.io" }), "registry-1.docker.io:443/library/alpine:latest");
    // Only without a host; _PORT and _PREFIX alone do nothing.
    assert.equal(
      full("quay.io/x", { CH_REGY_DEFAULT_HOST: "reg.example.com", CH_REGY_PATH_PREFIX: "p" }),
      "quay.io:443/x:latest",
    );
    assert.equal(
      full("alpine", { CH_REGY_DEFAULT_PORT: "5000", CH_REGY_PATH_PREFIX: "p" }),
      "registry-1.docker.io:443/library/alpine:latest",
    );
    // The name in storage is the reference's, whatever the registry.
    assert.equal(storageName(parseRef("alpine")), "alpine:latest");
  });

  it("refuses what is no host, port or path component", () => {
    for (const [env, re] of [
      [{ CH_REGY_DEFAULT_HOST: "" }, /\$CH_REGY_DEFAULT_HOST: not a host name: ""/],
      [{ CH_REGY_DEFAULT_HOST: "a b" }, /not a host name: a b/],
      [{ CH_REGY_DEFAULT_HOST: "h", CH_REGY_DEFAULT_PORT: "0" }, /\$CH_REGY_DEFAULT_PORT: not a port number: 0/],
      [{ CH_REGY_DEFAULT_HOST: "h", CH_REGY_DEFAULT_PORT: "65536" }, /not a port number: 65536/],
      [{ CH_REGY_DEFAULT_HOST: "h", CH_REGY_PATH_PREFIX: "a/../b" }, /\$CH_REGY_PATH_PREFIX: invalid path component: \.\./],
      [{ CH_REGY_DEFAULT_HOST: "h", CH_REGY_PATH_PREFIX: "UP" }, /invalid path component: UP/],
    ] as const)
      assert.throws(
        () => canonical(parseRef("x"), env),
        (e: unknown) => e instanceof ChError && re.test(e.message),
        JSON.stringify(env),
      );
  });
});
