// The blob download client (src/registry/rawhttp.ts) against a local server that answers with
// hand-written HTTP: body framings, kept connections, connections closed early, informational
// answers, malformed answers, stalls; and the progress lines of a pull (src/cli/progress.ts).
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { startBars } from "../../src/cli/progress.ts";
import { retryReason, TransientError } from "../../src/registry/http.ts";
import { framing, parseHead, RawClient } from "../../src/registry/rawhttp.ts";

/** What the server does with one request on a connection (n: its index on that connection). */
type Answer = (sock: Socket, n: number) => void;

let server: Server;
let port = 0;
let answer: Answer = () => {};
let connections = 0;
const sockets = new Set<Socket>();

before(async () => {
  server = createServer((sock) => {
    connections++;
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    let n = 0;
    let buf = "";
    sock.on("data", (c) => {
      buf += c.toString("latin1");
      while (buf.includes("\r\n\r\n")) {
        buf = buf.slice(buf.indexOf("\r\n\r\n") + 4);
        answer(sock, n++);
      }
    });
    sock.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as { port: number }).port;
});

after(() => {
  for (const s of sockets) s.destroy();
  server.close();
});

function client(timeoutMs = 10_000): { c: RawClient; abort: AbortController } {
  const abort = new AbortController();
  const c = new RawClient({
    tls: () => ({}),
    timeoutMs,
    signal: abort.signal,
    timeoutError: (ms, host) => new TransientError(`${host}: no data for ${ms} ms`),
  });
  return { c, abort };
}

const url = () => new URL(`http://127.0.0.1:${port}/v2/x/blobs/sha256:abc`);

/** GETs and reads the whole body (copied). */
async function get(c: RawClient): Promise<{ status: number; body: Buffer; headers: Record<string, unknown> }> {
  const res = await c.get(url(), {});
  const parts: Buffer[] = [];
  await res.consume((chunk) => parts.push(Buffer.from(chunk)));
  return { status: res.status, body: Buffer.concat(parts), headers: res.headers };
}

const big = Buffer.alloc(3_000_000);
for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 11)) & 0xff;

