// The decompressing worker of unpack.ts (workerSource()): reads a gzip or zstd file, inflates it
// with zlib, and hands the output over in a pool of buffers that are transferred (not cloned) to
// the main thread and given back, so that neither side allocates per chunk; it waits when all of
// them are with the main thread. Its event loop does nothing else, so zlib never waits for the
// main thread to be free. The executable runs it from a string that the build bundles
// (build/build.mjs); unbundled, from this file.
import { closeSync, openSync, readSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { createGunzip, createZstdDecompress } from "node:zlib";
import type { InflateJob, InflateMessage } from "./inflate-protocol.ts";

const port = parentPort;
if (!port) throw new Error("inflate-worker: not a worker thread");
const { path, kind, size, count } = workerData as InflateJob;
const opts = { chunkSize: 1 << 16 };
const z = kind === "gzip" ? createGunzip(opts) : createZstdDecompress(opts);
const free: ArrayBuffer[] = [];
for (let i = 0; i < count; i++) free.push(new ArrayBuffer(size));
let waiting: (() => void) | null = null;
port.on("message", (ab: ArrayBuffer) => {
  free.push(ab);
  if (waiting) {
    const w = waiting;
    waiting = null;
    w();
  }
});
let read = 0;
const send = (m: InflateMessage, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);

async function produce(): Promise<void> {
  const fd = openSync(path, "r");
  const buf = Buffer.allocUnsafeSlow(1 << 20);
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      read += n;
      await new Promise<void>((resolve, reject) => z.write(buf.subarray(0, n), (e) => (e ? reject(e) : resolve())));
    }
    z.end();
  } finally {
    closeSync(fd);
  }
}

let cur: Uint8Array | null = null;
let fill = 0;

/** Hands the current buffer over (transferred). */
function flush(): void {
  if (cur && fill > 0) send({ data: cur.buffer as ArrayBuffer, length: fill, read }, [cur.buffer as ArrayBuffer]);
  cur = null;
}

async function consume(): Promise<void> {
  for await (const c of z as AsyncIterable<Buffer>) {
    let off = 0;
    while (off < c.length) {
      if (!cur) {
        while (free.length === 0)
          await new Promise<void>((resolve) => {
            waiting = resolve;
          });
        cur = new Uint8Array(free.pop() as ArrayBuffer);
        fill = 0;
      }
      const k = Math.min(c.length - off, size - fill);
      cur.set(c.subarray(off, off + k), fill);
      fill += k;
      off += k;
      if (fill === size) flush();
    }
  }
  flush();
  send({ end: true, read });
}

Promise.all([produce(), consume()]).catch((e: unknown) => {
  // What came before the error first, so that the error says where it is.
  flush();
  send({ error: String((e as Error | undefined)?.message ?? e) });
});
