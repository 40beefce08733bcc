//! A broker as a member of a fleet: several brokers (and a master) share one PostgreSQL
//! database ([`crate::db`]) for accounts, assignments, heartbeats and sessions.
//!
//! * **Heartbeat.** Every `fleet_heartbeat_ms` a broker refreshes its row in `brokers` (with
//!   its count of carried tunnels); one whose row is older than `fleet_dead_after_ms` (the
//!   database's clock) is dead. A broker that stops leaves the table at once.
//! * **Master.** A master reads the live brokers with room, least loaded first, at the same
//!   pace and answers every client with them (`1200`, docs/tsp-wire.md §4.4).
//! * **Home.** Whichever broker carries a key's tunnel is its home (`sessions`): another broker
//!   that gets the same user while the home lives redirects the create request there, so a
//!   user's addresses are routed to one broker at a time. When the home dies, the next broker
//!   takes the session over, with the same addresses (they are the database's).
//! * **Health.** While the database does not answer, new clients are answered `530` with the
//!   reason (gogoc retries after its delay), lookups in flight are refused the same way, and
//!   the tunnels already carried go on: they need no database. The heartbeat loop notices the
//!   database's return and the broker serves again by itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{BrokerConfig, FleetConfig, broker_addr};
use crate::db::{Account, Db, DbError};
use crate::serve::Shared;
use crate::{Blocks, Plan, PoolKind, exhausted};
use tsp_proto::server::Refusal;
use tsp_proto::status::StatusCode;
use tsp_proto::types::MAX_BROKERS;

/// What clients are told while the database is unreachable.
pub const DB_DOWN: &str = "account database unreachable; try again later";
/// What a master tells clients while it knows no live broker.
pub const NO_BROKER: &str = "no live broker in the fleet; try again later";
/// What a client is told when its addresses could not be allocated for contention.
pub const CONTENDED: &str = "address allocation contended; try again later";

/// Events that must reach the database in order, retried until they do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Up(String),
    Down(String),
}

/// Events kept while the database is away; beyond this the oldest are dropped (the heartbeat's
/// clean-up repairs lost "down"s; a lost "up" only weakens a home's pin until the next login).
const MAX_QUEUED: usize = 100_000;

const UNKNOWN: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

#[derive(Debug)]
pub struct Fleet {
    pub db: Db,
    pub cfg: FleetConfig,
    /// The broker's configuration: its realm and capacity may change on a reload.
    broker_cfg: std::sync::RwLock<Arc<BrokerConfig>>,
    events: mpsc::UnboundedSender<Event>,
    inbox: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    health: AtomicU8,
}

impl Fleet {
    pub fn new(broker_cfg: Arc<BrokerConfig>, db: Db) -> Option<Arc<Self>> {
        let cfg = broker_cfg.fleet.clone()?;
        let (events, inbox) = mpsc::unbounded_channel();
        Some(Arc::new(Self {
            db,
            cfg,
            broker_cfg: std::sync::RwLock::new(broker_cfg),
            events,
            inbox: std::sync::Mutex::new(Some(inbox)),
            health: AtomicU8::new(UNKNOWN),
        }))
    }

