-- imipflow database layout, version 1.
-- Every table's key begins with the user, and every statement the processor
-- issues names one user, so that the tables can be distributed on that column
-- (Citus) without changing a query.

-- Facts about this deployment that every processor must agree on.
CREATE TABLE deployment (
    key   text PRIMARY KEY,
    value text NOT NULL
);
