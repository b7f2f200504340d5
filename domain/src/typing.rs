//! Typing indicators: ephemeral, never stored, only to the other members,
//! throttled so a chatty keyboard costs one signal every few seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use parley_wire::payloads::{Outgoing, Typing, TypingUpdate};
use parley_wire::{topics, ConversationId, UserId};

use crate::{Domain, DomainError};

/// How long a `start` holds without renewal, as devices are told.
pub const TYPING_EXPIRES_SECS: u64 = 6;
/// At most one forwarded `start` per user and conversation in this time.
const START_EVERY: Duration = Duration::from_secs(3);

/// Who is typing where, as far as forwarding is concerned.
#[derive(Debug, Default)]
pub struct TypingThrottle {
    last_start: Mutex<HashMap<(UserId, ConversationId), Instant>>,
}

impl TypingThrottle {
    /// Whether this change is worth forwarding: a `start` not forwarded recently,
    /// or a `stop` after a forwarded `start`.
    fn admit(&self, user: UserId, conversation: ConversationId, start: bool, now: Instant) -> bool {
        let mut map = self.last_start.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, at| now.duration_since(*at) < Duration::from_secs(TYPING_EXPIRES_SECS));
        }
        let key = (user, conversation);
        if start {
            match map.get(&key) {
                Some(at) if now.duration_since(*at) < START_EVERY => false,
                _ => {
                    map.insert(key, now);
                    true
                }
            }
        } else {
            map.remove(&key).is_some()
        }
    }
}

impl Domain {
    /// Tells the other members' connected devices that `user` is (or stopped) typing.
    pub async fn typing(&self, user: UserId, update: &TypingUpdate) -> Result<Vec<Outgoing>, DomainError> {
        let start = match update.state.as_str() {
            "start" => true,
            "stop" => false,
            _ => return Err(DomainError::invalid("invalid_state", "state is `start` or `stop`")),
        };
        let members = self.store().members_of(update.conversation_id).await?;
        if !members.contains(&user) {
            return Err(DomainError::not_found("conversation_not_found", "no such conversation"));
        }
        if !self.typing_throttle().admit(user, update.conversation_id, start, Instant::now()) {
            return Ok(Vec::new());
        }
        let signal = Typing {
            conversation_id: update.conversation_id,
            user_id: user,
            state: update.state.clone(),
            expires_in: if start { TYPING_EXPIRES_SECS } else { 0 },
        };
        Ok(members
            .into_iter()
            .filter(|m| *m != user)
            .map(|m| Outgoing::ephemeral(m, topics::TYPING, &signal))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_throttled_and_stops_follow_only_forwarded_starts() {
        let t = TypingThrottle::default();
        let (u, c) = (UserId::new(), ConversationId::new());
        let now = Instant::now();
        assert!(!t.admit(u, c, false, now), "a stop with no start is dropped");
        assert!(t.admit(u, c, true, now));
        assert!(!t.admit(u, c, true, now + Duration::from_secs(1)), "a repeated start is absorbed");
        assert!(t.admit(u, c, true, now + Duration::from_secs(4)), "but renewed after a while");
        assert!(t.admit(u, c, false, now + Duration::from_secs(5)));
        assert!(!t.admit(u, c, false, now + Duration::from_secs(5)), "one stop is enough");
        assert!(t.admit(u, ConversationId::new(), true, now), "other conversations are separate");
    }
}
