//! Messages: stored exactly once per (sender, client id), numbered without gaps
//! inside their conversation.

use parley_wire::payloads::Message;
use parley_wire::{ConversationId, MessageId, UserId};
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::conversations::direct_key;
use crate::events::append_events;
use crate::{time_from_ms, Store, StoreError};

/// Where a new message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The 1:1 conversation with this user, created on the first message.
    Direct(UserId),
    /// An existing conversation the sender belongs to.
    Conversation(ConversationId),
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender: UserId,
    pub target: Target,
    pub client_id: String,
    /// `text` or `system`.
    pub kind: &'static str,
    pub body: String,
    /// A message of the same conversation this one answers (checked in the transaction).
    pub reply_to: Option<MessageId>,
    /// The uploaded file of a media message.
    pub attachment: Option<parley_wire::payloads::Attachment>,
    pub now_ms: i64,
}

impl NewMessage {
    /// The attachment's description as stored (JSON), if there is one.
    pub(crate) fn attachment_json(&self) -> Option<String> {
        self.attachment.as_ref().and_then(|a| serde_json::to_string(a).ok())
    }

    /// The message as it reads once stored under `id`, number `seq` of `conversation`.
    pub(crate) fn stored(&self, id: MessageId, conversation: ConversationId, seq: i64) -> Message {
        Message {
            id,
            conversation_id: conversation,
            seq,
            sender_id: self.sender,
            client_id: self.client_id.clone(),
            kind: self.kind.to_string(),
            text: self.body.clone(),
            sent_at: time_from_ms(self.now_ms),
            reply_to: self.reply_to,
            attachment: self.attachment.clone(),
            edited_at: None,
            deleted: false,
            reactions: Default::default(),
        }
    }
}

/// A stored message and, for each member, the number its event took in that
/// member's log (the sender included, for the sender's other devices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub message: Message,
    pub deliveries: Vec<(UserId, i64)>,
}

/// Whether a write created the row or found the one an earlier attempt created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored<T> {
    New(T),
    Existing(T),
}

impl<T> Stored<T> {
    pub fn into_inner(self) -> T {
        match self {
            Stored::New(t) | Stored::Existing(t) => t,
        }
    }
}

/// Which part of a conversation to read, by sequence number (bounds exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRange {
    pub after: Option<i64>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// A page of messages in ascending `seq`; `has_more` says whether the range holds more
/// beyond the page (newer ones when reading forward with `after`, older ones otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// The columns of a message row of table (or alias) `$t`, each aliased `$p…`.
#[rustfmt::skip]
macro_rules! message_columns {
    ($t:literal, $p:literal) => {
        concat!(
            $t, ".id AS ", $p, "id, ", $t, ".conversation_id AS ", $p, "conversation_id, ",
            $t, ".seq AS ", $p, "seq, ", $t, ".sender_id AS ", $p, "sender_id, ",
            $t, ".client_id AS ", $p, "client_id, ", $t, ".kind AS ", $p, "kind, ",
            $t, ".body AS ", $p, "body, ", $t, ".reply_to AS ", $p, "reply_to, ",
            $t, ".edited_at AS ", $p, "edited_at, ", $t, ".deleted_at AS ", $p, "deleted_at, ",
            $t, ".attachment AS ", $p, "attachment, ", $t, ".created_at AS ", $p, "created_at"
        )
    };
}
pub(crate) use message_columns;

const MESSAGE_COLUMNS: &str = message_columns!("messages", "");

/// A [`Message`] from columns selected with [`message_columns!`] under prefix `$p`.
macro_rules! message_from_row {
    ($row:expr) => {
        $crate::messages::message_from_row!($row, "")
    };
    ($row:expr, $p:literal) => {
        parley_wire::payloads::Message {
            id: parley_wire::MessageId(sqlx::Row::try_get::<uuid::Uuid, _>(&$row, concat!($p, "id"))?),
            conversation_id: parley_wire::ConversationId(sqlx::Row::try_get::<uuid::Uuid, _>(
                &$row,
                concat!($p, "conversation_id"),
            )?),
            seq: sqlx::Row::try_get(&$row, concat!($p, "seq"))?,
            sender_id: parley_wire::UserId(sqlx::Row::try_get::<uuid::Uuid, _>(&$row, concat!($p, "sender_id"))?),
            client_id: sqlx::Row::try_get(&$row, concat!($p, "client_id"))?,
            kind: sqlx::Row::try_get(&$row, concat!($p, "kind"))?,
            text: sqlx::Row::try_get(&$row, concat!($p, "body"))?,
            sent_at: $crate::time_from_ms(sqlx::Row::try_get(&$row, concat!($p, "created_at"))?),
            reply_to: sqlx::Row::try_get::<Option<uuid::Uuid>, _>(&$row, concat!($p, "reply_to"))?
                .map(parley_wire::MessageId),
            edited_at: sqlx::Row::try_get::<Option<i64>, _>(&$row, concat!($p, "edited_at"))?.map($crate::time_from_ms),
            deleted: sqlx::Row::try_get::<Option<i64>, _>(&$row, concat!($p, "deleted_at"))?.is_some(),
            attachment: sqlx::Row::try_get::<Option<String>, _>(&$row, concat!($p, "attachment"))?
                .and_then(|json| serde_json::from_str(&json).ok()),
            reactions: std::collections::BTreeMap::new(),
        }
    };
}
pub(crate) use message_from_row;

