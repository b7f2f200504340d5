//! Messages: stored exactly once per (sender, client id), numbered without gaps
//! inside their conversation.

use parley_wire::payloads::Message;
use parley_wire::{ConversationId, MessageId, UserId};
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{time_from_ms, Store, StoreError};

/// A 1:1 message to store; the conversation is found or created.
#[derive(Debug, Clone)]
pub struct NewDirectMessage {
    pub sender: UserId,
    pub recipient: UserId,
    pub client_id: String,
    pub body: String,
    pub now_ms: i64,
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

const MESSAGE_COLUMNS: &str = "id, conversation_id, seq, sender_id, client_id, body, created_at";

macro_rules! message_from_row {
    ($row:expr) => {
        Message {
            id: MessageId($row.try_get::<Uuid, _>("id")?),
            conversation_id: ConversationId($row.try_get::<Uuid, _>("conversation_id")?),
            seq: $row.try_get("seq")?,
            sender_id: UserId($row.try_get::<Uuid, _>("sender_id")?),
            client_id: $row.try_get("client_id")?,
            text: $row.try_get("body")?,
            sent_at: time_from_ms($row.try_get("created_at")?),
        }
    };
}

/// The unique key of the 1:1 conversation between two users, whatever the order.
fn direct_key(a: UserId, b: UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

impl Store {
    /// Stores a 1:1 message in one transaction: finds or creates the conversation,
    /// takes the next sequence number under the conversation's row lock, and inserts
    /// the message. A message with the same (sender, client id) already stored is
    /// returned as `Existing` and nothing changes.
    #[tracing::instrument(skip_all)]
    pub async fn store_direct_message(
        &self,
        msg: &NewDirectMessage,
    ) -> Result<Stored<Message>, StoreError> {
        let key = direct_key(msg.sender, msg.recipient);
        let insert_conversation = "INSERT INTO conversations (id, kind, direct_key, last_seq, created_at) \
                                   VALUES ($1, 'direct', $2, 0, $3) ON CONFLICT (direct_key) DO NOTHING";
        let insert_member =
            "INSERT INTO conversation_members (conversation_id, user_id, joined_at) \
                             VALUES ($1, $2, $3), ($1, $4, $3) ON CONFLICT DO NOTHING";
        // Taking the sequence number first locks the conversation row (PostgreSQL) or
        // the database (SQLite) before the duplicate check, so retries cannot race.
        let next_seq = "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = $2 \
                        WHERE direct_key = $1 RETURNING id, last_seq";
        let find_existing = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = $1 AND client_id = $2"
        );
        let insert_message = "INSERT INTO messages (id, conversation_id, seq, sender_id, client_id, body, created_at) \
                              VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let message_id = MessageId::new();
        let result = on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let created = sqlx::query(insert_conversation)
                .bind(Uuid::now_v7())
                .bind(&key)
                .bind(msg.now_ms)
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query(next_seq)
                .bind(&key)
                .bind(msg.now_ms)
                .fetch_one(&mut *tx)
                .await?;
            let conversation_id = ConversationId(row.try_get::<Uuid, _>("id")?);
            let seq: i64 = row.try_get("last_seq")?;
            if created.rows_affected() == 1 {
                sqlx::query(insert_member)
                    .bind(conversation_id.0)
                    .bind(msg.sender.0)
                    .bind(msg.now_ms)
                    .bind(msg.recipient.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::classify(e, &[]))?;
            }
            let existing = sqlx::query(&find_existing)
                .bind(msg.sender.0)
                .bind(&msg.client_id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = existing {
                let found = message_from_row!(row);
                tx.rollback().await?;
                return Ok(Stored::Existing(found));
            }
            let inserted = sqlx::query(insert_message)
                .bind(message_id.0)
                .bind(conversation_id.0)
                .bind(seq)
                .bind(msg.sender.0)
                .bind(&msg.client_id)
                .bind(&msg.body)
                .bind(msg.now_ms)
                .execute(&mut *tx)
                .await;
            match inserted {
                Ok(_) => {
                    tx.commit().await?;
                    Ok(Some(Message {
                        id: message_id,
                        conversation_id,
                        seq,
                        sender_id: msg.sender,
                        client_id: msg.client_id.clone(),
                        text: msg.body.clone(),
                        sent_at: time_from_ms(msg.now_ms),
                    }))
                }
                // A retry of the same client id committed first in another conversation's
                // transaction; ours rolls back and the stored one is answered below.
                Err(e) if StoreError::is_unique_violation(&e) => Ok(None),
                Err(e) => Err(StoreError::Database(e)),
            }
        });
        match result? {
            Some(message) => Ok(Stored::New(message)),
            None => self
                .message_by_client_id(msg.sender, &msg.client_id)
                .await?
                .map(Stored::Existing)
                .ok_or(StoreError::Conflict("client_id")),
        }
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
