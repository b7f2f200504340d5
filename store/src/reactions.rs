//! Changes to stored messages: edits (with their history), deletion for everyone
//! (a tombstone keeps the seq), deletion for oneself, and emoji reactions. Each
//! change appends an event to the logs of those who must learn of it, in the same
//! transaction.

use std::collections::{BTreeMap, HashMap};

use parley_wire::payloads::Message;
use parley_wire::{MessageId, UserId};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::backend::on_pool;
use crate::events::{append_events, members_in_tx};
use crate::messages::{message_columns, message_from_row};
use crate::{time_from_ms, Posted, Store, StoreError};

/// An earlier text of an edited message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRecord {
    pub text: String,
    pub replaced_at: chrono::DateTime<chrono::Utc>,
}

/// Everyone's event numbers for one change, and the data the events carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub deliveries: Vec<(UserId, i64)>,
    /// Emoji → count after a reaction change.
    pub counts: BTreeMap<String, i64>,
}

const EDITABLE: &str = "sender_id = $2 AND deleted_at IS NULL AND kind <> 'system'";

impl Store {
    /// Replaces the text of `id` (its sender's, not deleted) and keeps the old text;
    /// every member gets a `message_edited` event. Also returns who deleted the
    /// message for themselves (they must not see the new text). `None` if nothing matched.
    #[tracing::instrument(skip_all)]
    pub async fn edit_message(
        &self,
        id: MessageId,
        sender: UserId,
        text: &str,
        now_ms: i64,
    ) -> Result<Option<(Posted, Vec<UserId>)>, StoreError> {
        let keep = format!(
            "INSERT INTO message_edits (message_id, body, replaced_at) \
             SELECT id, body, $3 FROM messages WHERE id = $1 AND {EDITABLE}"
        );
        let update = format!(
            "UPDATE messages SET body = $3, edited_at = $4 WHERE id = $1 AND {EDITABLE} RETURNING {}",
            message_columns!("messages", "")
        );
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(&keep).bind(id.0).bind(sender.0).bind(now_ms).execute(&mut *tx).await?;
            let row =
                sqlx::query(&update).bind(id.0).bind(sender.0).bind(text).bind(now_ms).fetch_optional(&mut *tx).await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let message = message_from_row!(row);
            let members = members_in_tx!(tx, message.conversation_id.0);
            let conversation = Some(message.conversation_id.0);
            let deliveries = append_events!(tx, &members, "message_edited", conversation, Some(id.0), "{}", now_ms);
            let mut hidden_for = Vec::new();
            for row in sqlx::query("SELECT user_id FROM message_hidden WHERE message_id = $1")
                .bind(id.0)
                .fetch_all(&mut *tx)
                .await?
            {
                hidden_for.push(UserId(row.try_get::<Uuid, _>("user_id")?));
            }
            tx.commit().await?;
            Ok(Some((Posted { message, deliveries }, hidden_for)))
        })
    }

    /// Empties the text of `id` (its sender's), drops its reactions and edit history,
    /// and tells every member with a `message_deleted` event carrying `body`.
    #[tracing::instrument(skip_all)]
    pub async fn delete_message(
        &self,
        id: MessageId,
        sender: UserId,
        body: &str,
        now_ms: i64,
    ) -> Result<Option<Posted>, StoreError> {
        let update = format!(
            "UPDATE messages SET body = '', attachment = NULL, deleted_at = $3 WHERE id = $1 AND {EDITABLE} RETURNING {}",
            message_columns!("messages", "")
        );
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let Some(row) =
                sqlx::query(&update).bind(id.0).bind(sender.0).bind(now_ms).fetch_optional(&mut *tx).await?
            else {
                return Ok(None);
            };
            let message = message_from_row!(row);
            sqlx::query("DELETE FROM message_reactions WHERE message_id = $1").bind(id.0).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM message_edits WHERE message_id = $1").bind(id.0).execute(&mut *tx).await?;
            let members = members_in_tx!(tx, message.conversation_id.0);
            let deliveries =
                append_events!(tx, &members, "message_deleted", Some(message.conversation_id.0), None, body, now_ms);
            tx.commit().await?;
            Ok(Some(Posted { message, deliveries }))
        })
    }

    /// Hides `id` from `user` alone; its own devices get a `message_hidden` event
    /// carrying `body`. Hiding twice changes nothing (empty deliveries).
    #[tracing::instrument(skip_all)]
    pub async fn hide_message(
        &self,
        message: &Message,
        user: UserId,
        body: &str,
        now_ms: i64,
    ) -> Result<Vec<(UserId, i64)>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let done =
                sqlx::query("INSERT INTO message_hidden (message_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(message.id.0)
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await?;
            if done.rows_affected() == 0 {
                return Ok(Vec::new());
            }
            let taken =
                append_events!(tx, &[user], "message_hidden", Some(message.conversation_id.0), None, body, now_ms);
            tx.commit().await?;
            Ok(taken)
        })
    }

    /// Adds or removes `user`'s `emoji` on `message`; when that changed anything,
    /// every member gets a `reaction` event whose body `make_body` builds from the
    /// new counts. `None` when nothing changed.
    #[tracing::instrument(skip_all)]
    pub async fn react(
        &self,
        message: &Message,
        user: UserId,
        emoji: &str,
        add: bool,
        now_ms: i64,
        make_body: impl Fn(&BTreeMap<String, i64>) -> String,
    ) -> Result<Option<Change>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let done = if add {
                sqlx::query("INSERT INTO message_reactions (message_id, user_id, emoji, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                    .bind(message.id.0)
                    .bind(user.0)
                    .bind(emoji)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
            } else {
                sqlx::query("DELETE FROM message_reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3")
                    .bind(message.id.0)
                    .bind(user.0)
                    .bind(emoji)
                    .execute(&mut *tx)
                    .await?
            };
            if done.rows_affected() == 0 {
                return Ok(None);
            }
            let mut counts = BTreeMap::new();
            for row in
                sqlx::query("SELECT emoji, COUNT(*) AS n FROM message_reactions WHERE message_id = $1 GROUP BY emoji")
                    .bind(message.id.0)
                    .fetch_all(&mut *tx)
                    .await?
            {
                counts.insert(row.try_get::<String, _>("emoji")?, row.try_get::<i64, _>("n")?);
            }
            let members = members_in_tx!(tx, message.conversation_id.0);
            let body = make_body(&counts);
            let deliveries =
                append_events!(tx, &members, "reaction", Some(message.conversation_id.0), None, &body, now_ms);
            tx.commit().await?;
            Ok(Some(Change { deliveries, counts }))
        })
    }

    /// Who reacted to `message` with what, oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn reactions_of(&self, message: MessageId) -> Result<Vec<(UserId, String)>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT user_id, emoji FROM message_reactions WHERE message_id = $1 ORDER BY created_at, emoji",
            )
            .bind(message.0)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push((UserId(row.try_get::<Uuid, _>("user_id")?), row.try_get("emoji")?));
            }
            Ok(out)
        })
    }

    /// The earlier texts of an edited message, oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn edits_of(&self, message: MessageId) -> Result<Vec<EditRecord>, StoreError> {
        on_pool!(self, |pool| {
            let rows =
                sqlx::query("SELECT body, replaced_at FROM message_edits WHERE message_id = $1 ORDER BY replaced_at")
                    .bind(message.0)
                    .fetch_all(pool)
                    .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(EditRecord {
                    text: row.try_get("body")?,
                    replaced_at: time_from_ms(row.try_get("replaced_at")?),
                });
            }
            Ok(out)
        })
    }

    /// Fills `reactions` of each message with its counts per emoji.
    pub(crate) async fn count_reactions(&self, messages: &mut [Message]) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = messages.iter().filter(|m| !m.deleted).map(|m| m.id.0).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let counts: HashMap<Uuid, BTreeMap<String, i64>> = on_pool!(self, |pool| {
            let mut query = QueryBuilder::new(
                "SELECT message_id, emoji, COUNT(*) AS n FROM message_reactions WHERE message_id IN (",
            );
            let mut list = query.separated(", ");
            for id in &ids {
                list.push_bind(*id);
            }
            query.push(") GROUP BY message_id, emoji");
            let mut counts: HashMap<Uuid, BTreeMap<String, i64>> = HashMap::new();
            for row in query.build().fetch_all(pool).await? {
                counts.entry(row.try_get("message_id")?).or_default().insert(row.try_get("emoji")?, row.try_get("n")?);
            }
            counts
        });
        for m in messages.iter_mut() {
            if let Some(c) = counts.get(&m.id.0) {
                m.reactions = c.clone();
            }
        }
        Ok(())
    }
}
