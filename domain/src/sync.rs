//! Gap-free sync: a device names the last event number it has and gets exactly
//! the events after it, in order, at a cost proportional to what it missed.

use parley_wire::payloads::{Event, SyncAnswer};
use parley_wire::UserId;

use crate::{Domain, DomainError};

/// Events per answer when the device gives no limit, and the most it may ask for.
const DEFAULT_SYNC_PAGE: u32 = 200;
const MAX_SYNC_PAGE: u32 = 1000;
/// Behind by more than this, a device is told to reset from a snapshot instead.
pub const MAX_SYNC_GAP: i64 = 10_000;

impl Domain {
    /// The events of `user` after `after`, or `reset` when they cannot be replayed:
    /// older than what is kept, more than [`MAX_SYNC_GAP`] behind, or a number the
    /// user never had.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn sync(&self, user: UserId, after: i64, limit: Option<u32>) -> Result<SyncAnswer, DomainError> {
        if after < 0 {
            return Err(DomainError::invalid("invalid_cursor", "after is an event number ≥ 0"));
        }
        let limit = limit.unwrap_or(DEFAULT_SYNC_PAGE).clamp(1, MAX_SYNC_PAGE);
        let page = self.store().events_after(user, after, limit).await?;
        let pruned = page.oldest_seq > after + 1 || (page.oldest_seq == 0 && page.last_seq > after);
        if after > page.last_seq || page.last_seq - after > MAX_SYNC_GAP || pruned {
            return Ok(SyncAnswer {
                id: None,
                events: Vec::new(),
                last_seq: page.last_seq,
                has_more: false,
                reset: true,
            });
        }
        let mut events = Vec::with_capacity(page.events.len());
        for e in page.events {
            let event = match (&e.message, e.kind.as_str()) {
                (Some(message), _) => Event::new(e.seq, &e.kind, message),
                (None, "message") => {
                    // The message itself was purged; the number stays so there is no gap.
                    Event::new(e.seq, "message_purged", &serde_json::json!({ "conversation_id": e.conversation_id }))
                }
                (None, _) => {
                    let data: serde_json::Value = serde_json::from_str(&e.body).unwrap_or_default();
                    Event::new(e.seq, &e.kind, &data)
                }
            };
            events.push(event);
        }
        let has_more = events.last().is_some_and(|e| e.event_seq < page.last_seq);
        Ok(SyncAnswer { id: None, events, last_seq: page.last_seq, has_more, reset: false })
    }
}
