-- Custom migration: what drizzle-kit cannot express, needed before the tables exist.
-- pg_trgm is a trusted extension, so the database owner can create it without superuser rights
-- (PostgreSQL 13+); it backs the trigram indexes that serve `LIKE '%@example.com'` user searches.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
--> statement-breakpoint
-- Keeps updated_at current on every UPDATE of a mutable table (attached by a later migration).
-- An UPDATE that sets updated_at itself keeps its value (services pass the application clock, which tests
-- control); otherwise now(), the transaction's start time, so rows changed together share one stamp.
CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
    NEW.updated_at := now();
  END IF;
  RETURN NEW;
END;
$$;
