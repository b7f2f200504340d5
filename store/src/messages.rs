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
    pub now_ms: i64,
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

const MESSAGE_COLUMNS: &str =
    "id, conversation_id, seq, sender_id, client_id, kind, body, created_at";

/// How the transaction finds the conversation it writes to.
enum ConversationKey {
    Direct(String),
    Id(Uuid),
}

macro_rules! message_from_row {
    ($row:expr) => {
        Message {
            id: MessageId($row.try_get::<Uuid, _>("id")?),
            conversation_id: ConversationId($row.try_get::<Uuid, _>("conversation_id")?),
            seq: $row.try_get("seq")?,
            sender_id: UserId($row.try_get::<Uuid, _>("sender_id")?),
            client_id: $row.try_get("client_id")?,
            kind: $row.try_get("kind")?,
            text: $row.try_get("body")?,
            sent_at: time_from_ms($row.try_get("created_at")?),
        }
    };
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
            let row =
                match &key {
                    ConversationKey::Direct(k) => sqlx::query(
                        "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = $2 \
                     WHERE direct_key = $1 RETURNING id, last_seq",
                    )
                    .bind(k)
                    .bind(msg.now_ms)
                    .fetch_optional(&mut *tx)
                    .await?,
                    ConversationKey::Id(id) => sqlx::query(
                        "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = $2 \
                     WHERE id = $1 RETURNING id, last_seq",
                    )
                    .bind(*id)
                    .bind(msg.now_ms)
                    .fetch_optional(&mut *tx)
                    .await?,
                };
            let Some(row) = row else {
                return Err(StoreError::NotMember);
            };
            let conversation_id = ConversationId(row.try_get::<Uuid, _>("id")?);
            let seq: i64 = row.try_get("last_seq")?;
            let existing = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = $1 AND client_id = $2"
            ))
            .bind(msg.sender.0)
            .bind(&msg.client_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                let found = message_from_row!(row);
                tx.rollback().await?;
                return Ok(Stored::Existing(self.posted(found).await?));
            }
            let members: Vec<UserId> =
                sqlx::query("SELECT user_id FROM conversation_members WHERE conversation_id = $1")
                    .bind(conversation_id.0)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<Uuid, _>("user_id").map(UserId))
                    .collect::<Result<_, _>>()?;
            if !members.contains(&msg.sender) {
                return Err(StoreError::NotMember);
            }
            let inserted = sqlx::query(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, client_id, kind, body, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(message_id.0)
            .bind(conversation_id.0)
            .bind(seq)
            .bind(msg.sender.0)
            .bind(&msg.client_id)
            .bind(msg.kind)
            .bind(&msg.body)
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
            let deliveries = append_events!(
                tx,
                &members,
                "message",
                Some(conversation_id.0),
                Some(message_id.0),
                "{}",
                msg.now_ms
            );
            tx.commit().await?;
            let message = Message {
                id: message_id,
                conversation_id,
                seq,
                sender_id: msg.sender,
                client_id: msg.client_id.clone(),
                kind: msg.kind.to_string(),
                text: msg.body.clone(),
                sent_at: time_from_ms(msg.now_ms),
            };
            Ok(Stored::New(Posted {
                message,
                deliveries,
            }))
        });
        result
    }

    /// A stored message with the event numbers it took when it was first stored.
    pub async fn posted(&self, message: Message) -> Result<Posted, StoreError> {
        let deliveries = on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT user_id, seq FROM user_events WHERE message_id = $1 AND kind = 'message'",
            )
            .bind(message.id.0)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push((
                    UserId(row.try_get::<Uuid, _>("user_id")?),
                    row.try_get::<i64, _>("seq")?,
                ));
            }
            out
        });
        Ok(Posted {
            message,
            deliveries,
        })
    }

    /// The message `sender` stored under its own `client_id`.
    #[tracing::instrument(skip_all)]
    pub async fn message_by_client_id(
        &self,
        sender: UserId,
        client_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = $1 AND client_id = $2"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(sender.0)
                .bind(client_id)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(row) => Some(message_from_row!(row)),
                None => None,
            })
        })
    }

    /// A page of a conversation's messages in ascending `seq`. With `after`, the page
    /// starts just after it; otherwise it ends just before `before` (or at the newest).
    #[tracing::instrument(skip_all)]
    pub async fn messages_in(
        &self,
        conversation: ConversationId,
        range: MessageRange,
    ) -> Result<MessagePage, StoreError> {
        let forward = range.after.is_some();
        let order = if forward { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq {order} LIMIT $4"
        );
        let limit = i64::from(range.limit) + 1;
        let mut messages = on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(conversation.0)
                .bind(range.after.unwrap_or(0))
                .bind(range.before.unwrap_or(i64::MAX))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(message_from_row!(row));
            }
            out
        });
        let has_more = messages.len() > range.limit as usize;
        messages.truncate(range.limit as usize);
        if !forward {
            messages.reverse();
        }
        Ok(MessagePage { messages, has_more })
    }

    /// How many messages are stored in all (operations and tests).
    #[tracing::instrument(skip_all)]
    pub async fn count_messages(&self) -> Result<i64, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM messages")
                .fetch_one(pool)
                .await?;
            Ok(row.try_get::<i64, _>("n")?)
        })
    }
}
