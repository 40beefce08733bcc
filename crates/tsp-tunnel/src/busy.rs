//! Busy polling (gogoc.conf `busy_poll`, the broker's `busy_poll`): after a packet, a datapath
//! keeps asking its TUN and socket for the next one for a while instead of sleeping in epoll,
//! like the kernel's `net.core.busy_poll` does for a NIC.
//!
//! Why: on the virtual machines the project is measured on, most of a round trip through the
//! tunnel is the wake-up of threads that slept (docs/ARCHITECTURE.md, "Latency"). A thread
//! that polls is not woken: the packet is simply there at its next attempt. The price is a
//! CPU kept busy while traffic flows at least once per window, so it is off by default (a
//! laptop's battery) and an operator's or a user's choice; once the window passes without a
//! packet the datapath sleeps as before, so an idle tunnel costs nothing either way.

use std::io;
use std::time::{Duration, Instant};

/// Attempts between turns of the runtime's other tasks (each turn also polls epoll).
const RUNTIME_EVERY: u32 = 64;

/// The busy-poll window of one datapath loop and when it last moved a packet.
#[derive(Debug, Clone, Copy)]
pub struct BusyPoll {
    window: Duration,
    last: Option<Instant>,
}

impl BusyPoll {
    /// Polls for `window` after each packet; a zero window never polls.
    pub fn new(window: Duration) -> Self {
        Self { window, last: None }
    }

    /// A packet moved at `now`: the window opens again from there.
    pub fn traffic(&mut self, now: Instant) {
        if !self.window.is_zero() {
            self.last = Some(now);
        }
    }

    /// Whether the loop should still poll at `now` rather than sleep.
    pub fn open(&self, now: Instant) -> bool {
        self.last
            .is_some_and(|last| now.saturating_duration_since(last) < self.window)
    }

    /// While the window is open (and before `until`), tries `attempt` again and again, giving
    /// way to other threads after each attempt and to the runtime's other tasks every
    /// 64 attempts (`RUNTIME_EVERY`). `Ok(None)`: the window closed (or
    /// `until` came) with nothing; the caller then waits for readiness as usual. An error of
    /// `attempt` ends the polling and is returned.
    pub async fn spin<T>(
        &mut self,
        until: Option<Instant>,
        mut attempt: impl FnMut() -> io::Result<Option<T>>,
    ) -> io::Result<Option<T>> {
        let mut tries = 0u32;
        loop {
            let now = Instant::now();
            if !self.open(now) || until.is_some_and(|u| now >= u) {
                return Ok(None);
            }
            if let Some(v) = attempt()? {
                self.traffic(Instant::now());
                return Ok(Some(v));
            }
            // Give way to other threads of this CPU (the application waiting for the packet
            // we are about to deliver must not wait for our time slice to end).
            std::thread::yield_now();
            tries = tries.wrapping_add(1);
            if tries.is_multiple_of(RUNTIME_EVERY) {
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_last_packet() {
        let t0 = Instant::now();
        let mut b = BusyPoll::new(Duration::from_millis(20));
        assert!(!b.open(t0), "closed before any packet");
        b.traffic(t0);
        assert!(b.open(t0 + Duration::from_millis(19)));
        assert!(!b.open(t0 + Duration::from_millis(20)));
        b.traffic(t0 + Duration::from_millis(30));
        assert!(b.open(t0 + Duration::from_millis(45)));
    }

    #[test]
    fn a_zero_window_never_polls() {
        let t0 = Instant::now();
        let mut b = BusyPoll::new(Duration::ZERO);
        b.traffic(t0);
        assert!(!b.open(t0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn spin_returns_what_comes_and_gives_up_when_the_window_closes() {
        let mut b = BusyPoll::new(Duration::from_millis(50));
        let mut calls = 0;
        // Closed: nothing is attempted.
        assert!(b.spin(None, || Ok(Some(1))).await.unwrap().is_none());
        b.traffic(Instant::now());
        let got = b
            .spin(None, || {
                calls += 1;
                Ok((calls == 3).then_some(7))
            })
            .await
            .unwrap();
        assert_eq!((got, calls), (Some(7), 3));
        // Nothing arrives: the window closes and the loop goes back to waiting.
        let start = Instant::now();
        assert!(b.spin(None, || Ok(None::<u8>)).await.unwrap().is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
        // A deadline (the keepalive's) ends polling at once.
        b.traffic(Instant::now());
        assert!(b.spin(Some(Instant::now()), || Ok(None::<u8>)).await.unwrap().is_none());
        // Errors end it too.
        b.traffic(Instant::now());
        let e = b.spin(None, || Err::<Option<u8>, _>(io::Error::other("gone"))).await;
        assert!(e.is_err());
    }

    /// Other tasks of a one-thread runtime keep running while a loop polls.
    #[tokio::test(flavor = "current_thread")]
    async fn polling_lets_other_tasks_run() {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        tokio::spawn(async move { f.store(true, std::sync::atomic::Ordering::Relaxed) });
        let mut b = BusyPoll::new(Duration::from_secs(30));
        b.traffic(Instant::now());
        let got = b
            .spin(None, || {
                Ok(flag.load(std::sync::atomic::Ordering::Relaxed).then_some(()))
            })
            .await
            .unwrap();
        assert_eq!(got, Some(()));
    }
}
