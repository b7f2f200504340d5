//! Each user's event log: everything the user receives, numbered per user from 1
//! without gaps. Writers append inside the transaction of the change itself, so
//! the log and the data never disagree. Message events point at the message row,
//! so a replay shows the message as it is now.

use parley_wire::payloads::Message;
use parley_wire::{ConversationId, UserId};
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::messages::{message_columns, optional_message_from_row};
use crate::{Store, StoreError};

/// One event of a user's log as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub seq: i64,
    pub kind: String,
    pub conversation_id: Option<ConversationId>,
    /// JSON body for events that carry their own data (receipts, membership…).
    pub body: String,
    /// For message events: the message as stored now (`None` if it was purged).
    pub message: Option<Message>,
}

/// A page of a user's log after some sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<EventRecord>,
    /// The user's newest event.
    pub last_seq: i64,
    /// The oldest event still kept (0 when the log is empty).
    pub oldest_seq: i64,
}

/// On PostgreSQL, locks the rows of table `$table` whose ids are `$ids` (an
/// iterator of `Uuid`) in id order inside transaction `$tx`. Every writer that
/// locks several rows of a table takes them this way (conversations before users),
/// so two transactions never each hold a row the other waits for. It is a
/// statement of its own: an UPDATE that locks in a subquery still follows older
/// row versions it saw before the locks and can deadlock on them. SQLite has one
/// writer at a time and needs nothing.
macro_rules! lock_rows {
    ($tx:expr, $table:literal, $ids:expr) => {{
        if $crate::backend::is_postgres(&$tx) {
            sqlx::query(concat!(
                "SELECT id FROM ",
                $table,
                " WHERE id = ANY(string_to_array($1, ',')::uuid[]) ORDER BY id FOR NO KEY UPDATE"
            ))
            .bind($crate::backend::id_list($ids))
            .execute(&mut *$tx)
            .await?;
        }
    }};
}
pub(crate) use lock_rows;

/// Appends one event for each user in `$users` (a `&[UserId]`) inside transaction
/// `$tx`, taking the next number of each user's log; evaluates to the
/// `Vec<(UserId, i64)>` of numbers taken.
macro_rules! append_events {
    ($tx:expr, $users:expr, $kind:expr, $conversation:expr, $message:expr, $body:expr, $now:expr) => {{
        let users: &[parley_wire::UserId] = $users;
        let mut taken: Vec<(parley_wire::UserId, i64)> = Vec::with_capacity(users.len());
        if !users.is_empty() {
            $crate::events::lock_rows!($tx, "users", users.iter().map(|u| u.0));
            let mut bump =
                sqlx::QueryBuilder::new("UPDATE users SET last_event_seq = last_event_seq + 1 WHERE id IN (");
            let mut ids = bump.separated(", ");
            for u in users {
                ids.push_bind(u.0);
            }
            bump.push(") RETURNING id, last_event_seq");
            for row in bump.build().fetch_all(&mut *$tx).await? {
                taken.push((
                    parley_wire::UserId(sqlx::Row::try_get::<uuid::Uuid, _>(&row, "id")?),
                    sqlx::Row::try_get::<i64, _>(&row, "last_event_seq")?,
                ));
            }
            let conversation: Option<uuid::Uuid> = $conversation;
            let message: Option<uuid::Uuid> = $message;
            let body: &str = $body;
            let now: i64 = $now;
            let kind: &str = $kind;
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO user_events (user_id, seq, kind, conversation_id, message_id, body, created_at) ",
            );
            insert.push_values(&taken, |mut row, (user, seq)| {
                row.push_bind(user.0)
                    .push_bind(*seq)
                    .push_bind(kind)
                    .push_bind(conversation)
                    .push_bind(message)
                    .push_bind(body)
                    .push_bind(now);
            });
            insert.build().execute(&mut *$tx).await?;
        }
        taken
    }};
}
pub(crate) use append_events;

/// The member ids of conversation `$conversation` (a `Uuid`), read inside transaction `$tx`.
macro_rules! members_in_tx {
    ($tx:expr, $conversation:expr) => {{
        let mut members: Vec<parley_wire::UserId> = Vec::new();
        for row in sqlx::query("SELECT user_id FROM conversation_members WHERE conversation_id = $1")
            .bind($conversation)
            .fetch_all(&mut *$tx)
            .await?
        {
            members.push(parley_wire::UserId(sqlx::Row::try_get::<uuid::Uuid, _>(&row, "user_id")?));
        }
        members
    }};
}
pub(crate) use members_in_tx;

impl Store {
    /// Appends one event with a JSON `body` to each user's log; returns the numbers taken.
    #[tracing::instrument(skip_all)]
    pub async fn append_events(
        &self,
        users: &[UserId],
        kind: &str,
        conversation: Option<ConversationId>,
        body: &str,
        now_ms: i64,
    ) -> Result<Vec<(UserId, i64)>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let taken = append_events!(tx, users, kind, conversation.map(|c| c.0), None, body, now_ms);
            tx.commit().await?;
            Ok(taken)
        })
    }

    /// Up to `limit` events of `user` with numbers above `after`, oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn events_after(&self, user: UserId, after: i64, limit: u32) -> Result<EventPage, StoreError> {
        let sql = concat!(
            "SELECT e.seq, e.kind, e.conversation_id, e.body, h.user_id AS hidden_for, ",
            message_columns!("m", "m_"),
            " FROM user_events e LEFT JOIN messages m ON m.id = e.message_id \
             LEFT JOIN message_hidden h ON h.message_id = e.message_id AND h.user_id = e.user_id \
             WHERE e.user_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3"
        );
        let bounds = "SELECT u.last_event_seq AS last_seq, \
                             COALESCE((SELECT MIN(seq) FROM user_events WHERE user_id = $1), 0) AS oldest_seq \
                      FROM users u WHERE u.id = $1";
        let mut page = on_pool!(self, |pool| {
            let rows = sqlx::query(sql).bind(user.0).bind(after).bind(i64::from(limit)).fetch_all(pool).await?;
            let mut events = Vec::with_capacity(rows.len());
            for row in rows {
                let message = optional_message_from_row!(row, "m_");
                events.push(EventRecord {
                    seq: row.try_get("seq")?,
                    kind: row.try_get("kind")?,
                    conversation_id: row.try_get::<Option<Uuid>, _>("conversation_id")?.map(ConversationId),
                    body: row.try_get("body")?,
                    message,
                });
            }
            let bounds = sqlx::query(bounds).bind(user.0).fetch_optional(pool).await?;
            let (last_seq, oldest_seq) = match bounds {
                Some(b) => (b.try_get("last_seq")?, b.try_get("oldest_seq")?),
                None => (0, 0),
            };
            EventPage { events, last_seq, oldest_seq }
        });
        let mut messages: Vec<Message> = page.events.iter().filter_map(|e| e.message.clone()).collect();
        self.count_reactions(&mut messages).await?;
        for (event, counted) in page.events.iter_mut().filter(|e| e.message.is_some()).zip(messages) {
            event.message = Some(counted);
        }
        Ok(page)
    }

    /// Forgets events created before `cutoff_ms`; returns how many.
    #[tracing::instrument(skip_all)]
    pub async fn delete_events_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            let done =
                sqlx::query("DELETE FROM user_events WHERE created_at < $1").bind(cutoff_ms).execute(pool).await?;
            Ok(done.rows_affected())
        })
    }
}
