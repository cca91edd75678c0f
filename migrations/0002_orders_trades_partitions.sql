-- Orders (range-partitioned by month on created_at) and trades (by day on executed_at), their DEFAULT
-- partitions, and create_partitions(), the maintenance function that adds partitions ahead of time.
--
-- Order and trade ids are snowflake-style: (milliseconds since the Unix epoch << 22) | counter, so the
-- timestamp of a row can be derived from its id (snowflake_timestamp) and a lookup by id can bound
-- created_at for partition pruning. With the Unix epoch a signed bigint holds such ids until 2039-09.
--
-- A UNIQUE constraint on a partitioned table must include the partition key, so the per-user
-- uniqueness of client_order_id is enforced by the non-partitioned table client_order_ids.
-- Rows of orders/trades are not linked by foreign keys to each other (both sides partitioned, written
-- by one batch writer); their users and symbols are.

CREATE FUNCTION snowflake_timestamp(id bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN to_timestamp((id >> 22) / 1000.0);

CREATE TABLE orders (
    id                    bigint        NOT NULL,
    user_id               bigint        NOT NULL REFERENCES users (id),
    symbol                text          NOT NULL REFERENCES pairs (symbol),
    side                  order_side    NOT NULL,
    type                  order_type    NOT NULL,
    status                order_status  NOT NULL,
    price                 numeric(38,8) CHECK (price > 0),
    stop_price            numeric(38,8) CHECK (stop_price > 0),
    quantity              numeric(38,8) CHECK (quantity > 0),
    quote_quantity        numeric(38,8) CHECK (quote_quantity > 0),
    filled_quantity       numeric(38,8) NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    -- Cumulative quote amount of the fills: average price = filled_quote / filled_quantity.
    filled_quote          numeric(38,8) NOT NULL DEFAULT 0 CHECK (filled_quote >= 0),
    time_in_force         time_in_force NOT NULL,
    post_only             boolean       NOT NULL DEFAULT false,
    self_trade_prevention stp_mode      NOT NULL DEFAULT 'EXPIRE_TAKER',
    reject_reason         text,
    client_order_id       text          CHECK (client_order_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    sequence              bigint        NOT NULL,
    created_at            timestamptz   NOT NULL,
    updated_at            timestamptz   NOT NULL,
    PRIMARY KEY (id, created_at),
    CONSTRAINT orders_has_size CHECK (quantity IS NOT NULL OR quote_quantity IS NOT NULL),
    CONSTRAINT orders_not_overfilled CHECK (quantity IS NULL OR filled_quantity <= quantity)
) PARTITION BY RANGE (created_at);

-- Book rebuild: the open and pending orders of one pair in sequence order.
CREATE INDEX orders_open_by_symbol_sequence ON orders (symbol, sequence)
    WHERE status IN ('OPEN', 'PARTIALLY_FILLED', 'PENDING_TRIGGER');
-- A user's orders newest first; keyset pagination on (created_at, id).
CREATE INDEX orders_by_user_newest ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_by_user_client_order_id ON orders (user_id, client_order_id)
    WHERE client_order_id IS NOT NULL;

CREATE TABLE orders_default PARTITION OF orders DEFAULT;

CREATE TABLE client_order_ids (
    user_id         bigint      NOT NULL REFERENCES users (id),
    client_order_id text        NOT NULL CHECK (client_order_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    order_id        bigint      NOT NULL UNIQUE,
    -- The order's created_at, so that the order row is found with partition pruning.
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (user_id, client_order_id)
);

CREATE TABLE trades (
    id             bigint        NOT NULL,
    symbol         text          NOT NULL REFERENCES pairs (symbol),
    price          numeric(38,8) NOT NULL CHECK (price > 0),
    quantity       numeric(38,8) NOT NULL CHECK (quantity > 0),
    quote_quantity numeric(38,8) NOT NULL CHECK (quote_quantity > 0),
    buyer_order_id bigint        NOT NULL,
    seller_order_id bigint       NOT NULL,
    buyer_user_id  bigint        NOT NULL REFERENCES users (id),
    seller_user_id bigint        NOT NULL REFERENCES users (id),
    taker_side     order_side    NOT NULL,
    buyer_fee      numeric(38,8) NOT NULL CHECK (buyer_fee >= 0),   -- in the base asset
    seller_fee     numeric(38,8) NOT NULL CHECK (seller_fee >= 0),  -- in the quote asset
    executed_at    timestamptz   NOT NULL,
    sequence       bigint        NOT NULL,
    PRIMARY KEY (id, executed_at)
) PARTITION BY RANGE (executed_at);

CREATE INDEX trades_by_symbol_time ON trades (symbol, executed_at DESC, id DESC);
CREATE INDEX trades_by_buyer_newest ON trades (buyer_user_id, executed_at DESC, id DESC);
CREATE INDEX trades_by_seller_newest ON trades (seller_user_id, executed_at DESC, id DESC);

CREATE TABLE trades_default PARTITION OF trades DEFAULT;

-- Make sure `parent` has a partition named `partition_name` for [range_start, range_end) (UTC wall-clock
-- bounds); return true when it was created. Rows of that range already sitting in the DEFAULT
-- partition are moved into the new partition, so creating a partition never fails on them.
CREATE FUNCTION ensure_time_partition(
    parent text, partition_name text, key_column text, range_start timestamp, range_end timestamp
) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    start_tz timestamptz := range_start AT TIME ZONE 'UTC';
    end_tz timestamptz := range_end AT TIME ZONE 'UTC';
    default_name text := parent || '_default';
    has_rows boolean;
    moved bigint;
BEGIN
    IF to_regclass(quote_ident(partition_name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I >= $1 AND %I < $2)',
                   default_name, key_column, key_column)
        INTO has_rows USING start_tz, end_tz;
    IF NOT has_rows THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       partition_name, parent, start_tz, end_tz);
        RETURN true;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   partition_name, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved',
                   default_name, key_column, key_column, partition_name)
        USING start_tz, end_tz;
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   parent, partition_name, start_tz, end_tz);
    RAISE NOTICE 'moved % row(s) from % into the new partition %', moved, default_name, partition_name;
    RETURN true;
