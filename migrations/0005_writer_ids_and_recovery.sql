-- What the persistence writer and book recovery need on top of 0001-0004.
--
-- 1. Order ids: (microseconds since 2025-01-01T00:00:00Z << 12) | counter (0-4095), from
--    actors.ids.OrderIds. An order's created_at is exactly the instant in its id, so
--    `WHERE id = $1 AND created_at = snowflake_timestamp($1)` finds it in its month partition.
--    A signed bigint holds such ids until about 2096.
-- 2. Trade ids are the core's text ids "SYMBOL:SEQUENCE" (trades.id, ledger_entries.trade_id).
-- 3. Orders keep what a rebuilt book needs: `priority` (the pair sequence at which the order last
--    joined the back of its price level: accept, trigger, re-queueing amend) next to `sequence` (the
--    sequence of its OrderAccepted, never changed: stops trigger and cancel-all runs in that order),
--    and `updated_sequence` (the sequence of the last event that changed the row). The cumulative
--    quote of the fills is `filled_quote` (0002): average price = filled_quote / filled_quantity.
-- 4. pairs.last_price: the price of the pair's last committed trade, the stop trigger reference of a
--    rebuilt pair.

CREATE OR REPLACE FUNCTION snowflake_timestamp(id bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    -- interval * bigint goes through float8: exact for the 2^53 µs (285 years) that matter here.
    RETURN timestamptz '2025-01-01 00:00:00+00' + (id >> 12) * interval '1 microsecond';

-- The view reads trades.id; a column a view uses cannot change type, so it is rebuilt unchanged.
DROP VIEW pair_volume_24h;

ALTER TABLE trades ALTER COLUMN id TYPE text USING id::text;
ALTER TABLE ledger_entries ALTER COLUMN trade_id TYPE text USING trade_id::text;

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

-- The writer always sets both; NULL (rows written by hand or by older code) reads as `sequence`:
-- recovery orders by coalesce(priority, sequence).
ALTER TABLE orders ADD COLUMN priority bigint;
ALTER TABLE orders ADD COLUMN updated_sequence bigint;
UPDATE orders SET priority = sequence, updated_sequence = sequence;

ALTER TABLE pairs ADD COLUMN last_price numeric(38,8) CHECK (last_price > 0);
