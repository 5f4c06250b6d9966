-- Bounded cost per user (issue 12; docs/hostile-input.md, "Processor").

-- Raw iCalendar text of stored objects, once per (user, UID, text): every
-- object a message stores (a master and its overrides) refers to the same row
-- by the SHA-256 of the text, instead of carrying the text in `data` (a
-- series with 300 overrides stored its 105 KiB mail 301 times).
CREATE TABLE object_texts (
    user_addr text  NOT NULL,
    uid       text  NOT NULL,
    digest    bytea NOT NULL,  -- sha256 of the text's UTF-8 bytes
    raw       text  NOT NULL,
    PRIMARY KEY (user_addr, uid, digest)
);
ALTER TABLE objects ADD COLUMN text_digest bytea;

INSERT INTO object_texts (user_addr, uid, digest, raw)
SELECT DISTINCT ON (user_addr, uid, d) user_addr, uid, d, raw
FROM (SELECT user_addr, uid, data->>'raw' AS raw,
             sha256(convert_to(data->>'raw', 'UTF8')) AS d
      FROM objects WHERE data ? 'raw') o
ORDER BY user_addr, uid, d;
UPDATE objects SET text_digest = sha256(convert_to(data->>'raw', 'UTF8')), data = data - 'raw'
WHERE data ? 'raw';

-- Per-user quota counters (IMIP_MAX_OBJECTS_PER_USER, IMIP_MAX_FREEBUSY_PER_USER),
-- kept by the processor in the transaction that writes the rows, so that a
-- quota check reads one row instead of counting.
CREATE TABLE user_usage (
    user_addr text   PRIMARY KEY,
    objects   bigint NOT NULL DEFAULT 0,
    freebusy  bigint NOT NULL DEFAULT 0
);
INSERT INTO user_usage (user_addr, objects, freebusy)
SELECT user_addr, sum(o), sum(f)
FROM (SELECT user_addr, count(*) AS o, 0 AS f FROM objects GROUP BY user_addr
      UNION ALL
      SELECT user_addr, 0, count(*) FROM freebusy GROUP BY user_addr) c
GROUP BY user_addr;
