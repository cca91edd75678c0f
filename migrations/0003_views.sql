-- Helper views (order-book depth, 24 h volume) and monitoring views (slow statements, index usage,
-- table bloat estimate).

-- Resting depth per pair, side and price level, from the committed open orders. Pending stops are
-- not on the book and are left out.
CREATE VIEW open_order_depth AS
SELECT symbol,
       side,
       price,
       sum(quantity - filled_quantity) AS quantity,
       count(*)                        AS orders
FROM orders
WHERE status IN ('OPEN', 'PARTIALLY_FILLED')
  AND price IS NOT NULL
  AND quantity IS NOT NULL
GROUP BY symbol, side, price;

-- Trading over the last 24 hours per pair (every pair, zero when idle).
CREATE VIEW pair_volume_24h AS
SELECT p.symbol,
       count(t.id)                         AS trades,
       coalesce(sum(t.quantity), 0)        AS base_volume,
       coalesce(sum(t.quote_quantity), 0)  AS quote_volume,
       min(t.price)                        AS low,
       max(t.price)                        AS high
FROM pairs AS p
LEFT JOIN trades AS t
       ON t.symbol = p.symbol
      AND t.executed_at >= now() - interval '24 hours'
GROUP BY p.symbol;

-- How often each index is used; an index with idx_scan = 0 after a representative load is a candidate
-- for removal (each one costs the batch writer on every insert).
CREATE VIEW monitoring_index_usage AS
SELECT s.schemaname,
       s.relname                       AS table_name,
       s.indexrelname                  AS index_name,
       s.idx_scan,
       s.idx_tup_read,
       s.idx_tup_fetch,
       pg_relation_size(s.indexrelid)  AS size_bytes,
       i.indisunique                   AS is_unique
FROM pg_stat_user_indexes AS s
JOIN pg_index AS i ON i.indexrelid = s.indexrelid;

-- A cheap bloat ESTIMATE from the statistics collector: the share of dead tuples not yet vacuumed.
-- It is not a measure of free space inside pages (that needs pgstattuple); a dead_ratio that stays
-- high means autovacuum does not keep up with that table.
CREATE VIEW monitoring_table_bloat AS
SELECT schemaname,
       relname                                                        AS table_name,
       n_live_tup,
       n_dead_tup,
       round(n_dead_tup::numeric / nullif(n_live_tup + n_dead_tup, 0), 4) AS dead_ratio,
       pg_total_relation_size(relid)                                  AS total_bytes,
       last_vacuum,
       last_autovacuum,
       last_analyze,
       last_autoanalyze
FROM pg_stat_user_tables;

-- Slow statements come from pg_stat_statements, which is optional: creating the extension needs a
-- superuser and the module installed, and reading it needs shared_preload_libraries. The migration
-- never fails for it: the extension is created when possible, and the view reads it through a function
-- that returns no rows (with a NOTICE) while it is not usable, and real rows as soon as it is.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_stat_statements is not available (%); monitoring_slow_statements will stay empty',
        SQLERRM;
END
$$;

CREATE FUNCTION monitoring_slow_statement_rows(max_rows integer DEFAULT 50)
    RETURNS TABLE (
        queryid bigint, calls bigint, total_exec_ms double precision, mean_exec_ms double precision,
        max_exec_ms double precision, rows bigint, query text
    )
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT s.queryid, s.calls, s.total_exec_time, s.mean_exec_time, s.max_exec_time, s.rows, s.query '
        'FROM pg_stat_statements AS s '
        'JOIN pg_database AS d ON d.oid = s.dbid AND d.datname = current_database() '
        'ORDER BY s.mean_exec_time DESC LIMIT $1'
        USING max_rows;
EXCEPTION
    WHEN undefined_table OR undefined_column OR object_not_in_prerequisite_state
         OR insufficient_privilege THEN
        RAISE NOTICE 'pg_stat_statements is not usable here: %', SQLERRM;
END
$$;

CREATE VIEW monitoring_slow_statements AS
SELECT * FROM monitoring_slow_statement_rows(50);
