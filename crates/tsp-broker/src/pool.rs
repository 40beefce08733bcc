//! Address and prefix pools with a stable assignment per client key: the same user gets the
//! same address and prefix on every reconnect (and, with a state file, across restarts).
//!
//! See docs/tsp-wire.md §4.3, §1.7.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Blocks handed out of one address range. Addresses are handled as integers of `width`
/// bits (128 for IPv6, 32 for IPv4).
#[derive(Debug, Clone)]
pub struct Pool {
    base: u128,
    pool_len: u8,
    width: u8,
    /// key -> start of its block (the length follows from the block's end in `used`). The key
    /// is shared with the session that holds it: a broker keeps one copy per client.
    by_key: HashMap<Arc<str>, u128>,
    /// start -> end (inclusive) of every block in use, assigned or reserved
    used: BTreeMap<u128, u128>,
    /// Every address from `base` up to here is in a block in use: the search for a free
    /// block starts here instead of walking every assignment again.
    free_from: u128,
}

/// Blocks in use stepped over per allocation: a full (or fragmented) pool fails in bounded time.
const MAX_SCAN: u128 = 1 << 16;

impl Pool {
    pub fn new(base: u128, pool_len: u8, width: u8) -> Self {
        let host_bits = u32::from(width - pool_len.min(width));
        let mask = if host_bits >= 128 {
            0
        } else {
            !((1u128 << host_bits) - 1)
        };
        let width_mask = if width >= 128 { u128::MAX } else { (1u128 << width) - 1 };
        Self {
            base: base & mask & width_mask,
            pool_len,
            width,
            by_key: HashMap::new(),
            used: BTreeMap::new(),
            free_from: base & mask & width_mask,
        }
    }

    fn block_end(start: u128, len: u8, width: u8) -> u128 {
        let host_bits = u32::from(width - len);
        if host_bits >= 128 {
            u128::MAX
        } else {
            start + ((1u128 << host_bits) - 1)
        }
    }

    fn pool_end(&self) -> u128 {
        Self::block_end(self.base, self.pool_len, self.width)
    }

    /// The block in use that overlaps `start..=end`, if any, as (start, end).
    fn overlapping(&self, start: u128, end: u128) -> Option<(u128, u128)> {
        // The block before or at `end` that starts latest is the only one that can overlap.
        self.used
            .range(..=end)
            .next_back()
            .filter(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
    }

    fn overlaps(&self, start: u128, end: u128) -> bool {
        self.overlapping(start, end).is_some()
    }

    /// Marks a block used and moves `free_from` past the blocks in use that follow it.
    fn insert_used(&mut self, start: u128, end: u128) {
        self.used.insert(start, end);
        while let Some((_, e)) = self.overlapping(self.free_from, self.free_from) {
            match e.checked_add(1) {
                Some(next) => self.free_from = next,
                None => break,
            }
        }
    }

    /// Marks addresses that must never be handed out (our own, network, broadcast).
    pub fn reserve(&mut self, addr: u128) {
        if addr >= self.base && addr <= self.pool_end() && !self.overlaps(addr, addr) {
            self.insert_used(addr, addr);
        }
    }

    /// The block held by `key`, if any.
    pub fn get(&self, key: &str) -> Option<(u128, u8)> {
        let start = *self.by_key.get(key)?;
        Some((start, self.len_at(start)))
    }

    /// The prefix length of the block in use at `start`.
    fn len_at(&self, start: u128) -> u8 {
        // A block spans 2^h addresses: end - start is h one bits.
        let host_bits = self.used.get(&start).map_or(0, |&end| (end - start).count_ones());
        self.width.saturating_sub(host_bits as u8)
    }

    /// The block of length `len` for `key`: its previous one if it had one of that length,
    /// else the first free one. `None` when the pool is exhausted or `len` does not fit.
    pub fn assign<K: AsRef<str> + Into<Arc<str>>>(&mut self, key: K, len: u8) -> Option<u128> {
        if len < self.pool_len || len > self.width {
            return None;
        }
        if let Some((start, l)) = self.get(key.as_ref()) {
            if l == len {
                return Some(start);
            }
            self.release(key.as_ref());
        }
        let step = if u32::from(self.width - len) >= 128 {
            return None;
        } else {
            1u128 << (self.width - len)
        };
        let pool_end = self.pool_end();
        // Blocks are aligned to their size (the pool's base is aligned to the pool's): the
        // first candidate is the first aligned start at or after `free_from`, and a candidate
        // that overlaps a block in use moves past that whole block.
        let align = |a: u128| a.checked_next_multiple_of(step);
        let mut start = align(self.free_from)?;
        for _ in 0..MAX_SCAN {
            let end = Self::block_end(start, len, self.width);
            if end > pool_end {
                break;
            }
            match self.overlapping(start, end) {
                None => {
                    self.insert_used(start, end);
                    self.by_key.insert(key.into(), start);
                    return Some(start);
                }
                Some((_, used_end)) => start = align(used_end.checked_add(1)?)?,
            }
        }
        None
    }

    /// Restores an assignment read from the state file (ignored if it no longer fits).
    pub fn restore(&mut self, key: &str, start: u128, len: u8) -> bool {
        if len < self.pool_len || len > self.width || start < self.base {
            return false;
        }
        let end = Self::block_end(start, len, self.width);
        if end > self.pool_end() || self.overlaps(start, end) {
            return false;
        }
        self.insert_used(start, end);
        self.by_key.insert(key.into(), start);
        true
    }

    /// How many keys hold a block.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn release(&mut self, key: &str) {
        if let Some(start) = self.by_key.remove(key) {
            self.used.remove(&start);
            self.free_from = self.free_from.min(start);
        }
    }

