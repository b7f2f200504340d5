//! Sending and reading messages: who may send what to whom, and how history pages.

use parley_store::{
    ConversationCursor, ConversationSummary, MessagePage, MessageRange, NewDirectMessage, Stored,
};
use parley_wire::payloads::{Message, SendMessage};
use parley_wire::{ConversationId, UserId};

use crate::{now_ms, Domain, DomainError};

/// Longest client message id accepted, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 64;
/// Page size when the caller gives none, and the most one page may hold.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

/// A history request as the caller wrote it; limits are clamped here.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryQuery {
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

impl Domain {
    /// Stores a 1:1 message from `sender` exactly once. A retry with the same
    /// client id returns the message stored the first time, unchanged.
    #[tracing::instrument(skip_all, fields(user_id = %sender))]
    pub async fn send_direct_message(
        &self,
        sender: UserId,
        msg: SendMessage,
    ) -> Result<Stored<Message>, DomainError> {
        check_client_id(&msg.id)?;
        // A retry is answered before anything else is re-checked: the first attempt passed.
        if let Some(existing) = self.store().message_by_client_id(sender, &msg.id).await? {
            return Ok(Stored::Existing(existing));
        }
        if msg.to == sender {
            return Err(DomainError::invalid(
                "invalid_recipient",
                "a message cannot be sent to oneself",
            ));
        }
        if msg.text.trim().is_empty() {
            return Err(DomainError::invalid("empty_text", "text is empty"));
        }
        let max = self.limits().max_text_chars;
        if msg.text.chars().count() > max {
            return Err(DomainError::invalid(
                "text_too_long",
                format!("text is longer than {max} characters"),
            ));
        }
        if !self.store().user_exists(msg.to).await? {
            return Err(DomainError::not_found(
                "unknown_recipient",
                "no such recipient",
            ));
        }
        let new = NewDirectMessage {
            sender,
            recipient: msg.to,
            client_id: msg.id,
            body: msg.text,
            now_ms: now_ms(),
        };
        match self.store().store_direct_message(&new).await {
            Ok(stored) => Ok(stored),
            Err(parley_store::StoreError::MissingReference) => Err(DomainError::not_found(
                "unknown_recipient",
                "no such recipient",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Who belongs to a conversation.
    pub async fn conversation_members(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<UserId>, DomainError> {
        Ok(self.store().members_of(conversation).await?)
    }

    /// The caller's conversations, newest activity first.
    pub async fn conversations(
        &self,
        user: UserId,
        cursor: Option<ConversationCursor>,
        limit: Option<u32>,
    ) -> Result<Vec<ConversationSummary>, DomainError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        Ok(self.store().conversations_for(user, cursor, limit).await?)
    }

    /// A page of a conversation's history. Non-members get `conversation_not_found`,
    /// exactly as for a conversation that does not exist.
    pub async fn history(
        &self,
        user: UserId,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<MessagePage, DomainError> {
        if !self.store().is_member(conversation, user).await? {
            return Err(DomainError::not_found(
                "conversation_not_found",
                "no such conversation",
            ));
        }
        for bound in [query.before, query.after].into_iter().flatten() {
            if bound < 0 {
                return Err(DomainError::invalid(
                    "invalid_cursor",
                    "before and after are sequence numbers ≥ 0",
                ));
            }
        }
        let range = MessageRange {
            before: query.before,
            after: query.after,
            limit: query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
        };
        Ok(self.store().messages_in(conversation, range).await?)
    }
}

fn check_client_id(id: &str) -> Result<(), DomainError> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN || id.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            "invalid_id",
            format!("id is 1 to {MAX_CLIENT_ID_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}