/// Like [`message_from_row!`] for a LEFT JOINed message that may be absent (its id
/// column NULL); a `hidden_for` column, when not NULL, hides it from the reader.
macro_rules! optional_message_from_row {
    ($row:expr, $p:literal) => {
        match sqlx::Row::try_get::<Option<uuid::Uuid>, _>(&$row, concat!($p, "id"))? {
            Some(_) => {
                let mut m = $crate::messages::message_from_row!($row, $p);
                if sqlx::Row::try_get::<Option<uuid::Uuid>, _>(&$row, "hidden_for")?.is_some() {
                    $crate::messages::hide(&mut m);
                }
                Some(m)
            }
            None => None,
        }
    };
}
pub(crate) use optional_message_from_row;

/// How the transaction finds the conversation it writes to.
enum ConversationKey {
    Direct(String),
    Id(Uuid),
}

/// How a message looks to a user who deleted it for itself.
pub fn hide(message: &mut Message) {
    message.deleted = true;
    message.text.clear();
    message.reactions.clear();
    message.attachment = None;
}

impl Store {
    /// Stores a message in one transaction: finds or creates the 1:1 conversation
    /// (for `Target::Direct`), takes the next sequence number under the
    /// conversation's row lock, inserts the message and appends a message event to
    /// every member's log. A message with the same (sender, client id) already
    /// stored is returned as `Existing`, with its original events, and nothing changes.
    /// The sender must be a member (`StoreError::NotMember` otherwise).
    #[tracing::instrument(skip_all)]
    pub async fn store_message(&self, msg: &NewMessage) -> Result<Stored<Posted>, StoreError> {
        let message_id = MessageId::new();
        let result: Result<Stored<Posted>, StoreError> = on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let key = match msg.target {
                Target::Direct(recipient) => {
                    let key = direct_key(msg.sender, recipient);
                    let created = sqlx::query(
                        "INSERT INTO conversations (id, kind, direct_key, audience, created_by, last_seq, created_at) \
                         VALUES ($1, 'direct', $2, 'user_user', $3, 0, $4) ON CONFLICT (direct_key) DO NOTHING \
                         RETURNING id",
                    )
                    .bind(Uuid::now_v7())
                    .bind(&key)
                    .bind(msg.sender.0)
                    .bind(msg.now_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(row) = created {
                        let id: Uuid = row.try_get("id")?;
                        sqlx::query(
                            "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at) \
                             VALUES ($1, $2, 'member', $3), ($1, $4, 'member', $3)",
                        )
                        .bind(id)
                        .bind(msg.sender.0)
                        .bind(msg.now_ms)
                        .bind(recipient.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| StoreError::classify(e, &[]))?;
                    }
                    ConversationKey::Direct(key)
                }
                Target::Conversation(id) => ConversationKey::Id(id.0),
            };
            // Taking the sequence number first locks the conversation row (PostgreSQL)
            // or the database (SQLite) before the duplicate check, so retries cannot race.
            let row = match &key {
                ConversationKey::Direct(k) => {
                    sqlx::query(
                        "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = $2 \
                     WHERE direct_key = $1 RETURNING id, last_seq",
                    )
                    .bind(k)
                    .bind(msg.now_ms)
                    .fetch_optional(&mut *tx)
                    .await?
                }
                ConversationKey::Id(id) => {
                    sqlx::query(
                        "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = $2 \
                     WHERE id = $1 RETURNING id, last_seq",
                    )
                    .bind(*id)
                    .bind(msg.now_ms)
                    .fetch_optional(&mut *tx)
                    .await?
                }
            };
            let Some(row) = row else {
                return Err(StoreError::NotMember);
            };
            let conversation_id = ConversationId(row.try_get::<Uuid, _>("id")?);
            let seq: i64 = row.try_get("last_seq")?;
            let existing =
                sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = $1 AND client_id = $2"))
                    .bind(msg.sender.0)
                    .bind(&msg.client_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(row) = existing {
                let found = message_from_row!(row);
                tx.rollback().await?;
                return Ok(Stored::Existing(self.posted(found).await?));
            }
            let mut members: Vec<UserId> = Vec::new();
            let mut blocked_by: Option<UserId> = None;
            for row in sqlx::query("SELECT user_id, blocked FROM conversation_members WHERE conversation_id = $1")
                .bind(conversation_id.0)
                .fetch_all(&mut *tx)
                .await?
            {
                let user = UserId(row.try_get::<Uuid, _>("user_id")?);
                if row.try_get::<bool, _>("blocked")? {
                    blocked_by = Some(user);
                }
                members.push(user);
            }
            if !members.contains(&msg.sender) {
                return Err(StoreError::NotMember);
            }
            // Only 1:1 members can block; a block stops messages both ways.
            if let Some(blocker) = blocked_by.filter(|_| msg.kind == "text") {
                return Err(StoreError::Blocked { by_sender: blocker == msg.sender });
            }
            if let Some(reply_to) = msg.reply_to {
                let same = sqlx::query("SELECT 1 FROM messages WHERE id = $1 AND conversation_id = $2")
                    .bind(reply_to.0)
                    .bind(conversation_id.0)
                    .fetch_optional(&mut *tx)
                    .await?;
                if same.is_none() {
                    return Err(StoreError::InvalidReply);
                }
            }
            let inserted = sqlx::query(
                "INSERT INTO messages \
                 (id, conversation_id, seq, sender_id, client_id, kind, body, reply_to, attachment_id, attachment, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(message_id.0)
            .bind(conversation_id.0)
            .bind(seq)
            .bind(msg.sender.0)
            .bind(&msg.client_id)
            .bind(msg.kind)
            .bind(&msg.body)
            .bind(msg.reply_to.map(|r| r.0))
            .bind(msg.attachment.as_ref().map(|a| a.id))
            .bind(msg.attachment_json())
            .bind(msg.now_ms)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                // A retry of the same client id committed first in another conversation's
                // transaction; ours rolls back and the stored one is answered below.
                Err(e) if StoreError::is_unique_violation(&e) => {
                    drop(tx);
                    let found = self
                        .message_by_client_id(msg.sender, &msg.client_id)
                        .await?
                        .ok_or(StoreError::Conflict("client_id"))?;
                    return Ok(Stored::Existing(self.posted(found).await?));
                }
                Err(e) => return Err(StoreError::Database(e)),
            }
            let deliveries =
                append_events!(tx, &members, "message", Some(conversation_id.0), Some(message_id.0), "{}", msg.now_ms);
            tx.commit().await?;
            let message = msg.stored(message_id, conversation_id, seq);
            Ok(Stored::New(Posted { message, deliveries }))
        });
        result
    }

