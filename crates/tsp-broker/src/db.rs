//! The fleet's PostgreSQL store: accounts (HA1, enabled), address assignments, the brokers'
//! heartbeat rows and which broker carries which tunnel. Every broker of a fleet reads and
//! writes the same database, so a user's addresses are the database's, not a broker's memory.
//!
//! The schema is `migrations/*.sql`, applied in order under an advisory lock. Allocation relies
//! on the schema, not on timing: `assignments` has an EXCLUDE constraint (no two blocks
//! overlap) and one row per key and pool, so two brokers racing for the last free block cannot
//! both commit it; the loser re-reads and allocates again. New blocks of a pool are picked
//! under a transaction-scoped advisory lock, so such races are rare rather than the rule.
//!
//! See docs/tsp-wire.md §1.7 and data/man/tsp-broker.8 (FLEET).

use std::net::IpAddr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::PoolKind;
use crate::config::{BrokerConfig, FleetConfig, broker_addr_text};
use tsp_proto::secret::Secret;

/// The migrations, oldest first: (version, SQL). Never edit one that shipped; add the next.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../migrations/0001_fleet.sql"))];

/// Serialises migrations of brokers starting at once (`pg_advisory_xact_lock`'s key: "tsp" 1).
const MIGRATION_LOCK: i64 = 0x7473_7000_0001;

/// Serialises new allocations in one pool (plus the pool's index).
const ALLOCATION_LOCK: i64 = 0x7473_7000_0100;

/// A connection attempt or a query that takes longer fails: the broker answers "try later"
/// rather than holding clients on a database that does not answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Allocation attempts lost to other brokers before giving up (each loss means another block
/// was taken meanwhile; a handful is already unlikely).
const MAX_RACES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot reach the database: {0}")]
    Unreachable(String),
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the database's schema is version {found}, newer than this tsp-broker knows ({known}): upgrade tsp-broker")]
    SchemaTooNew { found: i32, known: i32 },
    #[error("the database schema is not there yet: run `tsp-broker db migrate`")]
    NoSchema,
    #[error("cannot read the database password from {path}: {source}")]
    PasswordFile { path: String, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error("allocation lost {0} races in a row to other brokers")]
    Contention(usize),
    #[error("no user {0:?}")]
    NoUser(String),
    #[error("user {0:?} exists already")]
    UserExists(String),
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => Self::Query(e),
            PoolError::Timeout(_) => Self::Timeout(TIMEOUT),
            other => Self::Unreachable(other.to_string()),
        }
    }
}

/// An account as the database holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    Missing,
    Disabled,
    Enabled([u8; 16]),
}

/// A user as `tsp-broker db list-users` shows it.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    pub realm: String,
    pub enabled: bool,
    /// pool name and block, e.g. ("addr6", "2001:db8:b::2/128").
    pub blocks: Vec<(String, String)>,
    /// The broker carrying the user's tunnel, if one does.
    pub broker: Option<String>,
}

/// A pool of connections to the fleet's database.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or(Err(DbError::Timeout(TIMEOUT)))
}

fn is_race(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::EXCLUSION_VIOLATION || *c == SqlState::UNIQUE_VIOLATION
    )
}

impl Db {
    /// A pool for `fleet`'s database; connects lazily (a broker starts even while the
    /// database is down, and serves once it is back).
    pub fn new(fleet: &FleetConfig) -> Result<Self, DbError> {
        let mut pg: tokio_postgres::Config = fleet
            .database
            .parse()
            .map_err(|e| DbError::Config(format!("database: not a PostgreSQL connection string: {e}")))?;
        if let Some(path) = &fleet.database_password_file {
            let text = std::fs::read_to_string(path).map_err(|source| DbError::PasswordFile {
                path: path.display().to_string(),
                source,
            })?;
            let password = Secret::new(text.trim_end_matches(['\r', '\n']));
            pg.password(password.expose());
        }
        pg.connect_timeout(TIMEOUT);
        if pg.get_application_name().is_none() {
            pg.application_name("tsp-broker");
        }
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                // A connection the server closed (a restart) is noticed and replaced.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .build()
            .map_err(|e| DbError::Config(e.to_string()))?;
        Ok(Self { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => DbError::Unreachable(e.to_string()),
            PoolError::Timeout(_) => DbError::Unreachable(format!("no connection within {TIMEOUT:?}")),
            other => DbError::Unreachable(other.to_string()),
        })
    }

