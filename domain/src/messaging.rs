//! Sending and reading messages: who may send what where, what each member's
//! devices are told, and how history pages.

use parley_store::{
    ConversationCursor, ConversationFilter, ConversationSummary, MessagePage, MessageRange, NewMessage, Posted,
    StoreError, Stored, Target, Turn,
};
use parley_wire::payloads::{LiveEvent, Outgoing, SendMessage};
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
        let new = self.prepare(sender, msg).await?;
        self.post(new).await
    }

    /// Stores several messages, each from its own sender, as [`Domain::send_message`]
    /// would one after another, and answers each in order. What can be stored
    /// together is, in one transaction (see [`parley_store::Store::store_messages`]),
    /// with no query before it: retries are found there. The one difference from
    /// one at a time is that a retry counts against its sender's message rate.
    /// Also returns how many were stored together.
    pub async fn send_messages(
        &self,
        batch: Vec<(UserId, SendMessage)>,
    ) -> (Vec<Result<Stored<Posted>, DomainError>>, usize) {
        self.send_messages_in_turn(batch, Turn::default()).await
    }

    /// [`Domain::send_messages`], stored in `turn` (see
    /// [`parley_store::Store::store_messages_in_turn`]): the messages are checked
    /// first. The bridge gives each batch the turn after the previous one, so a
    /// batch is checked while the one before it is stored, and stored after it.
    #[tracing::instrument(skip_all, fields(messages = batch.len()))]
    pub async fn send_messages_in_turn(
        &self,
        batch: Vec<(UserId, SendMessage)>,
        turn: Turn,
    ) -> (Vec<Result<Stored<Posted>, DomainError>>, usize) {
        let mut out: Vec<Option<Result<Stored<Posted>, DomainError>>> = batch.iter().map(|_| None).collect();
        let mut new = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        for (i, (sender, msg)) in batch.into_iter().enumerate() {
            if let Err(e) = check_client_id(&msg.id) {
                out[i] = Some(Err(e));
                continue;
            }
            let client_id = msg.id.clone();
            match self.prepare(sender, msg).await {
                Ok(prepared) => {
                    new.push(prepared);
                    slots.push(i);
                }
                // A retry passes whatever it passed the first time (the store answers
                // those in the batch); only a refusal looks whether it is one.
                Err(e) => {
                    out[i] = Some(match self.store().message_by_client_id(sender, &client_id).await {
                        Ok(Some(existing)) => {
                            self.store().posted(existing).await.map(Stored::Existing).map_err(DomainError::from)
                        }
                        Ok(None) => Err(e),
                        Err(lookup) => Err(lookup.into()),
                    })
                }
            }
        }
        let batched = self.store().store_messages_in_turn(&new, turn).await;
        for (slot, result) in slots.into_iter().zip(batched.results) {
            out[slot] = Some(result.map_err(refused));
        }
        let out = out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(DomainError::Internal("a message of the batch was not answered".into()))))
            .collect();
        (out, batched.together)
    }

    /// Checks a message that is not a retry and says what to store.
    async fn prepare(&self, sender: UserId, msg: SendMessage) -> Result<NewMessage, DomainError> {
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
        Ok(NewMessage {
            sender,
            target,
            client_id: msg.id,
            kind,
            body: msg.text,
            reply_to: msg.reply_to,
            attachment,
            now_ms: now_ms(),
        })
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
        self.store().store_message(&new).await.map_err(refused)
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
        let event = LiveEvent { event_seq: *event_seq, kind: "message", data: &posted.message };
        out.push(Outgoing::new(*user, topics::MSG, &event));
    }
    out
}

/// What a store refusal of a message means to its sender.
fn refused(e: StoreError) -> DomainError {
    match e {
        StoreError::MissingReference => DomainError::not_found("unknown_recipient", "no such recipient"),
        StoreError::NotMember => {
            DomainError::not_found("conversation_not_found", "no such conversation, or not a member")
        }
        StoreError::Blocked { by_sender: true } => {
            DomainError::forbidden("you_blocked", "you blocked this user; unblock to send")
        }
        StoreError::Blocked { by_sender: false } => {
            DomainError::forbidden("blocked", "this user does not accept your messages")
        }
        StoreError::InvalidReply => {
            DomainError::invalid("invalid_reply", "reply_to is not a message of this conversation")
        }
        e => e.into(),
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
