//! Throttling of failed logins, per user and per source address: the answer to a failed login
//! is held back, longer with every recent failure of the same user or from the same address
//! (doubling from `login_delay` up to `login_delay_max`). The count decays with time, so the
//! rightful user is never locked out: at worst a correct password waits out the delay still
//! pending for that user or address. Memory is bounded (a capped map whose entries expire).
//!
//! See docs/tsp-wire.md §1.7.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures a user may make before their answers are delayed (typos are free).
const FREE_PER_USER: u32 = 3;
/// Failures from one address before delays start: several users may share an address (NAT).
const FREE_PER_SOURCE: u32 = 6;
/// One recent failure is forgotten per this much time without another.
const DECAY: Duration = Duration::from_secs(30);
/// Users and addresses remembered at most; beyond, expired then oldest entries go first.
pub const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(u64),
    Source(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Recent failures (before decay).
    failures: u32,
    last: Instant,
    /// Answers for this user or address go out no earlier than this.
    hold_until: Instant,
}

impl Entry {
    fn failures_at(&self, now: Instant) -> u32 {
        let steps = now.saturating_duration_since(self.last).as_secs() / DECAY.as_secs().max(1);
        self.failures.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
    }

    fn expired(&self, now: Instant) -> bool {
        self.failures_at(now) == 0 && self.hold_until <= now
    }
}

#[derive(Debug)]
pub struct LoginThrottle {
    base: Duration,
    max: Duration,
    entries: HashMap<Key, Entry>,
    /// A random key for hashing user names (the map keeps no names).
    seed: u64,
}

impl LoginThrottle {
    /// `base` zero turns throttling off.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            entries: HashMap::new(),
            seed: rand::random(),
        }
    }

    /// New delays from a reloaded configuration; the failures already counted stay.
    pub fn set_limits(&mut self, base: Duration, max: Duration) {
        self.base = base;
        self.max = max.max(base);
        if base.is_zero() {
            self.entries.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn user_key(&self, user: &str) -> Key {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u64(self.seed);
        h.write(user.to_ascii_lowercase().as_bytes());
        Key::User(h.finish())
    }

    /// The delay for the `n`-th recent failure when `free` come without one.
    fn delay(&self, n: u32, free: u32) -> Duration {
        if n <= free {
            return Duration::ZERO;
        }
        let doublings = (n - free - 1).min(30);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// A login by `user` (if the client named one) from `source` was decided: how long to
    /// hold its answer back. A failure adds to the count of both; a success clears the user's
    /// (not the address's: an attacker's own account must not reset it) but still waits out
    /// the hold pending for them, so the answer's timing tells nothing.
    pub fn on_login(&mut self, user: Option<&str>, source: IpAddr, ok: bool, now: Instant) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let source = match source {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
            v4 => v4,
        };
        let mut keys = vec![(Key::Source(source), FREE_PER_SOURCE)];
        if let Some(u) = user {
            keys.push((self.user_key(u), FREE_PER_USER));
        }
        let mut until = now;
        for (key, free) in keys {
            if ok {
                if let Some(e) = self.entries.get(&key) {
                    until = until.max(e.hold_until);
                }
                if matches!(key, Key::User(_)) {
                    self.entries.remove(&key);
                }
                continue;
            }
            self.make_room(now, &key);
            let e = self.entries.entry(key).or_insert(Entry {
                failures: 0,
                last: now,
                hold_until: now,
            });
            let n = e.failures_at(now).saturating_add(1);
            e.failures = n;
            e.last = now;
            let d = self.delay(n, free);
            let e = self.entries.get_mut(&key).expect("inserted above");
            // Parallel attempts queue behind each other, but never more than the longest
            // delay: that is all a rightful user can ever have to wait.
            e.hold_until = (e.hold_until.max(now) + d).min(now + self.max);
            if n == free + 1 {
                match key {
                    Key::Source(ip) => {
                        tracing::warn!(source = %ip, "repeated failed logins from this address; answers delayed")
                    }
                    Key::User(_) => {
                        tracing::warn!(
                            user = user.unwrap_or(""),
                            "repeated failed logins for this user; answers delayed"
                        )
                    }
                }
            }
            until = until.max(e.hold_until);
        }
        until.saturating_duration_since(now)
    }

    /// Keeps the map under [`MAX_ENTRIES`]: expired entries go, then the longest quiet ones.
    fn make_room(&mut self, now: Instant, key: &Key) {
        if self.entries.len() < MAX_ENTRIES || self.entries.contains_key(key) {
            return;
        }
        self.entries.retain(|_, e| !e.expired(now));
        if self.entries.len() >= MAX_ENTRIES {
            // Still full (a flood): drop the quietest quarter at once.
            let mut by_age: Vec<(Instant, Key)> = self.entries.iter().map(|(k, e)| (e.last, *k)).collect();
            by_age.sort_unstable_by_key(|(last, _)| *last);
            for (_, k) in by_age.iter().take(self.entries.len() - MAX_ENTRIES * 3 / 4) {
                self.entries.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_per_user_and_decay() {
        let mut t = LoginThrottle::new(ms(100), ms(3000));
        let src: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        let holds: Vec<u128> = (0..8)
            .map(|i| {
                // Each attempt after the previous answer went out.
                let now = t0 + Duration::from_secs(i * 4);
                t.on_login(Some("alice"), src, false, now).as_millis()
            })
            .collect();
        // Three free, then 100, 200, 400, 800, 1600 ms; the address is charged too (free 6).
        assert_eq!(holds, vec![0, 0, 0, 100, 200, 400, 800, 1600]);
        // The right password: no lockout, at most the pending hold.
        let now = t0 + Duration::from_secs(40);
        assert_eq!(t.on_login(Some("alice"), src, true, now), Duration::ZERO);
        // The user's count is gone; the address's decays (one failure per 30 s).
        assert_eq!(t.on_login(Some("alice"), src, false, now), ms(400));
        let later = now + Duration::from_secs(30 * 10);
        assert_eq!(t.on_login(Some("alice"), src, false, later), Duration::ZERO);
    }

    #[test]
    fn parallel_failures_queue_but_a_success_waits_at_most_the_longest_delay() {
        let mut t = LoginThrottle::new(ms(100), ms(2000));
        let src: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..50 {
            last = t.on_login(Some("bob"), src, false, now);
        }
        assert_eq!(last, ms(2000));
        // Same instant, from elsewhere, the right password: waits out the user's hold only.
        let other: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(t.on_login(Some("bob"), other, true, now), ms(2000));
        assert_eq!(t.on_login(Some("bob"), other, true, now + ms(2500)), Duration::ZERO);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut t = LoginThrottle::new(ms(100), ms(2000));
        let now = Instant::now();
        for i in 0..(3 * MAX_ENTRIES as u32) {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.on_login(Some(&format!("user{i}")), src, false, now);
            assert!(t.len() <= MAX_ENTRIES);
        }
        // Throttling off: nothing kept.
        let mut off = LoginThrottle::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(
            off.on_login(Some("x"), "192.0.2.1".parse().unwrap(), false, now),
            Duration::ZERO
        );
        assert!(off.is_empty());
    }
}
