-- Who shares their free/busy with the other users of this calendar
-- (imip-manager, docs/manager.md "Sharing free/busy"): a row means the user
-- turned sharing on; turning it off deletes the row, so the default, no row,
-- is "not shared". Only imip-manager writes it, on the user's own POST.
-- Per user like every such table since V6 (docs/scaling.md): the key begins
-- with the user's partition, and IMIP_DB_LAYOUT=list partitions it
-- (processor/src/migrate/list_layout.rs).
CREATE TABLE freebusy_shares (
    partition integer     NOT NULL,
    user_addr text        NOT NULL,
    shared_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, user_addr)
);
