-- Shard by lane (issue 13; docs/scaling.md). A lane's batch writes rows of
-- many users of one partition in one transaction, so the partition, not the
-- user, is the shard key: every table's key now begins with `partition`, and
-- every statement the lanes, the relay, imip-ctl and the publisher run names
-- one partition. `partitions` is keyed by partition already; `deployment`
-- stays a table of its own (a Citus reference table).

-- The partition function of imipflow_schema::partition, in the database:
-- FNV-1a (64 bit) over the UTF-8 bytes of the normalised address, modulo the
-- partition count (at least 1). PostgreSQL has no unsigned 64-bit integer, so
-- the hash is kept as two 32-bit halves in bigints: with the prime
-- 2^40 + 0x1b3, h * prime mod 2^64 is h * 0x1b3 + (lo << 40), whose halves
-- never overflow a bigint. It backfills the rows below, and stays in the
-- database for operators (which partition holds a user) and for checks
-- (tests/tests/sharding.rs compares it with the Rust function). It must
-- never change, like the Rust one.
CREATE FUNCTION imipflow_partition(addr text, n integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    bytes bytea := convert_to(addr, 'UTF8');
    hi bigint := 3421674724;  -- 0xcbf29ce4, the offset basis' upper half
    lo bigint := 2216829733;  -- 0x84222325, its lower half
    m bigint;
BEGIN
    FOR i IN 0 .. length(bytes) - 1 LOOP
        lo := lo # get_byte(bytes, i);
        m := lo * 435;  -- 0x1b3
        hi := (hi * 435 + (m >> 32) + (lo << 8)) & 4294967295;
        lo := m & 4294967295;
    END LOOP;
    RETURN ((hi::numeric * 4294967296 + lo) % greatest(n, 1))::integer;
END
$$;
COMMENT ON FUNCTION imipflow_partition(text, integer) IS
    'imipflow_schema::partition: FNV-1a 64 of the normalised address modulo the partition count';

-- The tables whose rows belong to a user and that had no partition column.
ALTER TABLE objects       ADD COLUMN partition integer;
ALTER TABLE attendees     ADD COLUMN partition integer;
ALTER TABLE freebusy      ADD COLUMN partition integer;
ALTER TABLE open_series   ADD COLUMN partition integer;
ALTER TABLE request_queue ADD COLUMN partition integer;
ALTER TABLE message_log   ADD COLUMN partition integer;
ALTER TABLE user_events   ADD COLUMN partition integer;
ALTER TABLE object_texts  ADD COLUMN partition integer;
ALTER TABLE user_usage    ADD COLUMN partition integer;

-- Backfill from the user address with the deployment's partition count. A
-- fresh database has no rows (and `migrate` records the count after the
-- migrations); a database with rows and no count cannot be backfilled.
DO $$
DECLARE
    n integer;
    t text;
    found boolean;
BEGIN
    SELECT value::integer INTO n FROM deployment WHERE key = 'partitions';
    FOREACH t IN ARRAY ARRAY['objects', 'attendees', 'freebusy', 'open_series',
        'request_queue', 'message_log', 'user_events', 'object_texts', 'user_usage']
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', t) INTO found;
        CONTINUE WHEN NOT found;
        IF n IS NULL THEN
            RAISE EXCEPTION 'V6: table % holds rows but the deployment table has no '
                'partitions count (key ''partitions''), so its rows cannot be given their '
                'partition; insert the IMIP_PARTITIONS this deployment ran with: '
                'INSERT INTO deployment VALUES (''partitions'', ''<n>'')', t;
        END IF;
        EXECUTE format(
            'UPDATE %I r SET partition = u.p
             FROM (SELECT user_addr, imipflow_partition(user_addr, $1) AS p
                   FROM (SELECT DISTINCT user_addr FROM %I) d) u
             WHERE r.user_addr = u.user_addr', t, t) USING n;
    END LOOP;
END
$$;

ALTER TABLE objects       ALTER COLUMN partition SET NOT NULL;
ALTER TABLE attendees     ALTER COLUMN partition SET NOT NULL;
ALTER TABLE freebusy      ALTER COLUMN partition SET NOT NULL;
ALTER TABLE open_series   ALTER COLUMN partition SET NOT NULL;
ALTER TABLE request_queue ALTER COLUMN partition SET NOT NULL;
ALTER TABLE message_log   ALTER COLUMN partition SET NOT NULL;
ALTER TABLE user_events   ALTER COLUMN partition SET NOT NULL;
ALTER TABLE object_texts  ALTER COLUMN partition SET NOT NULL;
ALTER TABLE user_usage    ALTER COLUMN partition SET NOT NULL;

-- The keys: the partition first, then the old key.
ALTER TABLE objects DROP CONSTRAINT objects_pkey,
    ADD PRIMARY KEY (partition, user_addr, uid, recurrence_key);
ALTER TABLE attendees DROP CONSTRAINT attendees_pkey,
    ADD PRIMARY KEY (partition, user_addr, uid, recurrence_key, address);
ALTER TABLE freebusy DROP CONSTRAINT freebusy_pkey,
    ADD PRIMARY KEY (partition, user_addr, uid, instance);
ALTER TABLE open_series DROP CONSTRAINT open_series_pkey,
    ADD PRIMARY KEY (partition, user_addr, uid);
ALTER TABLE request_queue DROP CONSTRAINT request_queue_pkey,
    ADD PRIMARY KEY (partition, user_addr, uid);
ALTER TABLE message_log DROP CONSTRAINT message_log_pkey,
    ADD PRIMARY KEY (partition, user_addr, dedupe_id);
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_pkey,
    ADD PRIMARY KEY (partition, user_addr, id);
ALTER TABLE user_events DROP CONSTRAINT user_events_pkey,
    ADD PRIMARY KEY (partition, user_addr);
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey,
    ADD PRIMARY KEY (partition, user_addr, user_seq);
ALTER TABLE object_texts DROP CONSTRAINT object_texts_pkey,
    ADD PRIMARY KEY (partition, user_addr, uid, digest);
ALTER TABLE user_usage DROP CONSTRAINT user_usage_pkey,
    ADD PRIMARY KEY (partition, user_addr);

-- `freebusy_user_period` stays GiST on (user_addr, period), without the partition:
-- a user's rows are in one partition anyway, and with the partition in it a fresh
-- table's planner costs it like the primary key for a lane's (user, UID) probes
-- and reads all of a user's busy rows per key (Single/Hot 5,716 -> 244 msg/s).
-- `outbox_unpublished` begins with the partition already.
