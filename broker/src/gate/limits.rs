//! The gate's limits on what one address or one connection may cost it:
//! new connections per address, a ban for clients that reconnect in a tight loop,
//! and per-connection publish and byte rates (token buckets).
//!
//! Admission runs on the CONNECT before the token is checked; the rates pause
//! reading from a connection that goes too fast (TCP then pushes back on the
//! device), as the mature brokers do, instead of dropping what it sent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter};
use parley_domain::Rate;
use tokio::time::Instant;

/// The flapping rule: more than `max_connects` CONNECTs within `window` bans for `ban`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flapping {
    pub max_connects: u32,
    pub window: Duration,
    pub ban: Duration,
}

/// Why a CONNECT is turned away before its credentials are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// The address opened connections faster than allowed.
    ConnectionRate,
    /// The client reconnected in a tight loop and is banned for a while.
    Banned,
}

#[derive(Debug, Clone, Copy)]
struct Attempts {
    window_start: Instant,
    count: u32,
    banned_until: Option<Instant>,
}

/// Connection admission, shared by every listener of a gate.
pub struct Admission {
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    flapping: Option<Flapping>,
    attempts: Mutex<HashMap<(IpAddr, String), Attempts>>,
}

impl Admission {
    pub fn new(per_address: Option<Rate>, flapping: Option<Flapping>) -> Self {
        Self {
            per_address: per_address.map(|r| DefaultKeyedRateLimiter::keyed(r.quota())),
            flapping,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one CONNECT from `ip` by `username` (as claimed) with `client_id`; says why it
    /// must be refused, if it must. A client is the three together: client ids are only
    /// unique within a user, and many users may share an address (carrier NAT).
    pub fn admit(&self, ip: IpAddr, username: &str, client_id: &str) -> Result<(), Turned> {
        if let Some(limiter) = &self.per_address {
            if limiter.check_key(&ip).is_err() {
                return Err(Turned::ConnectionRate);
            }
        }
        let Some(rule) = self.flapping else { return Ok(()) };
        let now = Instant::now();
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = attempts.entry((ip, format!("{username}\n{client_id}"))).or_insert(Attempts {
            window_start: now,
            count: 0,
            banned_until: None,
        });
        if let Some(until) = entry.banned_until {
            if until > now {
                return Err(Turned::Banned);
            }
            *entry = Attempts { window_start: now, count: 0, banned_until: None };
        }
        if now.duration_since(entry.window_start) > rule.window {
            entry.window_start = now;
            entry.count = 0;
        }
        entry.count += 1;
        if entry.count > rule.max_connects {
            entry.banned_until = Some(now + rule.ban);
            tracing::warn!(%ip, username, client_id, ban = ?rule.ban, "client reconnecting in a tight loop; banned");
            return Err(Turned::Banned);
        }
        Ok(())
    }

    /// Forgets addresses and clients that have been quiet; returns the bans still standing.
    pub fn purge(&self) -> usize {
        if let Some(limiter) = &self.per_address {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let Some(rule) = self.flapping else { return 0 };
        let now = Instant::now();
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        attempts.retain(|_, a| match a.banned_until {
            Some(until) => until > now,
            None => now.duration_since(a.window_start) <= rule.window,
        });
        attempts.shrink_to_fit();
        attempts.values().filter(|a| a.banned_until.is_some()).count()
    }
}

/// One connection's publish and byte rates.
pub struct Throttle {
    publishes: Option<DefaultDirectRateLimiter>,
    bytes: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    /// Bytes read and not yet paid for.
    owed: u32,
}

impl Throttle {
    pub fn new(publishes: Option<Rate>, bytes: Option<Rate>) -> Self {
        Self {
            publishes: publishes.map(|r| DefaultDirectRateLimiter::direct(r.quota())),
            bytes: bytes.map(|r| {
                let quota = r.quota();
                (DefaultDirectRateLimiter::direct(quota), quota.burst_size())
            }),
            owed: 0,
        }
    }

    /// Takes one publish; how long to wait first if the rate is spent.
    pub fn publish(&self) -> Option<Duration> {
        let limiter = self.publishes.as_ref()?;
        limiter.check().err().map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Pays for `n` bytes read (now or earlier); how long to wait before reading more.
    pub fn read(&mut self, n: usize) -> Option<Duration> {
        let (limiter, burst) = self.bytes.as_ref()?;
        self.owed = self.owed.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        while let Some(owed) = NonZeroU32::new(self.owed) {
            // More than a burst is paid in burst-sized instalments.
            let instalment = owed.min(*burst);
            match limiter.check_n(instalment) {
                Ok(Ok(())) => self.owed -= instalment.get(),
                Ok(Err(not_until)) => return Some(not_until.wait_time_from(DefaultClock::default().now())),
                Err(_) => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[tokio::test]
    async fn an_address_over_its_connection_rate_is_turned_away_and_others_are_not() {
        let admission = Admission::new(Some(Rate { per_sec: 1, burst: 3 }), None);
        for i in 0..3 {
            assert_eq!(admission.admit(HOME, "ann", &format!("c{i}")), Ok(()));
        }
        assert_eq!(admission.admit(HOME, "ann", "c9"), Err(Turned::ConnectionRate));
        assert_eq!(admission.admit(AWAY, "ann", "c9"), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_reconnecting_in_a_tight_loop_is_banned_then_forgiven() {
        let rule = Flapping { max_connects: 3, window: Duration::from_secs(60), ban: Duration::from_secs(300) };
        let admission = Admission::new(None, Some(rule));
        for _ in 0..3 {
            assert_eq!(admission.admit(HOME, "ann", "kiosk"), Ok(()));
        }
        assert_eq!(admission.admit(HOME, "ann", "kiosk"), Err(Turned::Banned));
        // Another client id, the same one of another user, or from elsewhere, is someone else.
        assert_eq!(admission.admit(HOME, "ann", "phone"), Ok(()));
        assert_eq!(admission.admit(HOME, "bob", "kiosk"), Ok(()));
        assert_eq!(admission.admit(AWAY, "ann", "kiosk"), Ok(()));
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(admission.admit(HOME, "ann", "kiosk"), Err(Turned::Banned));
        assert_eq!(admission.purge(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(admission.admit(HOME, "ann", "kiosk"), Ok(()));
        // Connects spread wider than the window never add up to a ban.
        let admission = Admission::new(None, Some(rule));
        for _ in 0..10 {
            assert_eq!(admission.admit(HOME, "ann", "slow"), Ok(()));
            tokio::time::advance(Duration::from_secs(21)).await;
        }
        assert_eq!(admission.purge(), 0);
        tokio::time::advance(Duration::from_secs(61)).await;
        admission.purge();
        assert!(admission.attempts.lock().expect("lock").is_empty(), "quiet clients are forgotten");
    }

    #[test]
    fn a_connection_over_its_rates_is_told_to_wait() {
        let mut throttle =
            Throttle::new(Some(Rate { per_sec: 2, burst: 2 }), Some(Rate { per_sec: 1000, burst: 1000 }));
        assert_eq!(throttle.publish(), None);
        assert_eq!(throttle.publish(), None);
        let wait = throttle.publish().expect("third publish in a burst of two waits");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(throttle.read(600), None);
        let wait = throttle.read(600).expect("1200 bytes against a burst of 1000 wait");
        assert!(wait >= Duration::from_millis(150) && wait <= Duration::from_millis(200), "{wait:?}");
        // What is owed stays owed: reading a read larger than a whole burst still paces.
        let mut big = Throttle::new(None, Some(Rate { per_sec: 100, burst: 100 }));
        assert!(big.read(1000).is_some());
        assert_eq!(Throttle::new(None, None).read(usize::MAX), None);
        assert_eq!(Throttle::new(None, None).publish(), None);
    }
}
