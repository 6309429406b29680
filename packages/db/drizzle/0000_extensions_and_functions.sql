-- Custom migration: what drizzle-kit cannot express, needed before the tables exist.
-- pg_trgm is a trusted extension, so the database owner can create it without superuser rights
-- (PostgreSQL 13+); it backs the trigram indexes that serve `LIKE '%@example.com'` user searches.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
--> statement-breakpoint
-- Keeps updated_at current on every UPDATE of a mutable table (attached by a later migration).
-- now() is the transaction's start time, so every row changed in one transaction gets the same stamp.
CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$;
