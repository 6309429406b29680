// temporary: focused measurements of selected hot paths (not committed)

import { openBenchDatabase } from "./database.ts";
import { measure } from "./harness.ts";
import { createResources } from "./resources.ts";
import { QUICK_SEED, seed } from "./seed.ts";
import { openVariants } from "./service-vs-floor.ts";

const only = (process.env.OPS ?? "").split(",").filter(Boolean);
const conc = (process.env.CONC ?? "1,16").split(",").map(Number);
const resources = createResources(() => {});
try {
  const database = await openBenchDatabase(undefined);
  resources.defer("db", () => database.close());
  const fixture = await seed(database.url, { ...QUICK_SEED, users: 20_000 });
  const variants = openVariants(database.url, fixture, resources);
  for (const path of variants.paths) {
    if (only.length && !only.some((o) => path.name.startsWith(o))) continue;
    for (const c of conc) {
      const out: string[] = [];
      for (let rep = 0; rep < 3; rep++) {
        for (const v of ["floor", "service", "naive"] as const) {
          const cpu = process.cpuUsage();
          const m = await measure(path[v], { concurrency: c, durationMs: 700, warmupMs: 200 });
          const used = process.cpuUsage(cpu);
          out.push(
            `${v} ${Math.round(m.opsPerSec)} cpu/op=${Math.round((used.user + used.system) / (m.ops * 1.28))}us`,
          );
        }
      }
      console.log(path.name, "c=" + c, out.join(" | "));
    }
  }
} finally {
  await resources.closeAll();
}