    fn broker_cfg(&self) -> Arc<BrokerConfig> {
        self.broker_cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A reloaded configuration (the fleet's own keys cannot change without a restart).
    pub fn set_config(&self, cfg: Arc<BrokerConfig>) {
        *self.broker_cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }

    /// Whether the database answered last time it was asked.
    pub fn healthy(&self) -> bool {
        self.health.load(Ordering::SeqCst) == HEALTHY
    }

    /// A tunnel of ours was established: this broker is the key's home.
    pub fn session_up(&self, key: String) {
        let _ = self.events.send(Event::Up(key));
    }

    /// Tunnels of ours ended.
    pub fn sessions_down(&self, keys: Vec<String>) {
        for key in keys {
            let _ = self.events.send(Event::Down(key));
        }
    }

    /// The HA1 of `user`'s enabled account; a refusal (530) when the database cannot say.
    pub async fn account(&self, shared: &Shared, user: &str) -> Result<Option<[u8; 16]>, Refusal> {
        match self.db.account(user, &self.broker_cfg().realm).await {
            Ok(Account::Enabled(ha1)) => Ok(Some(ha1)),
            Ok(Account::Disabled) => {
                tracing::info!(user, "login refused: the account is disabled");
                Ok(None)
            }
            Ok(Account::Missing) => Ok(None),
            Err(e) => Err(self.unavailable(shared, "looking up an account", &e)),
        }
    }

    /// Where `key`'s tunnel lives if another live broker carries it: the client is sent there.
    pub async fn home_elsewhere(&self, shared: &Shared, key: &str) -> Result<Option<Refusal>, Refusal> {
        let home = self
            .db
            .home_elsewhere(key, &self.cfg.id, self.cfg.dead_after)
            .await
            .map_err(|e| self.unavailable(shared, "looking up a session", &e))?;
        Ok(home.and_then(|address| match broker_addr(&address) {
            Some(a) => {
                tracing::info!(key, home = %address, "tunnel carried by another live broker; redirecting there");
                Some(Refusal::redirect(vec![a]))
            }
            None => {
                tracing::warn!(key, home = %address, "the home broker's address is not usable; serving here");
                None
            }
        }))
    }

    /// Assigns a plan's blocks from the database.
    pub async fn assign(&self, shared: &Shared, plan: &Plan) -> Result<Blocks, Refusal> {
        let cfg = &self.broker_cfg();
        let get = async |kind: PoolKind, len: u8| match self.db.assign(cfg, &plan.key, kind, len).await {
            Ok(Some(start)) => Ok(start),
            Ok(None) => {
                tracing::warn!(key = %plan.key, pool = kind.name(), "pool exhausted");
                Err(exhausted(kind))
            }
            Err(e) => Err(self.unavailable(shared, "assigning addresses", &e)),
        };
        let prefix = match plan.prefix_len {
            Some(len) => Some(get(PoolKind::Prefix6, len).await?),
            None => None,
        };
        let width = if plan.addr_pool == PoolKind::Addr4 { 32 } else { 128 };
        let addr = get(plan.addr_pool, width).await?;
        Ok(Blocks { addr, prefix })
    }

    /// A database call failed: logged with the reason, the broker turns new clients away
    /// until the heartbeat gets through again, and this client is told to try later.
    fn unavailable(&self, shared: &Shared, doing: &str, e: &DbError) -> Refusal {
        if let DbError::Contention(_) = e {
            tracing::warn!(error = %e, "{doing}: refused for now");
            return Refusal::because(StatusCode::ServerTooBusy, CONTENDED);
        }
        // The client's refusal is logged by the session, with its user and peer.
        tracing::warn!(error = %e, "{doing}: database unavailable");
        self.set_health(shared, false, &e.to_string());
        Refusal::because(StatusCode::ServerTooBusy, DB_DOWN)
    }

    fn set_health(&self, shared: &Shared, healthy: bool, why: &str) {
        let new = if healthy { HEALTHY } else { UNHEALTHY };
        let old = self.health.swap(new, Ordering::SeqCst);
        if old == new {
            return;
        }
        if healthy {
            tracing::info!("database reachable; serving new clients");
            if !self.cfg.master {
                shared.set_busy(None);
            }
        } else {
            tracing::warn!(
                reason = why,
                "database unreachable; new clients are refused with 530 until it is back"
            );
            shared.set_busy(Some(DB_DOWN.to_owned()));
        }
    }

    /// The heartbeat loop (a master: the live-broker loop), and the session events.
    pub async fn run(self: Arc<Self>, shared: Shared) {
        let Some(mut inbox) = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut queue: VecDeque<Event> = VecDeque::new();
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut registered = false;
        let mut last_list: Option<Vec<String>> = None;
        loop {
            let beat = tokio::select! {
                _ = tick.tick() => true,
                ev = inbox.recv() => match ev {
                    Some(ev) => {
                        queue.push_back(ev);
                        false
                    }
                    None => return,
                },
            };
            while let Ok(ev) = inbox.try_recv() {
                queue.push_back(ev);
            }
            if queue.len() > MAX_QUEUED {
                let dropped = queue.len() - MAX_QUEUED;
                queue.drain(..dropped);
                tracing::warn!(dropped, "session events dropped while the database is away");
            }
            let result = async {
                if !registered {
                    self.db.migrate().await?;
                    if !self.cfg.master {
                        self.db.register(&self.cfg, self.broker_cfg().max_tunnels).await?;
                    }
                    registered = true;
                }
                if beat {
                    if self.cfg.master {
                        let list = self.db.live_brokers(self.cfg.dead_after, MAX_BROKERS).await?;
                        if last_list.as_ref() != Some(&list) {
                            tracing::info!(brokers = ?list, "live brokers");
                            shared.set_redirect(&list);
                            last_list = Some(list);
                        }
                    } else {
                        let carried = shared.lock().established_keys();
                        self.db
                            .heartbeat(&self.cfg, &carried, self.broker_cfg().max_tunnels)
                            .await?;
                    }
                }
                while let Some(ev) = queue.front() {
                    match ev {
                        Event::Up(key) => self.db.session_up(key, &self.cfg.id).await?,
                        Event::Down(key) => self.db.session_down(key, &self.cfg.id).await?,
                    }
                    queue.pop_front();
                }
                Ok::<_, DbError>(())
            }
            .await;
            match result {
                Ok(()) => self.set_health(&shared, true, ""),
                Err(e) => {
                    if self.cfg.master {
                        last_list = None;
                    }
                    self.set_health(&shared, false, &e.to_string());
                }
            }
        }
    }

    /// The broker stops: its row goes, so the master drops it at once.
    pub async fn leave(&self) {
        if !self.cfg.master
            && let Err(e) = self.db.leave(&self.cfg).await
        {
            tracing::warn!(error = %e, "could not leave the fleet; the master drops this broker when its heartbeat ages");
        }
    }
}

/// Turns the master's list into redirection entries (unusable ones are logged and skipped).
pub fn redirect_entries(list: &[String]) -> Vec<tsp_proto::xml::BrokerAddr> {
    list.iter()
        .filter_map(|a| {
            let entry = broker_addr(a);
            if entry.is_none() {
                tracing::warn!(address = %a, "a broker's address is not usable in a redirection; skipped");
            }
            entry
        })
        .collect()
}

/// How long a stopping broker waits for its goodbye to reach the database.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
