// What the global setup hands to each test file (through vitest's provide/inject).
export interface TestDatabaseContext {
  runId: string;
  /** Superuser (embedded) or TEST_DATABASE_URL. */
  adminUrl: string;
  /** The non-superuser role that owns the test databases. */
  appRole: string;
  appPassword: string;
  /** The migrated template each test database is cloned from. */
  template: string;
  serverVersion: string;
}

declare module "vitest" {
  export interface ProvidedContext {
    repoDbTest: TestDatabaseContext;
  }
}
