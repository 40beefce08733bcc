-- tsp-broker schema 1: accounts, address assignments, the fleet's brokers and which broker
-- carries which tunnel. Applied by `tsp-broker db migrate` or by a broker at start, in one
-- transaction under an advisory lock (db.rs); never edit an applied migration, add the next.

-- Accounts: DIGEST-MD5's HA1 = MD5(name ":" realm ":" password), never the password. PLAIN and
-- PASSDSS-3DES-1 logins are checked by recomputing it, as with the accounts file.
CREATE TABLE users (
    name    text PRIMARY KEY CHECK (name ~ '^[!-9;-~]{1,253}$'),
    realm   text NOT NULL,
    ha1     bytea NOT NULL CHECK (length(ha1) = 16),
    enabled boolean NOT NULL DEFAULT true,
    created timestamptz NOT NULL DEFAULT now()
);

-- Address assignments, stable per key ("user:<name>", or "anon:<reported>@<seen>" for
-- anonymous clients): the client's IPv6 address (addr6), its delegated prefix (prefix6) and
-- its IPv4 address for v4v6 (addr4). One block per key and pool; no two blocks overlap, whoever
-- allocates them: two brokers racing for the last free block cannot both commit it.
CREATE TABLE assignments (
    key   text NOT NULL,
    pool  text NOT NULL CHECK (pool IN ('addr6', 'prefix6', 'addr4')),
    block cidr NOT NULL,
    since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, pool),
    EXCLUDE USING gist (block inet_ops WITH &&)
);

-- The fleet: one heartbeat row per broker (seen = the database's clock at its last beat).
CREATE TABLE brokers (
    id       text PRIMARY KEY,
    address  text NOT NULL,
    sessions integer NOT NULL DEFAULT 0,
    capacity integer NOT NULL,
    started  timestamptz NOT NULL DEFAULT now(),
    seen     timestamptz NOT NULL DEFAULT now()
);

-- Which broker carries a key's tunnel (its "home" while that broker lives).
CREATE TABLE sessions (
    key    text PRIMARY KEY,
    broker text NOT NULL REFERENCES brokers (id) ON DELETE CASCADE,
    since  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_broker ON sessions (broker);

-- What routing must know: each carried tunnel's blocks and the broker carrying them.
CREATE VIEW tunnel_routes AS
    SELECT s.key, s.broker, b.address AS broker_address, b.seen AS broker_seen, a.pool, a.block
    FROM sessions s
    JOIN brokers b ON b.id = s.broker
    JOIN assignments a ON a.key = s.key;
