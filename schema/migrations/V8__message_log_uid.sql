-- Which calendar object a message was about, for `imip-ctl log`: the UID of
-- its first component and that component's RECURRENCE-ID (RFC 3339 UTC, or the
-- value as written for a floating or all-day one; NULL for the series).
-- NULL for rows written before this migration and for messages without
-- components. Written by the lane with the rest of the row (store/write.rs).
ALTER TABLE message_log ADD COLUMN uid text;
ALTER TABLE message_log ADD COLUMN recurrence_id text;
