// The executable's first step when called as ch-run (src/sea-main.cjs runs this small bundle
// before it compiles ch-run's): run a remembered launch of this very command if one holds
// (container/memo.ts; then this never returns), else give ch-run the key to record it by.
import { type Memo, type MemoContext, memoKey, replay, slotName } from "./container/memo.ts";
import { keepInheritedFds } from "./sys/keepfd.ts";
import { currentIds } from "./sys/secure.ts";

/** This build of ch-run: the SHA-256 of its bundle (build/build.mjs), part of every key. */
declare const __CH_RUN_BUILD__: string;

/** Keeps the inherited descriptors across the exec, as ch-run does. */
function keep(m: Memo): void {
  keepInheritedFds(m.helper);
}

/** Replays a remembered launch, or returns the context to record one (null: none to record). */
export function run(): MemoContext | null {
  return replay(__CH_RUN_BUILD__, keep);
}

/** The context alone, without a replay (build/train.mjs). */
export function context(): MemoContext {
  const key = memoKey(__CH_RUN_BUILD__, process.argv0, process.argv.slice(2), process.cwd(), currentIds());
  return { key, slot: slotName(key) };
}