END
$$;

-- Create the monthly orders partitions for the current month and `months_ahead` more, and the daily
-- trades partitions for today and `days_ahead` more (UTC). Idempotent and safe to run concurrently;
-- returns the names of the partitions it created. Run at start and on a timer by the engine.
CREATE FUNCTION create_partitions(months_ahead integer DEFAULT 3, days_ahead integer DEFAULT 14)
    RETURNS SETOF text
    LANGUAGE plpgsql AS $$
DECLARE
    this_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    today timestamp := date_trunc('day', now() AT TIME ZONE 'UTC');
    range_start timestamp;
    part_name text;
BEGIN
    IF months_ahead < 0 OR days_ahead < 0 THEN
        RAISE EXCEPTION 'create_partitions: months_ahead and days_ahead must be >= 0, got % and %',
            months_ahead, days_ahead;
    END IF;
    -- Serialise concurrent callers (two engines starting): CREATE TABLE would race otherwise.
    PERFORM pg_advisory_xact_lock(7516929463577211213);
    FOR i IN 0..months_ahead LOOP
        range_start := this_month + make_interval(months => i);
        part_name := 'orders_p' || to_char(range_start, 'YYYY_MM');
        IF ensure_time_partition('orders', part_name, 'created_at', range_start, range_start + interval '1 month') THEN
            RETURN NEXT part_name;
        END IF;
    END LOOP;
    FOR i IN 0..days_ahead LOOP
        range_start := today + make_interval(days => i);
        part_name := 'trades_p' || to_char(range_start, 'YYYY_MM_DD');
        IF ensure_time_partition('trades', part_name, 'executed_at', range_start, range_start + interval '1 day') THEN
            RETURN NEXT part_name;
        END IF;
    END LOOP;
END
$$;

SELECT count(*) AS partitions_created FROM create_partitions();
