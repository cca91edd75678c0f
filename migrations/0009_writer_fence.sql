-- The writer's fence (issue #4: the writer in a process of its own, TRADE_ENGINE_WRITER_PROCESS).
--
-- A writer process left behind by an engine that died (kill -9 of the worker) finishes the batch it was
-- given before it sees that its parent is gone. It must never commit after a new engine has rebuilt
-- books and balances from the database. One row holds the epoch of the writer in charge:
--
--     epoch   bigint   incremented by each writer process when it starts (ops.writer_main), in a
--                      transaction of its own, before it reports ready; the engine reads the database
--                      (books, balances) only after its writer is ready
--
-- Every batch transaction of a writer process reads the row FOR SHARE and fails unless the epoch is
-- still its own (storage.writer.write_batch, `fence`). A share lock conflicts with the new writer's
-- UPDATE, so either the old writer's batch commits first (and the new engine reads it) or the UPDATE
-- comes first (and the old writer's batch sees the new epoch and rolls back). Only row locks within
-- transactions: it holds behind PgBouncer in transaction mode too, unlike a session advisory lock.
CREATE TABLE writer_fence (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch     bigint  NOT NULL
);
INSERT INTO writer_fence (singleton, epoch) VALUES (true, 0);
