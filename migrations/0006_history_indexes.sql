-- Indexes of the read side: a user's order and trade history (storage.history) and the public market
-- data of a pair (storage.market). Every query of those modules is an index range scan; none reads a
-- whole table or a whole partition (checked with EXPLAIN ANALYZE on 3 M trades in 400 daily partitions
-- and 2 M orders; empty partitions, such as the future ones, may show a Seq Scan of zero pages). The
-- history queries also bound their time range so that only recent partitions are planned and read.
--
-- Trade ids are text since 0005 ("BTC-USDT:10" sorts before "BTC-USDT:9"), so the 0002 trade indexes
-- that end in `id DESC` order the trades of one instant wrongly; and one command's trades all share its
-- timestamp. Within a pair the order of trades is their `sequence`, so the trade indexes are rebuilt on
-- (…, executed_at, sequence). Each index costs the batch writer on every insert: they are replaced, not
-- added to.
--
-- 1. trades_by_symbol_time_sequence (symbol, executed_at DESC, sequence DESC) replaces
--    trades_by_symbol_time. Recent trades of a pair (newest first: read forwards, LIMIT n), candles and
--    the 24 h ticker (an executed_at range of one pair, read in either direction).
-- 2. trades_by_buyer_time_sequence / trades_by_seller_time_sequence
--    (user, executed_at DESC, symbol DESC, sequence DESC) replace trades_by_buyer_newest /
--    trades_by_seller_newest. A user's trades newest first with keyset pagination: the history query
--    reads both (a UNION ALL of the user as buyer and as seller, merged; a self-trade is found in both),
--    the cursor is a row comparison on (executed_at, symbol, sequence), an Index Cond of this index. The
--    symbol of the optional symbol filter is in the index, so filtering needs no heap access.
-- 3. orders_open_by_user_newest (user_id, created_at DESC, id DESC) WHERE the order is live: a user's
--    open orders (`status=OPEN,PARTIALLY_FILLED`, the most common filter) without walking the whole
--    order history through orders_by_user_newest. Small: only live orders are in it. The history query
--    writes the statuses as literals, so the planner can prove the partial predicate.
--
-- Not indexed anew, because an existing index serves:
-- - a user's orders newest first, keyset on (created_at, id): orders_by_user_newest (0002);
-- - an order by id, or a list of ids: the primary key (id, created_at), created_at = the instant in the
--   id (pruned to the ids' month partitions);
-- - an order by client order id: client_order_ids' primary key, then the order as above;
-- - a trade by id: the primary key (id, executed_at) of every daily partition (executed_at cannot be
--   derived from a trade id; one probe per partition).

DROP INDEX trades_by_symbol_time;
DROP INDEX trades_by_buyer_newest;
DROP INDEX trades_by_seller_newest;

CREATE INDEX trades_by_symbol_time_sequence ON trades (symbol, executed_at DESC, sequence DESC);
CREATE INDEX trades_by_buyer_time_sequence
    ON trades (buyer_user_id, executed_at DESC, symbol DESC, sequence DESC);
CREATE INDEX trades_by_seller_time_sequence
    ON trades (seller_user_id, executed_at DESC, symbol DESC, sequence DESC);

CREATE INDEX orders_open_by_user_newest ON orders (user_id, created_at DESC, id DESC)
    WHERE status IN ('OPEN', 'PARTIALLY_FILLED', 'PENDING_TRIGGER');
