// The version every program prints (--version, -V; ch-run's on stderr, as Charliecloud's): the
// one in package.json, the only place it is written. esbuild bundles what this reads from it.
import pkg from "../package.json" with { type: "json" };

export const VERSION: string = pkg.version;
