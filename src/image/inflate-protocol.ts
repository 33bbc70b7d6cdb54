// What unpack.ts and its decompressing worker (inflate-worker.ts) tell each other.

/** The worker's job (its workerData). */
export interface InflateJob {
  path: string;
  kind: "gzip" | "zstd";
  /** Size of each buffer of the pool, and how many there are. */
  size: number;
  count: number;
}

/** From the worker: a buffer of the pool (transferred) with `length` bytes in it, the end, or an
 * error; `read`: compressed bytes read so far. To the worker: a buffer given back. */
export interface InflateMessage {
  data?: ArrayBuffer;
  length?: number;
  read?: number;
  error?: string;
  end?: boolean;
}
