-- The processor's tables. Every key but `partitions` (deployment-wide lane
-- state, a Citus reference table) begins with the user, and every statement
-- the processor issues on them names one user.

CREATE EXTENSION IF NOT EXISTS btree_gist;

-- Stored calendar objects: one row per (user, UID, recurrence). `recurrence_key`
-- is '' for the master (or a single event) and the RFC 3339 UTC instant of the
-- RECURRENCE-ID otherwise, so that the primary key needs no NULL handling.
CREATE TABLE objects (
    user_addr      text        NOT NULL,
    uid            text        NOT NULL,
    recurrence_key text        NOT NULL,
    recurrence_id  timestamptz,
    sequence       bigint      NOT NULL,
    dtstamp        timestamptz,
    status         text,
    summary        text,
    organizer      text,
    dtstart        timestamptz,
    dtend          timestamptz,
    data           jsonb       NOT NULL,  -- StoredObject: component, zones, raw text, answers
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_addr, uid, recurrence_key)
);

-- Attendees and their answers, per recurrence (a projection of objects.data for queries).
CREATE TABLE attendees (
    user_addr      text   NOT NULL,
    uid            text   NOT NULL,
    recurrence_key text   NOT NULL,
    address        text   NOT NULL,
    partstat       text   NOT NULL,
    role           text   NOT NULL,
    answer_sequence bigint,
    answer_dtstamp timestamptz,
    PRIMARY KEY (user_addr, uid, recurrence_key, address)
);

-- Materialised busy time: one row per (user, UID, instance start).
CREATE TABLE freebusy (
    user_addr     text        NOT NULL,
    uid           text        NOT NULL,
    instance      timestamptz NOT NULL,
    period        tstzrange   NOT NULL,
    fbtype        text        NOT NULL,
    recurrence_id timestamptz,
    PRIMARY KEY (user_addr, uid, instance)
);
CREATE INDEX freebusy_user_period ON freebusy USING gist (user_addr, period);

-- Series whose instances continue past what `freebusy` materialises: queries
-- beyond `materialised_until` re-expand them from `objects`.
CREATE TABLE open_series (
    user_addr          text        NOT NULL,
    uid                text        NOT NULL,
    materialised_until timestamptz NOT NULL,
    PRIMARY KEY (user_addr, uid)
);

-- Requests waiting for the user's answer.
CREATE TABLE request_queue (
    user_addr  text        NOT NULL,
    uid        text        NOT NULL,
    organizer  text,
    summary    text,
    data       jsonb       NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_addr, uid)
);

-- One row per partition (ordered lane): the stream position of the last
-- applied message, and who may apply the next ones (lease + fencing epoch).
CREATE TABLE partitions (
    partition     integer     PRIMARY KEY,
    last_sequence bigint      NOT NULL DEFAULT 0,
    owner         text,
    epoch         bigint      NOT NULL DEFAULT 0,
    lease_until   timestamptz
);

-- Every message applied, with what it did (applied, stale, ignored, refused).
-- Also the dedupe record for re-deliveries older than JetStream's window.
CREATE TABLE message_log (
    user_addr   text        NOT NULL,
    dedupe_id   text        NOT NULL,
    stream_seq  bigint      NOT NULL,
    method      text        NOT NULL,
    outcome     text        NOT NULL,
    reason      text,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_addr, dedupe_id)
);

-- Messages that could not be applied; the lane moved on.
CREATE TABLE dead_letters (
    user_addr   text        NOT NULL,
    id          bigserial,
    partition   integer     NOT NULL,
    stream_seq  bigint      NOT NULL,
    payload     bytea       NOT NULL,
    error       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    PRIMARY KEY (user_addr, id)
);

-- Per-user event sequence (no gaps: assigned in the applying transaction).
CREATE TABLE user_events (
    user_addr text   PRIMARY KEY,
    last_seq  bigint NOT NULL
);

-- Change events written with the effects, published by the lane after commit.
CREATE TABLE outbox (
    user_addr    text        NOT NULL,
    user_seq     bigint      NOT NULL,
    partition    integer     NOT NULL,
    event_id     text        NOT NULL,
    kind         text        NOT NULL,
    body         jsonb       NOT NULL,  -- the CloudEvent
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    PRIMARY KEY (user_addr, user_seq)
);
CREATE INDEX outbox_unpublished ON outbox (partition, created_at, user_addr, user_seq)
    WHERE published_at IS NULL;
