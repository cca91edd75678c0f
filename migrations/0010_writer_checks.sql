-- The writer's checks inside its statements (issue #4: one round trip per batch).
--
-- storage.writer.write_batch sends a batch as ONE pipeline (BEGIN, its statements, COMMIT, one Sync):
-- a single round trip to the server instead of one per statement, which on a busy machine cost more
-- than the statements themselves. The two checks that used to read a result in the client before going
-- on (the fence's epoch, the number of order rows an update found) are made inside the statements with
-- this function instead: it raises with `code` as SQLSTATE and `message` unless `ok` is true, which
-- aborts the transaction, so the COMMIT already sent behind it commits nothing.
--
--     TEF01   the writer is fenced: a newer writer has started (storage.errors.WriterFenced)
--     TED01   an order update found no row: memory and database disagree
CREATE FUNCTION writer_check(ok boolean, code text, message text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
    END IF;
    RETURN true;
END
$$;