    /// A stored message with the event numbers it took when it was first stored.
    pub async fn posted(&self, message: Message) -> Result<Posted, StoreError> {
        let deliveries = on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT user_id, seq FROM user_events WHERE message_id = $1 AND kind = 'message'")
                .bind(message.id.0)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push((UserId(row.try_get::<Uuid, _>("user_id")?), row.try_get::<i64, _>("seq")?));
            }
            out
        });
        Ok(Posted { message, deliveries })
    }

    /// The message `sender` stored under its own `client_id`.
    #[tracing::instrument(skip_all)]
    pub async fn message_by_client_id(&self, sender: UserId, client_id: &str) -> Result<Option<Message>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = $1 AND client_id = $2");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql).bind(sender.0).bind(client_id).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(message_from_row!(row)),
                None => None,
            })
        })
    }

    /// A page of a conversation's messages in ascending `seq`, as `reader` sees
    /// them (its own deletions applied, reactions counted). With `after`, the page
    /// starts just after it; otherwise it ends just before `before` (or at the newest).
    #[tracing::instrument(skip_all)]
    pub async fn messages_in(
        &self,
        conversation: ConversationId,
        reader: UserId,
        range: MessageRange,
    ) -> Result<MessagePage, StoreError> {
        let forward = range.after.is_some();
        let order = if forward { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS}, h.user_id AS hidden_for FROM messages \
             LEFT JOIN message_hidden h ON h.message_id = messages.id AND h.user_id = $5 \
             WHERE messages.conversation_id = $1 AND messages.seq > $2 AND messages.seq < $3 \
             ORDER BY messages.seq {order} LIMIT $4"
        );
        let limit = i64::from(range.limit) + 1;
        let mut messages = on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(conversation.0)
                .bind(range.after.unwrap_or(0))
                .bind(range.before.unwrap_or(i64::MAX))
                .bind(limit)
                .bind(reader.0)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut m = message_from_row!(row);
                if row.try_get::<Option<Uuid>, _>("hidden_for")?.is_some() {
                    hide(&mut m);
                }
                out.push(m);
            }
            out
        });
        let has_more = messages.len() > range.limit as usize;
        messages.truncate(range.limit as usize);
        if !forward {
            messages.reverse();
        }
        self.count_reactions(&mut messages).await?;
        Ok(MessagePage { messages, has_more })
    }

    /// One message, as stored.
    #[tracing::instrument(skip_all)]
    pub async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql).bind(id.0).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(message_from_row!(row)),
                None => None,
            })
        })
    }

    /// How many messages are stored in all (operations and tests).
    #[tracing::instrument(skip_all)]
    pub async fn count_messages(&self) -> Result<i64, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM messages").fetch_one(pool).await?;
            Ok(row.try_get::<i64, _>("n")?)
        })
    }
}
