//! Searching the messages a user can read.

use parley_store::{SearchCursor, SearchHit};
use parley_wire::{ConversationId, UserId};

use crate::{Domain, DomainError};

impl Domain {
    /// Newest first, the caller's readable messages containing every word of `text`.
    pub async fn search(
        &self,
        caller: UserId,
        text: &str,
        conversation: Option<ConversationId>,
        cursor: Option<SearchCursor>,
        limit: Option<u32>,
    ) -> Result<Vec<SearchHit>, DomainError> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > 200 {
            return Err(DomainError::invalid("invalid_query", "search text is 1 to 200 characters"));
        }
        if let Some(c) = conversation {
            self.require_member(c, caller).await?;
        }
        let limit = limit.unwrap_or(20).clamp(1, 100);
        Ok(self.store().search_messages(caller, text, conversation, cursor, limit).await?)
    }
}
