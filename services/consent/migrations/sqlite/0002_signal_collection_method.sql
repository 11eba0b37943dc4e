-- How a signal was collected: a GPC flag first seen on a Check is recorded as `gpc_signal`;
-- signals recorded through RecordSignal carry the caller's method (`api` unless it says).
ALTER TABLE signals ADD COLUMN collection_method TEXT NOT NULL DEFAULT 'api';
