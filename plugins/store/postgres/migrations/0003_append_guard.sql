-- 0003: hallmark_begin_append, the first statement of every append after
-- BEGIN, so that an append is one round trip (BEGIN, this, the inserts
-- and COMMIT, pipelined). It takes the appenders' transaction-scoped
-- advisory lock, then reads the log's head (a new snapshot: READ
-- COMMITTED gives each statement of a volatile function its own, so it
-- sees every append committed before the lock was granted) and raises
-- SQLSTATE HL409 unless the batch continues it: entries from from_size
-- on, and an empty batch only on an empty log. The error aborts the
-- transaction, so nothing of the batch is written.
CREATE FUNCTION hallmark_begin_append(lock_class integer, lock_key integer, from_size bigint, entries bigint)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  head bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(lock_class, lock_key);
  SELECT MAX(size) INTO head FROM checkpoints;
  IF COALESCE(head, 0) <> from_size OR (entries = 0 AND head IS NOT NULL) THEN
    RAISE EXCEPTION 'a batch of % entries from % does not continue the log at %', entries, from_size, COALESCE(head, 0)
      USING ERRCODE = 'HL409';
  END IF;
END
$$;
