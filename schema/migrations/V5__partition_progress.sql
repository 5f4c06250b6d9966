-- When each lane last moved its applied position: with messages waiting, a
-- lane whose position has not moved for IMIP_STALL_AFTER_SECS is stalled
-- (/readyz, imip-ctl status, imipflow_partition_stalled; docs/operations.md).
ALTER TABLE partitions ADD COLUMN progress_at timestamptz;
