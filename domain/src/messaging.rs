//! Sending and reading messages: who may send what where, what each member's
//! devices are told, and how history pages.

use parley_store::{
    ConversationCursor, ConversationFilter, ConversationSummary, MessagePage, MessageRange, NewMessage, Posted,
    StoreError, Stored, Target,
};
use parley_wire::payloads::{Event, Outgoing, SendMessage};
use parley_wire::{topics, ConversationId, UserId};

use crate::policy::ContactPolicy;
use crate::ratelimit::ConversationKey;
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
    /// Stores a message from `sender` exactly once. A retry with the same client id
    /// returns the message stored the first time, unchanged.
    #[tracing::instrument(skip_all, fields(user_id = %sender))]
    pub async fn send_message(&self, sender: UserId, msg: SendMessage) -> Result<Stored<Posted>, DomainError> {
        check_client_id(&msg.id)?;
        // A retry is answered before anything else is re-checked: the first attempt passed.
        if let Some(existing) = self.store().message_by_client_id(sender, &msg.id).await? {
            return Ok(Stored::Existing(self.store().posted(existing).await?));
        }
        let target = match (msg.to, msg.conversation_id) {
            (Some(to), None) if to == sender => {
                return Err(DomainError::invalid("invalid_recipient", "a message cannot be sent to oneself"))
            }
            // An unknown recipient fails the store's foreign key: `unknown_recipient`, no extra query.
            (Some(to), None) => Target::Direct(to),
            (None, Some(conversation)) => Target::Conversation(conversation),
            _ => {
                return Err(DomainError::invalid(
                    "invalid_recipient",
                    "give exactly one of `to` (a user) and `conversation_id`",
                ))
            }
        };
        let (kind, attachment) = self.check_content(sender, &msg).await?;
        // The hot path: under `open` the policy costs nothing.
        if self.limits().contact_policy != ContactPolicy::Open {
            self.require_reach_for_message(sender, &target).await?;
        }
        let key = match target {
            Target::Direct(to) => ConversationKey::pair(sender, to),
            Target::Conversation(c) => ConversationKey::Id(c),
        };
        if let Err((scope, wait)) = self.send_limits().check(sender, key) {
            tracing::info!(user_id = %sender, scope, wait_ms = wait.as_millis() as u64, "message rate limited");
            return Err(DomainError::RateLimited {
                code: "rate_limited",
                message: format!("too many messages for this {scope}; retry in {} ms", wait.as_millis().max(1)),
                retry_after: wait,
            });
        }
        let new = NewMessage {
            sender,
            target,
            client_id: msg.id,
            kind,
            body: msg.text,
            reply_to: msg.reply_to,
            attachment,
            now_ms: now_ms(),
        };
        self.post(new).await
    }

    /// Stores a message the server writes (membership changes and the like).
    pub(crate) async fn post_system(
        &self,
        actor: UserId,
        conversation: ConversationId,
        body: &serde_json::Value,
    ) -> Result<Posted, DomainError> {
        let new = NewMessage {
            sender: actor,
            target: Target::Conversation(conversation),
            client_id: format!("system-{}", uuid::Uuid::now_v7().simple()),
            kind: "system",
            body: body.to_string(),
            reply_to: None,
            attachment: None,
            now_ms: now_ms(),
        };
        Ok(self.post(new).await?.into_inner())
    }

    async fn post(&self, new: NewMessage) -> Result<Stored<Posted>, DomainError> {
        match self.store().store_message(&new).await {
            Ok(stored) => Ok(stored),
            Err(StoreError::MissingReference) => Err(DomainError::not_found("unknown_recipient", "no such recipient")),
            Err(StoreError::NotMember) => {
                Err(DomainError::not_found("conversation_not_found", "no such conversation, or not a member"))
            }
            Err(StoreError::Blocked { by_sender: true }) => {
                Err(DomainError::forbidden("you_blocked", "you blocked this user; unblock to send"))
            }
            Err(StoreError::Blocked { by_sender: false }) => {
                Err(DomainError::forbidden("blocked", "this user does not accept your messages"))
            }
            Err(StoreError::InvalidReply) => {
                Err(DomainError::invalid("invalid_reply", "reply_to is not a message of this conversation"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The message's kind, its text rules, and its attachment (an upload of the
    /// sender's, required for the media kinds).
    async fn check_content(
        &self,
        sender: UserId,
        msg: &SendMessage,
    ) -> Result<(&'static str, Option<parley_wire::payloads::Attachment>), DomainError> {
        let kind = match msg.kind.as_deref().unwrap_or("text") {
            "text" => "text",
            "image" => "image",
            "audio" => "audio",
            "video" => "video",
            "file" => "file",
            _ => return Err(DomainError::invalid("invalid_kind", "kind is text, image, audio, video or file")),
        };
        if kind == "text" {
            if msg.attachment_id.is_some() {
                return Err(DomainError::invalid("invalid_attachment", "a text message has no attachment"));
            }
            self.check_text(&msg.text)?;
            return Ok((kind, None));
        }
        let max = self.limits().max_text_chars;
        if msg.text.chars().count() > max {
            return Err(DomainError::invalid("text_too_long", format!("text is longer than {max} characters")));
        }
        let Some(id) = msg.attachment_id else {
            return Err(DomainError::invalid("invalid_attachment", "a media message needs attachment_id"));
        };
        match self.store().upload_for(id, sender).await? {
            Some(upload) if upload.owner == sender => Ok((kind, Some(upload.attachment))),
            _ => Err(DomainError::invalid("invalid_attachment", "attachment_id is not an upload of yours")),
        }
    }

    pub(crate) fn check_text(&self, text: &str) -> Result<(), DomainError> {
        if text.trim().is_empty() {
            return Err(DomainError::invalid("empty_text", "text is empty"));
        }
        let max = self.limits().max_text_chars;
        if text.chars().count() > max {
            return Err(DomainError::invalid("text_too_long", format!("text is longer than {max} characters")));
        }
        Ok(())
    }

    /// Who belongs to a conversation.
    pub async fn conversation_members(&self, conversation: ConversationId) -> Result<Vec<UserId>, DomainError> {
        Ok(self.store().members_of(conversation).await?)
    }

    /// The caller's conversations, newest activity first.
    pub async fn conversations(
        &self,
        user: UserId,
        cursor: Option<ConversationCursor>,
        limit: Option<u32>,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationSummary>, DomainError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        if filter.query.as_ref().is_some_and(|q| q.chars().count() > 100) {
            return Err(DomainError::invalid("invalid_query", "search text is at most 100 characters"));
        }
        Ok(self.store().conversations_for(user, cursor, limit, filter).await?)
    }

    /// A page of a conversation's history. Non-members get `conversation_not_found`,
    /// exactly as for a conversation that does not exist.
    pub async fn history(
        &self,
        user: UserId,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<MessagePage, DomainError> {
        self.require_member(conversation, user).await?;
        for bound in [query.before, query.after].into_iter().flatten() {
            if bound < 0 {
                return Err(DomainError::invalid("invalid_cursor", "before and after are sequence numbers ≥ 0"));
            }
        }
        let range = MessageRange {
            before: query.before,
            after: query.after,
            limit: query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
        };
        Ok(self.store().messages_in(conversation, user, range).await?)
    }

    /// Fails with `conversation_not_found` unless `user` is a member.
    pub(crate) async fn require_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<parley_store::MemberRecord, DomainError> {
        self.store()
            .member(conversation, user)
            .await?
            .ok_or_else(|| DomainError::not_found("conversation_not_found", "no such conversation"))
    }
}

/// What a stored message causes on the wire: the sender's acknowledgement (when
/// `ack_to` is given) and the message event for every member's devices, each with
/// that member's own event number.
pub fn message_outgoing(posted: &Posted, ack_to: Option<UserId>) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(posted.deliveries.len() + 1);
    if let Some(sender) = ack_to {
        let own = posted.deliveries.iter().find(|(u, _)| *u == sender).map_or(0, |(_, seq)| *seq);
        out.push(Outgoing::new(sender, topics::ACK, &posted.message.ack(own)));
    }
    for (user, event_seq) in &posted.deliveries {
        out.push(Outgoing::new(*user, topics::MSG, &Event::new(*event_seq, "message", &posted.message)));
    }
    out
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
