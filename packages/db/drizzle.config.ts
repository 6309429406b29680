// drizzle-kit configuration: `generate` reads the schema, `migrate`-free (we migrate with src/migrate.ts),
// `studio` browses the database named by DATABASE_URL (set by src/cli/studio.ts for the embedded one).
import { defineConfig } from "drizzle-kit";

export default defineConfig({
  dialect: "postgresql",
  schema: "./src/schema/index.ts",
  out: "./drizzle",
  dbCredentials: { url: process.env.DATABASE_URL ?? "postgres://localhost:5432/postgres" },
  strict: true,
  verbose: true,
});
