-- Running totals that add up flows of money hold any size (issue #4: a commit never fails on a valid
-- command).
--
-- Every balance is part of its asset's total on the exchange, and deposits keep that total within
-- 10^30 (what NUMERIC(38,8) holds), so balances, single trades and ledger rows always fit. A flow does
-- not: the same coins can change hands any number of times. Two trades of 6 x 10^29 USDT within one
-- minute (the buyer of the first selling back to its seller) made the minute candle's quote_volume
-- 1.2 x 10^30, the trigger raised "numeric field overflow", the batch's commit failed and the whole
-- database group (writer, wallet, every pair) was rebuilt; a client retrying the refused order did it
-- again until the group was failed. An order's filled_quote is such a flow too (a SELL filled by buyers
-- who were paid between its fills). These columns become unconstrained numeric: exact at any size, as
-- the sums that read them (sum() of numeric) always were. No row is rewritten: an unconstrained numeric
-- holds every numeric(38,8) value as it is.
ALTER TABLE candles_1m
    ALTER COLUMN volume TYPE numeric,
    ALTER COLUMN quote_volume TYPE numeric;
ALTER TABLE orders ALTER COLUMN filled_quote TYPE numeric;
