-- The request queue per instance (issue 14): one pending entry per (UID,
-- recurrence key), the series' under '' and one per instance the organizer
-- updated on its own, so that a CANCEL of 19 April leaves the pending update
-- of 12 April. `recurrence_key` is written as the objects' is (RFC 3339 UTC,
-- seconds, 'Z').
ALTER TABLE request_queue
    ADD COLUMN recurrence_key text NOT NULL DEFAULT '',
    ADD COLUMN recurrence_id  timestamptz;

-- An entry written before holds the whole UID's request. One of a single
-- instance (a REQUEST of one RECURRENCE-ID, which ingest resolved) becomes
-- that instance's entry; any other stays the series', whose acceptance
-- stores every component it holds.
UPDATE request_queue q
SET recurrence_id = r.rid,
    recurrence_key = to_char(r.rid AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
FROM (
    SELECT partition, user_addr, uid,
           (data -> 'components' -> 0 -> 'recurrence_id' -> 'time' ->> 'utc')::timestamptz AS rid
    FROM request_queue
    WHERE jsonb_typeof(data -> 'components') = 'array'
      AND jsonb_array_length(data -> 'components') = 1
      AND data -> 'components' -> 0 -> 'recurrence_id' -> 'time' ->> 'utc' IS NOT NULL
) r
WHERE q.partition = r.partition AND q.user_addr = r.user_addr AND q.uid = r.uid;

-- The key's name differs when IMIP_DB_LAYOUT=list rebuilt the table.
DO $$
DECLARE
    pk text;
BEGIN
    SELECT conname INTO pk FROM pg_constraint
    WHERE conrelid = 'request_queue'::regclass AND contype = 'p';
    EXECUTE format('ALTER TABLE request_queue DROP CONSTRAINT %I', pk);
END
$$;
ALTER TABLE request_queue ADD PRIMARY KEY (partition, user_addr, uid, recurrence_key);
