-- Incoming requests (SPEC §3): a later version of a pending request replaces
-- it, an older one does not; the pending entry keeps its (SEQUENCE, DTSTAMP).
ALTER TABLE request_queue
    ADD COLUMN sequence bigint NOT NULL DEFAULT 0,
    ADD COLUMN dtstamp  timestamptz;
