-- Read-only role for the auditor API, in database llm4rerank. Idempotent.
-- Used by infra/postgres/pg.sh (every start) and by docker-compose.yml (postgres first start).
-- The password is a development credential (the local cluster uses trust auth and ignores it).
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'llm4rerank_reader') THEN
    CREATE ROLE llm4rerank_reader LOGIN PASSWORD 'llm4rerank_reader';
  END IF;
END
$$;
ALTER ROLE llm4rerank_reader SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE llm4rerank TO llm4rerank_reader;
GRANT USAGE ON SCHEMA public TO llm4rerank_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO llm4rerank_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT ON TABLES TO llm4rerank_reader;