    /// One statement on a pooled connection, within [`TIMEOUT`]: the rows it changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        timed(async { Ok(self.client().await?.execute(sql, params).await?) }).await
    }

    /// One query on a pooled connection, within [`TIMEOUT`].
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        timed(async { Ok(self.client().await?.query(sql, params).await?) }).await
    }

    /// One query for at most one row, within [`TIMEOUT`].
    async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, DbError> {
        timed(async { Ok(self.client().await?.query_opt(sql, params).await?) }).await
    }

    /// Applies the migrations the database lacks; the schema version afterwards.
    pub async fn migrate(&self) -> Result<i32, DbError> {
        // Up to date (the common case at a broker's start): no lock and no DDL, so a broker
        // whose database user may only read and write rows starts all the same.
        match self.check_schema().await {
            Ok(()) => return Ok(MIGRATIONS.last().map_or(0, |m| m.0)),
            Err(DbError::NoSchema) => {}
            Err(e) => return Err(e),
        }
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS tsp_schema (version integer PRIMARY KEY, \
                 applied timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
            let found: i32 = tx
                .query_one("SELECT coalesce(max(version), 0) FROM tsp_schema", &[])
                .await?
                .get(0);
            let known = MIGRATIONS.last().map_or(0, |m| m.0);
            if found > known {
                return Err(DbError::SchemaTooNew { found, known });
            }
            for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
                tx.batch_execute(sql).await?;
                tx.execute("INSERT INTO tsp_schema (version) VALUES ($1)", &[version])
                    .await?;
                tracing::info!(version, "database schema migrated");
            }
            tx.commit().await?;
            Ok(known)
        })
        .await
    }

    /// Checks that the schema is the one this broker knows (without changing it).
    pub async fn check_schema(&self) -> Result<(), DbError> {
        timed(async {
            let client = self.client().await?;
            let row = client.query_opt("SELECT max(version) FROM tsp_schema", &[]).await;
            let found: Option<i32> = match row {
                Ok(r) => r.and_then(|r| r.get(0)),
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => None,
                Err(e) => return Err(e.into()),
            };
            let known = MIGRATIONS.last().map_or(0, |m| m.0);
            match found {
                None => Err(DbError::NoSchema),
                Some(v) if v > known => Err(DbError::SchemaTooNew { found: v, known }),
                Some(v) if v < known => Err(DbError::NoSchema),
                Some(_) => Ok(()),
            }
        })
        .await
    }

    /// The account of `user` in `realm` (an account of another realm does not exist here: its
    /// HA1 could not match).
    pub async fn account(&self, user: &str, realm: &str) -> Result<Account, DbError> {
        let row = self
            .query_opt(
                "SELECT ha1, enabled FROM users WHERE name = $1 AND realm = $2",
                &[&user, &realm],
            )
            .await?;
        Ok(match row {
            None => Account::Missing,
            Some(r) if !r.get::<_, bool>(1) => Account::Disabled,
            Some(r) => {
                let ha1: Vec<u8> = r.get(0);
                ha1.try_into().map_or(Account::Missing, Account::Enabled)
            }
        })
    }

    /// The block of `len` bits for `key` in `kind`'s pool: the one it holds if it has that
    /// length, else the first free one. `None`: the pool is exhausted.
    pub async fn assign(
        &self,
        cfg: &BrokerConfig,
        key: &str,
        kind: PoolKind,
        len: u8,
    ) -> Result<Option<u128>, DbError> {
        for _ in 0..MAX_RACES {
            match timed(self.try_assign(cfg, key, kind, len)).await {
                Err(DbError::Query(e)) if is_race(&e) => {
                    tracing::debug!(
                        key,
                        pool = kind.name(),
                        "another broker took the block first; allocating again"
                    );
                }
                other => return other,
            }
        }
        Err(DbError::Contention(MAX_RACES))
    }

    async fn try_assign(
        &self,
        cfg: &BrokerConfig,
        key: &str,
        kind: PoolKind,
        len: u8,
    ) -> Result<Option<u128>, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let held = tx
            .query_opt(
                "SELECT block::inet, masklen(block) FROM assignments WHERE key = $1 AND pool = $2",
                &[&key, &kind.name()],
            )
            .await?;
        if let Some(row) = &held
            && row.get::<_, i32>(1) == i32::from(len)
        {
            return Ok(Some(to_u128(row.get(0))));
        }
        // New blocks of a pool are handed out one transaction at a time across the fleet
        // (else a burst of new users on several brokers would all pick the same first free
        // block and retry); the constraint stays the guarantee, this only spares the retries.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&(ALLOCATION_LOCK + kind as i64)])
            .await?;
        // The pool as the database holds it; the first free block is computed here.
        let mut pool = kind.empty_pool(cfg);
        let used = tx
            .query(
                "SELECT block::inet, masklen(block) FROM assignments WHERE pool = $1 AND key <> $2",
                &[&kind.name(), &key],
            )
            .await?;
        for (i, row) in used.iter().enumerate() {
            let masklen: i32 = row.get(1);
            pool.restore(&i.to_string(), to_u128(row.get(0)), masklen as u8);
        }
        let Some(start) = pool.assign(key, len) else {
            return Ok(None);
        };
        let addr = kind.addr(start);
        let len = i32::from(len);
        let sql = if held.is_some() {
            "UPDATE assignments SET block = set_masklen($3::inet, $4)::cidr, since = now() \
             WHERE key = $1 AND pool = $2"
        } else {
            "INSERT INTO assignments (key, pool, block) VALUES ($1, $2, set_masklen($3::inet, $4)::cidr)"
        };
        tx.execute(sql, &[&key, &kind.name(), &addr, &len]).await?;
        tx.commit().await?;
        Ok(Some(start))
    }

    /// The address of the live broker other than `me` carrying `key`'s tunnel, if any.
    pub async fn home_elsewhere(&self, key: &str, me: &str, dead_after: Duration) -> Result<Option<String>, DbError> {
        let row = self
            .query_opt(
                "SELECT b.address FROM sessions s JOIN brokers b ON b.id = s.broker \
                 WHERE s.key = $1 AND s.broker <> $2 AND b.seen > now() - make_interval(secs => $3)",
                &[&key, &me, &dead_after.as_secs_f64()],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// This broker is alive: its heartbeat row, and its sessions count for the master's order.
    /// Session rows of ours that are not in `carried` (a lost "down") go, once old enough not
    /// to be a tunnel established since `carried` was taken.
    pub async fn heartbeat(&self, fleet: &FleetConfig, carried: &[String], capacity: usize) -> Result<(), DbError> {
        timed(async {
            let client = self.client().await?;
            let sessions = i32::try_from(carried.len()).unwrap_or(i32::MAX);
            let capacity = i32::try_from(capacity).unwrap_or(i32::MAX);
            client
                .execute(
                    "INSERT INTO brokers (id, address, sessions, capacity) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET address = $2, sessions = $3, capacity = $4, seen = now()",
                    &[&fleet.id, &broker_addr_text(&fleet.address), &sessions, &capacity],
                )
                .await?;
            client
                .execute(
                    "DELETE FROM sessions WHERE broker = $1 AND NOT (key = ANY($2)) \
                     AND since < now() - make_interval(secs => $3)",
                    &[&fleet.id, &carried, &fleet.dead_after.as_secs_f64()],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// A new broker process under this id: it carries nothing yet.
    pub async fn register(&self, fleet: &FleetConfig, capacity: usize) -> Result<(), DbError> {
        timed(async {
            let client = self.client().await?;
            let capacity = i32::try_from(capacity).unwrap_or(i32::MAX);
            client
                .execute(
                    "INSERT INTO brokers (id, address, sessions, capacity) VALUES ($1, $2, 0, $3) \
                     ON CONFLICT (id) DO UPDATE SET address = $2, sessions = 0, capacity = $3, \
                     started = now(), seen = now()",
                    &[&fleet.id, &broker_addr_text(&fleet.address), &capacity],
                )
                .await?;
            client
                .execute("DELETE FROM sessions WHERE broker = $1", &[&fleet.id])
                .await?;
            Ok(())
        })
        .await
    }

    /// This broker stops: out of the master's list at once, its users free.
    pub async fn leave(&self, fleet: &FleetConfig) -> Result<(), DbError> {
        self.execute("DELETE FROM brokers WHERE id = $1", &[&fleet.id])
            .await
            .map(drop)
    }

    /// `key`'s tunnel is now carried by `broker` (taken over from a dead one, if it was).
    pub async fn session_up(&self, key: &str, broker: &str) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO sessions (key, broker) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET broker = $2, since = now()",
            &[&key, &broker],
        )
        .await
        .map(drop)
    }

    /// `key`'s tunnel on `broker` ended (a row another broker took over stays).
    pub async fn session_down(&self, key: &str, broker: &str) -> Result<(), DbError> {
        self.execute("DELETE FROM sessions WHERE key = $1 AND broker = $2", &[&key, &broker])
            .await
            .map(drop)
    }

    /// The live brokers with room, least loaded first (the master's redirection list).
    pub async fn live_brokers(&self, dead_after: Duration, max: usize) -> Result<Vec<String>, DbError> {
        let rows = self
            .query(
                "SELECT address FROM brokers \
                 WHERE seen > now() - make_interval(secs => $1) AND sessions < capacity \
                 ORDER BY sessions, seen DESC LIMIT $2",
                &[&dead_after.as_secs_f64(), &(max as i64)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Where each carried tunnel's blocks must be routed: (block, broker id, broker address),
    /// for the live brokers only (`tsp-broker db routes`; the `tunnel_routes` view has all).
    pub async fn routes(&self, dead_after: Duration) -> Result<Vec<(String, String, String)>, DbError> {
        let rows = self
            .query(
                "SELECT block::text, broker, broker_address FROM tunnel_routes \
                 WHERE broker_seen > now() - make_interval(secs => $1) ORDER BY block",
                &[&dead_after.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Adds an account (`tsp-broker db add-user`): only its HA1 is stored.
    pub async fn add_user(&self, user: &str, realm: &str, ha1: &[u8; 16]) -> Result<(), DbError> {
        timed(async {
            let client = self.client().await?;
            let r = client
                .execute(
                    "INSERT INTO users (name, realm, ha1) VALUES ($1, $2, $3)",
                    &[&user, &realm, &&ha1[..]],
                )
                .await;
            match r {
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(DbError::UserExists(user.to_owned())),
                Err(e) => Err(e.into()),
                Ok(_) => Ok(()),
            }
        })
        .await
    }

    /// Replaces an account's HA1 (a new password), keeping its assignments.
    pub async fn set_password(&self, user: &str, realm: &str, ha1: &[u8; 16]) -> Result<(), DbError> {
        let n = self
            .execute(
                "UPDATE users SET realm = $2, ha1 = $3 WHERE name = $1",
                &[&user, &realm, &&ha1[..]],
            )
            .await?;
        if n == 0 {
            return Err(DbError::NoUser(user.to_owned()));
        }
        Ok(())
    }

    /// Enables or disables an account. A disabled user cannot log in; the assignments stay.
    pub async fn set_enabled(&self, user: &str, enabled: bool) -> Result<(), DbError> {
        let n = self
            .execute("UPDATE users SET enabled = $2 WHERE name = $1", &[&user, &enabled])
            .await?;
        if n == 0 {
            return Err(DbError::NoUser(user.to_owned()));
        }
        Ok(())
    }

    /// Every user with its assignments and the broker carrying its tunnel.
    pub async fn users(&self) -> Result<Vec<UserRow>, DbError> {
        let rows = self
            .query(
                "SELECT u.name, u.realm, u.enabled, \
                       coalesce(array_agg(a.pool ORDER BY a.pool) FILTER (WHERE a.pool IS NOT NULL), '{}'), \
                       coalesce(array_agg(a.block::text ORDER BY a.pool) FILTER (WHERE a.pool IS NOT NULL), '{}'), \
                       (SELECT s.broker FROM sessions s WHERE s.key = 'user:' || u.name) \
                     FROM users u LEFT JOIN assignments a ON a.key = 'user:' || u.name \
                     GROUP BY u.name ORDER BY u.name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let pools: Vec<String> = r.get(3);
                let blocks: Vec<String> = r.get(4);
                UserRow {
                    name: r.get(0),
                    realm: r.get(1),
                    enabled: r.get(2),
                    blocks: pools.into_iter().zip(blocks).collect(),
                    broker: r.get(5),
                }
            })
            .collect())
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}