describe("blob download client", () => {
  it("reads a Content-Length body (bigger than its read buffer), keeping the connection", async () => {
    connections = 0;
    answer = (s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\nDocker-Content-Digest: sha256:abc\r\n\r\n`);
      s.write(big);
    };
    const { c, abort } = client();
    const a = await get(c);
    assert.equal(a.status, 200);
    assert.equal(a.headers["docker-content-digest"], "sha256:abc");
    assert.ok(a.body.equals(big));
    const b = await get(c);
    assert.ok(b.body.equals(big));
    assert.equal(connections, 1, "second request on the kept connection");
    abort.abort();
  });

  it("decodes chunked bodies split anywhere", async () => {
    answer = (s) => {
      const body = Buffer.concat([
        Buffer.from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Buffer.from(`${(1000).toString(16)};ext=1\r\n`),
        big.subarray(0, 1000),
        Buffer.from(`\r\n${(big.length - 1000).toString(16)}\r\n`),
        big.subarray(1000),
        Buffer.from("\r\n0\r\nX-Trailer: y\r\n\r\n"),
      ]);
      // Byte by byte at the start, then in odd pieces.
      for (let i = 0; i < 80; i++) s.write(body.subarray(i, i + 1));
      for (let i = 80; i < body.length; i += 65_537) s.write(body.subarray(i, i + 65_537));
    };
    const { c, abort } = client();
    assert.ok((await get(c)).body.equals(big));
    assert.ok((await get(c)).body.equals(big), "and the connection is usable after the trailer");
    abort.abort();
  });

  it("reads a body delimited by the end of the connection", async () => {
    answer = (s) => {
      s.write("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
      s.end(big);
    };
    const { c, abort } = client();
    assert.ok((await get(c)).body.equals(big));
    abort.abort();
  });

  it("skips informational answers (103) before the real one", async () => {
    answer = (s) =>
      s.write("HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope\n");
    const { c, abort } = client();
    const r = await get(c);
    assert.equal(r.status, 404);
    assert.equal(r.body.toString(), "nope\n");
    abort.abort();
  });

  it("uses a new connection when the kept one was closed by the server", async () => {
    connections = 0;
    answer = (s) => {
      s.write("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
      setTimeout(() => s.destroy(), 20);
    };
    const { c, abort } = client();
    assert.equal((await get(c)).body.toString(), "abc");
    await new Promise((r) => setTimeout(r, 100));
    assert.equal((await get(c)).body.toString(), "abc");
    assert.equal(connections, 2);
    abort.abort();
  });

  it("asks again on a new connection when a kept one is dropped before answering", async () => {
    connections = 0;
    answer = (s, n) => (n === 0 ? s.write("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc") : s.destroy());
    const { c, abort } = client();
    assert.equal((await get(c)).body.toString(), "abc");
    assert.equal((await get(c)).body.toString(), "abc");
    assert.equal(connections, 2);
    abort.abort();
  });

  it("fails a body cut short by the server, as a transfer to retry", async () => {
    answer = (s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n`);
      s.end(big.subarray(0, 100_000));
    };
    const { c, abort } = client();
    await assert.rejects(get(c), (e: Error) => retryReason(e) !== null && /socket hang up/.test(e.message));
    abort.abort();
  });

  it("fails on a malformed answer", async () => {
    answer = (s) => s.end("SSH-2.0-OpenSSH_9.2\r\n\r\n");
    const { c, abort } = client();
    await assert.rejects(get(c), /malformed HTTP response/);
    abort.abort();
  });

  it("fails on a bad chunk size", async () => {
    answer = (s) => s.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    const { c, abort } = client();
    await assert.rejects(get(c), /bad chunked encoding/);
    abort.abort();
  });

  it("fails on more bytes than Content-Length", async () => {
    answer = (s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc");
    const { c, abort } = client();
    await assert.rejects(get(c), /more than its Content-Length/);
    abort.abort();
  });

  it("times out a stalled body with the error it is given", async () => {
    answer = (s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab");
    const { c, abort } = client(200);
    await assert.rejects(get(c), TransientError);
    abort.abort();
  });

  it("passes on an exception of the consumer, and drops the connection", async () => {
    connections = 0;
    answer = (s) => s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n${"x".repeat(10)}`);
    const { c, abort } = client();
    const res = await c.get(url(), {});
    await assert.rejects(
      res.consume(() => {
        throw new Error("digest mismatch");
      }),
      /digest mismatch/,
    );
    abort.abort();
  });

  it("stops when aborted", async () => {
    answer = () => {}; // never answers
    const { c, abort } = client();
    const p = c.get(url(), {});
    setTimeout(() => abort.abort(), 50);
    await assert.rejects(p);
  });

  it("drops a connection on which the server sent more than the answer", async () => {
    connections = 0;
    answer = (s, n) => {
      s.write("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
      if (n === 0) setTimeout(() => s.write("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"), 20);
    };
    const { c, abort } = client();
    assert.equal((await get(c)).body.toString(), "abc");
    await new Promise((r) => setTimeout(r, 100)); // the stray answer arrives while the connection is kept
    assert.equal((await get(c)).body.toString(), "abc", "not the stray xyz");
    assert.equal(connections, 2);
    abort.abort();
  });

  it("doesn't keep a connection the server says it closes", async () => {
    connections = 0;
    answer = (s) => s.write("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc");
    const { c, abort } = client();
    assert.equal((await get(c)).body.toString(), "abc");
    assert.equal((await get(c)).body.toString(), "abc");
    assert.equal(connections, 2);
    abort.abort();
  });

  it("fails on a response head larger than 64 kB, even in one read", async () => {
    answer = (s) => s.write(`HTTP/1.1 200 OK\r\nX-Big: ${"a".repeat(70_000)}\r\nContent-Length: 0\r\n\r\n`);
    const { c, abort } = client();
    await assert.rejects(get(c), /HTTP response head too large/);
    abort.abort();
  });

  it("refuses a header value with a line break (no header or request smuggled in)", async () => {
    let requests = 0;
    answer = (s) => {
      requests++;
      s.write("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    };
    const { c, abort } = client();
    await assert.rejects(
      c.get(url(), { Authorization: "Bearer x\r\n\r\nGET /evil HTTP/1.1\r\nHost: h" }),
      /invalid character in HTTP header Authorization/,
    );
    assert.equal(requests, 0);
    abort.abort();
  });

  it("parses heads and framings", () => {
    const h = parseHead("HTTP/1.1 307 Temporary Redirect\r\nLocation: https://x/y\r\nWWW-Authenticate: a\r\nwww-authenticate: b");
    assert.equal(h.status, 307);
    assert.equal(h.headers.location, "https://x/y");
    assert.equal(h.headers["www-authenticate"], "a, b");
    assert.deepEqual(framing(200, { "content-length": "12" }), { kind: "length", left: 12 });
    assert.deepEqual(framing(200, { "transfer-encoding": "gzip, chunked", "content-length": "5" }), { kind: "chunked" });
    assert.deepEqual(framing(200, {}), { kind: "close" });
    assert.deepEqual(framing(204, {}), { kind: "none" });
    assert.throws(() => framing(200, { "content-length": "-1" }), /bad Content-Length/);
    assert.throws(() => parseHead("HTTP/1.1 200 OK\r\nno colon"), /malformed HTTP header/);
  });
});

describe("progress lines of a pull", () => {
  /** A fake terminal that records what is written. */
  function terminal() {
    const out = {
      isTTY: true,
      columns: 200,
      text: "",
      write(s: string) {
        out.text += s;
        return true;
      },
    };
    return out;
  }

  it("draws downloads and unpacking as lines; messages go above them; the end clears them", async () => {
    const out = terminal();
    const write = out.write;
    const bars = startBars(out);
    const dl = bars.add("layer 2/2 abc", 1000);
    const un = bars.progress("layer 1/2 def: unpacking", 2000);
    await new Promise((r) => setTimeout(r, 250));
    dl.update(500);
    assert.match(out.text, /layer 2\/2 abc: 500 B of 1.00 kB \(50%\)/);
    assert.match(out.text, /layer 1\/2 def: unpacking: 0 B of 2.00 kB \(0%\), 0 entries/);
    out.text = "";
    out.write("a message\n");
    // Cleared (two lines up, erase), the message, then the lines again below it.
    assert.ok(out.text.startsWith("\x1b[2A\r\x1b[Ja message\n"), JSON.stringify(out.text));
    assert.match(out.text, /a message\n\r.*layer 2\/2 abc/s);
    dl.done();
    un.update(2000, 7);
    un.end();
    bars.end();
    assert.equal(out.write, write, "write restored");
    out.text = "";
    out.write("after\n");
    assert.equal(out.text, "after\n");
  });

  it("draws nothing when out isn't a terminal", () => {
    const out = { ...terminal(), isTTY: false };
    const bars = startBars(out);
    bars.add("x", 10).update(5);
    bars.progress("y", 10).update(5, 1);
    bars.end();
    assert.equal(out.text, "");
  });
});
