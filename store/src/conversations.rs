//! Conversations and membership.

use parley_wire::payloads::Message;
use parley_wire::{ConversationId, MessageId, UserId};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{time_from_ms, Store, StoreError};

/// A conversation as listed for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub kind: String,
    pub members: Vec<UserId>,
    /// Sequence number of the newest message (0 when empty).
    pub last_seq: i64,
    /// Newest message time, or creation time for an empty conversation, in ms.
    pub last_activity_ms: i64,
    pub last_message: Option<Message>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Position in the "newest activity first" listing: strictly older than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationCursor {
    pub last_activity_ms: i64,
    pub id: ConversationId,
}

impl Store {
    /// The conversations `user` belongs to, newest activity first, after `cursor`.
    #[tracing::instrument(skip_all)]
    pub async fn conversations_for(
        &self,
        user: UserId,
        cursor: Option<ConversationCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let sql = "SELECT c.id, c.kind, c.last_seq, c.created_at, \
                          COALESCE(c.last_message_at, c.created_at) AS activity, \
                          m.id AS m_id, m.sender_id AS m_sender, m.client_id AS m_client, \
                          m.body AS m_body, m.created_at AS m_at \
                   FROM conversation_members cm \
                   JOIN conversations c ON c.id = cm.conversation_id \
                   LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.last_seq \
                   WHERE cm.user_id = $1 \
                     AND (COALESCE(c.last_message_at, c.created_at) < $2 \
                          OR (COALESCE(c.last_message_at, c.created_at) = $2 AND c.id < $3)) \
                   ORDER BY activity DESC, c.id DESC LIMIT $4";
        let (before_ms, before_id) = match cursor {
            Some(c) => (c.last_activity_ms, c.id.0),
            None => (i64::MAX, Uuid::max()),
        };
        let mut list = on_pool!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(user.0)
                .bind(before_ms)
                .bind(before_id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let id = ConversationId(row.try_get::<Uuid, _>("id")?);
                let last_seq: i64 = row.try_get("last_seq")?;
                let last_message = match row.try_get::<Option<Uuid>, _>("m_id")? {
                    Some(m_id) => Some(Message {
                        id: MessageId(m_id),
                        conversation_id: id,
                        seq: last_seq,
                        sender_id: UserId(row.try_get::<Uuid, _>("m_sender")?),
                        client_id: row.try_get("m_client")?,
                        text: row.try_get("m_body")?,
                        sent_at: time_from_ms(row.try_get("m_at")?),
                    }),
                    None => None,
                };
                out.push(ConversationSummary {
                    id,
                    kind: row.try_get("kind")?,
                    members: Vec::new(),
                    last_seq,
                    last_activity_ms: row.try_get("activity")?,
                    last_message,
                    created_at: time_from_ms(row.try_get("created_at")?),
                });
            }
            out
        });
        if list.is_empty() {
            return Ok(list);
        }
        let members = on_pool!(self, |pool| {
            let mut query = QueryBuilder::new(
                "SELECT conversation_id, user_id FROM conversation_members WHERE conversation_id IN (",
            );
            let mut ids = query.separated(", ");
            for c in &list {
                ids.push_bind(c.id.0);
            }
            query.push(") ORDER BY joined_at, user_id");
            let rows = query.build().fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push((
                    ConversationId(row.try_get::<Uuid, _>("conversation_id")?),
                    UserId(row.try_get::<Uuid, _>("user_id")?),
                ));
            }
            out
        });
        for (conversation, member) in members {
            if let Some(c) = list.iter_mut().find(|c| c.id == conversation) {
                c.members.push(member);
            }
        }
        Ok(list)
    }

    /// Whether `user` is a member of `conversation`.
    #[tracing::instrument(skip_all)]
    pub async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        let sql = "SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2";
        on_pool!(self, |pool| {
            let row = sqlx::query(sql)
                .bind(conversation.0)
                .bind(user.0)
                .fetch_optional(pool)
                .await?;
            Ok(row.is_some())
        })
    }

    /// The members of `conversation`, oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn members_of(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<UserId>, StoreError> {
        let sql = "SELECT user_id FROM conversation_members WHERE conversation_id = $1 ORDER BY joined_at, user_id";
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(conversation.0)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(UserId(row.try_get::<Uuid, _>("user_id")?));
            }
            Ok(out)
        })
    }
}