    /// Every assignment, sorted by key (for the state file).
    pub fn assignments(&self) -> Vec<(&str, u128, u8)> {
        let mut v: Vec<_> = self.by_key.iter().map(|(k, &s)| (&**k, s, self.len_at(s))).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        let mut p = Pool::new(0x2001_0db8_000b_0000 << 64, 64, 128);
        p.reserve((0x2001_0db8_000b_0000 << 64) + 1);
        let a = p.assign("alice", 128).unwrap();
        let b = p.assign("bob", 128).unwrap();
        assert_ne!(a, b);
        assert_ne!(a & 0xffff, 1, "reserved address skipped");
        assert_eq!(p.assign("alice", 128), Some(a));
    }

    #[test]
    fn prefixes_do_not_overlap() {
        let mut p = Pool::new(0x2001_0db8_c000 << 80, 36, 128);
        let a = p.assign("r1", 48).unwrap();
        let b = p.assign("r2", 56).unwrap();
        let c = p.assign("r3", 48).unwrap();
        assert!(b > Pool::block_end(a, 48, 128));
        assert!(c > Pool::block_end(b, 56, 128) || Pool::block_end(c, 48, 128) < b);
        // A new length for r1 moves it.
        let a2 = p.assign("r1", 64).unwrap();
        assert_eq!(p.get("r1"), Some((a2, 64)));
    }

    #[test]
    fn exhaustion() {
        let mut p = Pool::new(0xc633_6400, 30, 32); // 198.51.100.0/30
        p.reserve(0xc633_6400);
        p.reserve(0xc633_6403);
        assert!(p.assign("a", 32).is_some());
        assert!(p.assign("b", 32).is_some());
        assert_eq!(p.assign("c", 32), None);
        assert_eq!(p.assign("d", 16), None, "longer than the pool");
        p.release("a");
        assert!(p.assign("c", 32).is_some());
    }

    #[test]
    fn many_assignments_and_holes() {
        // More assignments than MAX_SCAN: the search starts past the blocks in use.
        let mut p = Pool::new(0x2001_0db8_000b_0000 << 64, 64, 128);
        p.reserve((0x2001_0db8_000b_0000 << 64) + 1);
        let n = MAX_SCAN as usize + 1000;
        let starts: Vec<u128> = (0..n)
            .map(|i| p.assign(format!("k{i}").as_str(), 128).unwrap())
            .collect();
        let distinct: std::collections::BTreeSet<_> = starts.iter().collect();
        assert_eq!(distinct.len(), n);
        assert!(!distinct.contains(&((0x2001_0db8_000b_0000 << 64) + 1)));
        // A released block is the first free one again.
        p.release("k10");
        assert_eq!(p.assign("new", 128), Some(starts[10]));
        assert!(p.assign("next", 128).unwrap() > starts[n - 1]);
        // Larger blocks skip the single addresses and stay aligned.
        let b = p.assign("prefix", 120).unwrap();
        assert_eq!(b % 256, 0);
        assert!(b > starts[n - 1]);
    }

    #[test]
    fn restore_checks_bounds() {
        let mut p = Pool::new(0xc633_6400, 24, 32);
        assert!(p.restore("a", 0xc633_6405, 32));
        assert!(!p.restore("b", 0xc633_6405, 32), "overlap");
        assert!(!p.restore("c", 0x0a00_0001, 32), "outside");
        assert_eq!(p.assign("a", 32), Some(0xc633_6405));
    }
}
