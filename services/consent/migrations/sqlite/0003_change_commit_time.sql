-- When each change was written (microseconds since the Unix epoch, taken in its transaction), so
-- that the change stream can carry it and every gate can measure how long the change took to
-- reach it (withdrawal propagation). Changes written before this migration have none.
ALTER TABLE changes ADD COLUMN committed_micros BIGINT NULL;
