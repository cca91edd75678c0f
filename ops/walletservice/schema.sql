-- The reference wallet service's tables, in a schema of their own. Every statement is idempotent: the
-- service runs this file at each start, under a transaction-level advisory lock.
CREATE SCHEMA IF NOT EXISTS wallet_service;

-- One row per (user_id, asset) ever moved; a missing row is a zero balance. Collation "C": listings and
-- row locks go in code-point order, the order the service sorts in (whatever the database's locale).
CREATE TABLE IF NOT EXISTS wallet_service.balances (
    user_id    text COLLATE "C" NOT NULL,
    asset      text COLLATE "C" NOT NULL,
    available  numeric(38,8)    NOT NULL DEFAULT 0 CHECK (available >= 0),
    locked     numeric(38,8)    NOT NULL DEFAULT 0 CHECK (locked >= 0),
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, asset)
);

-- One row per idempotency key, written in the transaction that applied (or refused) the operation:
-- the canonical request, and the status and body it answered with (a replay answers them again).
CREATE TABLE IF NOT EXISTS wallet_service.operations (
    idempotency_key text        PRIMARY KEY,
    operation       text        NOT NULL
                    CHECK (operation IN ('reserve', 'release', 'settle', 'deposit', 'withdraw')),
    request         jsonb       NOT NULL,
    status          integer     NOT NULL,
    response        json        NOT NULL,  -- json, not jsonb: a replay answers the same bytes
    applied_at      timestamptz NOT NULL DEFAULT now()
);
