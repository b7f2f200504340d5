//! Sending rate limits, per user and per conversation (GCRA token buckets from
//! `governor`). Limits are per process: each bridge enforces its own share.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use parley_wire::{ConversationId, UserId};

/// A message rate: so many per second, sustained, with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

/// Where a message goes, for the per-conversation limit (a 1:1 conversation may
/// not exist yet, so it is named by its pair of users).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversationKey {
    Pair(UserId, UserId),
    Id(ConversationId),
}

impl ConversationKey {
    pub fn pair(a: UserId, b: UserId) -> Self {
        if a <= b {
            Self::Pair(a, b)
        } else {
            Self::Pair(b, a)
        }
    }
}

/// Both limiters and the clock they run on.
pub struct SendLimits {
    users: DefaultKeyedRateLimiter<UserId>,
    conversations: DefaultKeyedRateLimiter<ConversationKey>,
    clock: DefaultClock,
}

impl Rate {
    /// The GCRA quota: `per_sec` sustained, bursts of `burst` (at least `per_sec`).
    pub fn quota(self) -> Quota {
        quota(self)
    }
}

fn quota(rate: Rate) -> Quota {
    let per_sec = NonZeroU32::new(rate.per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst.max(rate.per_sec).max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_sec).allow_burst(burst)
}

impl SendLimits {
    pub fn new(user: Rate, conversation: Rate) -> Self {
        Self {
            users: DefaultKeyedRateLimiter::keyed(quota(user)),
            conversations: DefaultKeyedRateLimiter::keyed(quota(conversation)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one message from both buckets, or says which one is empty and for how long.
    pub fn check(&self, user: UserId, conversation: ConversationKey) -> Result<(), (&'static str, Duration)> {
        let now = self.clock.now();
        if let Err(not_until) = self.users.check_key(&user) {
            return Err(("user", not_until.wait_time_from(now)));
        }
        if let Err(not_until) = self.conversations.check_key(&conversation) {
            return Err(("conversation", not_until.wait_time_from(now)));
        }
        // Forget idle keys now and then, so memory follows active senders only.
        if self.users.len() > 100_000 {
            self.users.retain_recent();
            self.conversations.retain_recent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_with_a_retry_time() {
        let limits = SendLimits::new(Rate { per_sec: 2, burst: 3 }, Rate { per_sec: 100, burst: 100 });
        let (u, c) = (UserId::new(), ConversationKey::Id(ConversationId::new()));
        for _ in 0..3 {
            assert!(limits.check(u, c).is_ok());
        }
        let (scope, wait) = limits.check(u, c).expect_err("fourth in a burst of three");
        assert_eq!(scope, "user");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limits.check(UserId::new(), c).is_ok(), "another user has its own bucket");
    }

    #[test]
    fn a_busy_conversation_is_limited_whoever_sends() {
        let limits = SendLimits::new(Rate { per_sec: 100, burst: 100 }, Rate { per_sec: 1, burst: 2 });
        let c = ConversationKey::pair(UserId::new(), UserId::new());
        assert!(limits.check(UserId::new(), c).is_ok());
        assert!(limits.check(UserId::new(), c).is_ok());
        assert_eq!(limits.check(UserId::new(), c).map_err(|e| e.0), Err("conversation"));
    }
}
