// Multi-stage structure, as Docker's builder sees it: each FROM starts a stage (`FROM x AS name`,
// `FROM scratch`, `FROM $GLOBAL_ARG`, `FROM earlier-stage`); a stage needs the stage it is built
// FROM and those it copies from (`COPY --from=name|index`, `RUN --mount=from=...`); only the
// stages the target (the last one) needs are built, dependencies first. Everything here is
// decided before anything runs, so that a bad reference stops the build at once.
import { ChError } from "../sys/errors.ts";
import type { Dockerfile, Instruction } from "./dockerfile.ts";
import { expandWord } from "./shell.ts";
import { type BuildArgs, globalArgs, mountFields, StageScope, substitute } from "./vars.ts";

/** What a stage starts from, or what an instruction copies from. */
export type Source = { kind: "stage"; index: number } | { kind: "image"; ref: string } | { kind: "scratch" };

export interface Stage {
  index: number;
  /** Lower case, as Docker matches stage names; null without AS. */
  name: string | null;
  from: Instruction;
  /** FROM's image or stage after substituting global ARGs. */
  base: string;
  source: Source;
  /** FROM --platform, substituted (we build for the host only). */
  platform: string | null;
  instructions: Instruction[];
  /** Other stages this one needs, in order of first use. */
  needs: number[];
  /** Images that COPY --from or RUN --mount=from= name (not stages). */
  images: string[];
}

export interface Plan {
  /** Global scope: platform ARGs and the ARGs before the first FROM, with their values. */
  globals: Map<string, string>;
  stages: Stage[];
  target: number;
  /** Stages to build, dependencies first, the target last. */
  order: number[];
  warnings: string[];
}

/** The last stage before `before` named `name` (case-insensitive), as BuildKit's name table
 * keeps it; -1 if none. */
function named(name: string, stages: Stage[], before: number): number {
  const lower = name.toLowerCase();
  for (let i = before - 1; i >= 0; i--) if (stages[i].name === lower) return i;
  return -1;
}

/** COPY --from and RUN --mount from=: a stage index, a stage name (any stage), or an image. */
function copySource(ref: string, stages: Stage[], inst: Instruction): Source {
  if (/^[+-]?\d+$/.test(ref)) {
    const i = Number(ref);
    if (i < 0 || i >= stages.length) throw new ChError(`${inst.file}:${inst.line}: invalid stage index ${i}`);
    return { kind: "stage", index: i };
  }
  const i = named(ref, stages, stages.length);
  return i >= 0 ? { kind: "stage", index: i } : { kind: "image", ref };
}

/** Splits the Dockerfile into stages and works out which the target needs. `target` is a stage
 * name (default: the last stage). */
export function planStages(df: Dockerfile, args: BuildArgs, target: string | null = null, platform?: Map<string, string>): Plan {
  const warnings: string[] = [];
  const firstFrom = df.instructions.findIndex((i) => i.keyword === "from");
  const meta = df.instructions.slice(0, firstFrom);
  const globals = globalArgs(meta, args, platform);
  const stages: Stage[] = [];
  for (const inst of df.instructions.slice(firstFrom)) {
    if (inst.keyword !== "from") {
      stages[stages.length - 1].instructions.push(inst);
      continue;
    }
    const base = substitute(inst, () => expandWord(inst.args[0], globals, { escape: inst.escape }));
    if (base === "") throw new ChError(`${inst.file}:${inst.line}: base name (${inst.args[0]}) should not be blank`);
    const name = inst.args.length === 3 ? inst.args[2].toLowerCase() : null;
    if (name !== null && named(name, stages, stages.length) >= 0)
      warnings.push(`${inst.file}:${inst.line}: duplicate stage name ${JSON.stringify(name)} (the later one wins)`);
    const platformFlag = inst.flags.platform;
    // FROM names an earlier stage, or an image ("scratch": none).
    const parent = named(base, stages, stages.length);
    stages.push({
      index: stages.length,
      name,
      from: inst,
      base,
      source:
        base === "scratch" ? { kind: "scratch" } : parent >= 0 ? { kind: "stage", index: parent } : { kind: "image", ref: base },
      platform:
        typeof platformFlag === "string"
          ? substitute(inst, () => expandWord(platformFlag, globals, { escape: inst.escape }))
          : null,
      instructions: [],
      needs: parent >= 0 ? [parent] : [],
      images: [],
    });
  }

  let t = stages.length - 1;
  if (target !== null) {
    t = named(target, stages, stages.length);
    if (t < 0) throw new ChError(`target stage ${JSON.stringify(target)} could not be found`);
  }

  // Depth first from the target: a stage's dependencies are found in its scope (that of the
  // stage it is built FROM, then its own ARGs and ENV as far as the Dockerfile says; the base
  // image's ENV isn't known before it is pulled), and come before it; cycles are refused.
  const order: number[] = [];
  const scopes = new Map<number, StageScope>();
  const visiting = new Set<number>();
  const declared = new Set(meta.flatMap((i) => (i.kv ?? []).map(([k]) => k)));
  const visit = (i: number): void => {
    if (scopes.has(i)) return;
    const stage = stages[i];
    if (visiting.has(i))
      throw new ChError(`${stage.from.file}:${stage.from.line}: circular dependency detected on stage: ${stage.name ?? i}`);
    visiting.add(i);
    let scope: StageScope;
    if (stage.source.kind === "stage") {
      visit(stage.source.index);
      scope = (scopes.get(stage.source.index) as StageScope).child();
    } else scope = new StageScope(globals, args);
    for (const inst of stage.instructions) {
      if (inst.keyword === "arg") for (const [k] of inst.kv ?? []) declared.add(k);
      const refs: string[] = [];
      if (inst.keyword === "copy" && typeof inst.flags.from === "string") refs.push(inst.flags.from);
      if (inst.keyword === "run" && Array.isArray(inst.flags.mount))
        for (const m of inst.flags.mount) for (const [k, v] of mountFields(m)) if (k === "from" && v) refs.push(v);
      for (const raw of refs) {
        const ref = substitute(inst, () => expandWord(raw, scope.vars, { escape: inst.escape }));
        const src = copySource(ref, stages, inst);
        if (src.kind === "stage") {
          if (src.index !== i && !stage.needs.includes(src.index)) stage.needs.push(src.index);
          if (src.index === i)
            throw new ChError(`${inst.file}:${inst.line}: circular dependency detected on stage: ${stage.name ?? i}`);
        } else if (src.kind === "image" && !stage.images.includes(src.ref)) stage.images.push(src.ref);
      }
      try {
        scope.apply(inst);
      } catch {
        // A substitution that may need the base image's ENV: decided when the stage is built.
      }
    }
    for (const n of stage.needs) visit(n);
    visiting.delete(i);
    scopes.set(i, scope);
    order.push(i);
  };
  visit(t);
  const unused = args.unused(declared);
  if (unused.length) warnings.push(`one or more build-args were not consumed: ${unused.join(", ")}`);
  return { globals, stages, target: t, order, warnings };
}
