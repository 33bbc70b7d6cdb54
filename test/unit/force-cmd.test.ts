// ch-image build --force-cmd: the arguments added to a RUN's command under root emulation.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { forceCommand } from "../../src/builder/force.ts";

describe("--force-cmd", () => {
  const apt = [
    { cmd: "apt", args: ["-o", "APT::Sandbox::User=root"] },
    { cmd: "apt-get", args: ["-o", "APT::Sandbox::User=root"] },
  ];
  const sh = (s: string) => forceCommand(["/bin/sh", "-c", s], true, apt)[2];
  it("adds ARGs where CMD starts a command in the shell form", () => {
    assert.equal(sh("apt-get install -y hello"), "apt-get -o APT::Sandbox::User=root install -y hello");
    assert.equal(
      sh("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y x"),
      "apt-get -o APT::Sandbox::User=root update && DEBIAN_FRONTEND=noninteractive apt-get -o APT::Sandbox::User=root install -y x",
    );
    assert.equal(sh("set -e; /usr/bin/apt update"), "set -e; /usr/bin/apt -o APT::Sandbox::User=root update");
    assert.equal(sh("true\napt install x"), "true\napt -o APT::Sandbox::User=root install x");
    assert.equal(sh("echo apt-get; apt-getx"), "echo apt-get; apt-getx", "an argument, or another command");
    assert.equal(sh("aptitude install"), "aptitude install");
  });
  it("exec form: argv[0] is CMD; ARGs with shell characters quoted in the shell form", () => {
    assert.deepEqual(forceCommand(["apt-get", "update"], false, apt), ["apt-get", "-o", "APT::Sandbox::User=root", "update"]);
    assert.deepEqual(forceCommand(["ls", "apt-get"], false, apt), ["ls", "apt-get"]);
    assert.equal(forceCommand(["/bin/sh", "-c", "foo -c"], true, [{ cmd: "foo", args: ["-a", "x y"] }])[2], "foo -a 'x y' -c");
  });
});
