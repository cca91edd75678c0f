-- The exchange's fee account and the ten launch pairs.
--
-- The fee account is user id 1, name 'fees', role 'system': every fee is credited to it, so that for
-- each asset the sum of all balances equals deposits minus withdrawals.
--
-- Pair rules: quantities are multiples of lot_size, prices of tick_size, tick_size × lot_size is a
-- whole multiple of 0.00000001 (checked by pairs_tick_lot_exact). Fees are rates on what each side
-- receives.

INSERT INTO users (id, name, role) VALUES (1, 'fees', 'system');

INSERT INTO pairs (symbol, base_asset, quote_asset, tick_size, lot_size, min_quantity, max_quantity,
                   min_notional, maker_fee, taker_fee, status)
VALUES
    ('BTC-USDT',   'BTC',   'USDT', 0.01,    0.00001, 0.00001, 9000,      10, 0.0008, 0.001,  'ACTIVE'),
    ('ETH-USDT',   'ETH',   'USDT', 0.01,    0.0001,  0.0001,  90000,     10, 0.0008, 0.001,  'ACTIVE'),
    ('BNB-USDT',   'BNB',   'USDT', 0.01,    0.001,   0.001,   90000,      5, 0.0008, 0.001,  'ACTIVE'),
    ('SOL-USDT',   'SOL',   'USDT', 0.01,    0.001,   0.001,   90000,      5, 0.0008, 0.001,  'ACTIVE'),
    ('XRP-USDT',   'XRP',   'USDT', 0.0001,  0.1,     0.1,     9000000,    5, 0.001,  0.001,  'ACTIVE'),
    ('ADA-USDT',   'ADA',   'USDT', 0.0001,  0.1,     0.1,     9000000,    5, 0.001,  0.001,  'ACTIVE'),
    ('DOGE-USDT',  'DOGE',  'USDT', 0.00001, 1,       1,       90000000,   5, 0.001,  0.001,  'ACTIVE'),
    ('LINK-USDT',  'LINK',  'USDT', 0.001,   0.01,    0.01,    900000,     5, 0.001,  0.001,  'ACTIVE'),
    ('MATIC-USDT', 'MATIC', 'USDT', 0.0001,  0.1,     0.1,     9000000,    5, 0.001,  0.001,  'ACTIVE'),
    ('USDC-USDT',  'USDC',  'USDT', 0.0001,  1,       1,       90000000,   5, 0,      0.0001, 'ACTIVE');
