//! Full-text search over the messages a user can read: SQLite FTS5 and
//! PostgreSQL `tsvector`, the one place where the two dialects differ outright.
//! Also the upkeep of PostgreSQL's index, which housekeeping calls every second.

use parley_wire::payloads::Message;
use parley_wire::{ConversationId, MessageId, UserId};
use sqlx::Row;
use uuid::Uuid;

use crate::backend::{on_pool, Backend};
use crate::messages::{message_columns, message_from_row};
use crate::{Store, StoreError};

/// A message that matched, with its text marked up: matches between `<mark>` and `</mark>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    pub message: Message,
    pub highlight: String,
}

/// Where a search page ends: strictly older than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchCursor {
    pub sent_at_ms: i64,
    pub id: MessageId,
}

/// The words of a query as FTS5 phrases: operators typed by people stay plain text.
fn fts5_query(text: &str) -> String {
    text.split_whitespace().map(|w| format!("\"{}\"", w.replace('"', "\"\""))).collect::<Vec<_>>().join(" ")
}

const READABLE: &str = "JOIN conversation_members cm ON cm.conversation_id = m.conversation_id AND cm.user_id = $1 \
     LEFT JOIN message_hidden h ON h.message_id = m.id AND h.user_id = $1 \
     WHERE h.user_id IS NULL AND m.deleted_at IS NULL AND m.kind <> 'system' \
       AND (m.created_at < $3 OR (m.created_at = $3 AND m.id < $4)) \
       AND ($5 = 0 OR m.conversation_id = $6)";

impl Store {
    /// Newest first, the live text messages `user` can read that contain every word
    /// of `text`, optionally in one conversation.
    #[tracing::instrument(skip_all)]
    pub async fn search_messages(
        &self,
        user: UserId,
        text: &str,
        conversation: Option<ConversationId>,
        cursor: Option<SearchCursor>,
        limit: u32,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let (before_ms, before_id) = match cursor {
            Some(c) => (c.sent_at_ms, c.id.0),
            None => (i64::MAX, Uuid::max()),
        };
        let only = i64::from(conversation.is_some());
        let in_conversation = conversation.map_or(Uuid::nil(), |c| c.0);
        let (sql, query) = match &self.backend {
            Backend::Sqlite(_) => (
                format!(
                    "SELECT {}, highlight(message_search, 0, '<mark>', '</mark>') AS highlight \
                     FROM message_search JOIN messages m ON m.rowid = message_search.rowid {READABLE} \
                       AND message_search MATCH $2 \
                     ORDER BY m.created_at DESC, m.id DESC LIMIT $7",
                    message_columns!("m", "")
                ),
                fts5_query(text),
            ),
            Backend::Postgres(_) => (
                format!(
                    "SELECT {}, ts_headline('simple', m.body, plainto_tsquery('simple', $2), \
                                            'StartSel=<mark>, StopSel=</mark>, HighlightAll=true') AS highlight \
                     FROM messages m {READABLE} AND m.search @@ plainto_tsquery('simple', $2) \
                     ORDER BY m.created_at DESC, m.id DESC LIMIT $7",
                    message_columns!("m", "")
                ),
                text.to_string(),
            ),
        };
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(user.0)
                .bind(&query)
                .bind(before_ms)
                .bind(before_id)
                .bind(only)
                .bind(in_conversation)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            let mut hits = Vec::with_capacity(rows.len());
            for row in rows {
                hits.push(SearchHit { message: message_from_row!(row), highlight: row.try_get("highlight")? });
            }
            Ok(hits)
        })
    }

    /// PostgreSQL: merges the entries waiting in the search index's pending
    /// list into the index, outside any message's transaction; returns how many
    /// pages of them it emptied. SQLite: nothing to do (FTS5 merges as it
    /// writes), 0.
    ///
    /// New messages are not indexed one by one but listed as pending (GIN's
    /// `fastupdate`), and the insert that finds the list full (4 MB: at 10,000
    /// messages a second, twelve seconds of one-word ones, under two of
    /// twelve-word ones) merges all of it inside its own transaction. On the
    /// message path that was one batch taking 200-300 ms while it held its
    /// conversations and people, and every batch behind it waiting: a stall of
    /// every conversation each time the list filled. Merged often from here,
    /// the list never fills. The merge takes no lock that inserts wait for.
    /// Indexing each message as it is written (`fastupdate = off`) would avoid
    /// the stall too, but an insert of a twelve-word message then costs 3.4
    /// times as much (docs/benchmarks.md, session 15).
    #[tracing::instrument(skip_all)]
    pub async fn merge_pending_search_entries(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(0),
            Backend::Postgres(pool) => {
                let pages: i64 = sqlx::query_scalar("SELECT gin_clean_pending_list('messages_search'::regclass)")
                    .fetch_one(pool)
                    .await?;
                Ok(u64::try_from(pages).unwrap_or(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_words_become_literal_phrases() {
        assert_eq!(fts5_query("hello  world"), "\"hello\" \"world\"");
        assert_eq!(fts5_query("a OR b*"), "\"a\" \"OR\" \"b*\"");
        assert_eq!(fts5_query("say \"hi\""), "\"say\" \"\"\"hi\"\"\"");
    }
}
