//! Membership: roles, joining and leaving, and each member's receipt watermarks.

use parley_wire::{ConversationId, UserId};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{time_from_ms, Store, StoreError};

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub user_id: UserId,
    /// `owner`, `admin` or `member`.
    pub role: String,
    pub joined_at: chrono::DateTime<chrono::Utc>,
    /// Every message up to this sequence number reached one of the member's devices.
    pub last_delivered_seq: i64,
    /// Every message up to this sequence number was read by the member.
    pub last_read_seq: i64,
}

const MEMBER_COLUMNS: &str = "conversation_id, user_id, role, joined_at, last_delivered_seq, last_read_seq";

macro_rules! member_from_row {
    ($row:expr) => {
        MemberRecord {
            user_id: UserId($row.try_get::<Uuid, _>("user_id")?),
            role: $row.try_get("role")?,
            joined_at: time_from_ms($row.try_get("joined_at")?),
            last_delivered_seq: $row.try_get("last_delivered_seq")?,
            last_read_seq: $row.try_get("last_read_seq")?,
        }
    };
}

impl Store {
    /// Whether `user` is a member of `conversation`.
    #[tracing::instrument(skip_all)]
    pub async fn is_member(&self, conversation: ConversationId, user: UserId) -> Result<bool, StoreError> {
        Ok(self.member(conversation, user).await?.is_some())
    }

    /// `user`'s membership of `conversation`, if any.
    #[tracing::instrument(skip_all)]
    pub async fn member(&self, conversation: ConversationId, user: UserId) -> Result<Option<MemberRecord>, StoreError> {
        let sql =
            format!("SELECT {MEMBER_COLUMNS} FROM conversation_members WHERE conversation_id = $1 AND user_id = $2");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql).bind(conversation.0).bind(user.0).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(member_from_row!(row)),
                None => None,
            })
        })
    }

    /// The members of `conversation`, oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn members(&self, conversation: ConversationId) -> Result<Vec<MemberRecord>, StoreError> {
        Ok(self.members_of_many(&[conversation]).await?.into_iter().map(|(_, m)| m).collect())
    }

    /// The user ids of the members of `conversation`, oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn members_of(&self, conversation: ConversationId) -> Result<Vec<UserId>, StoreError> {
        Ok(self.members(conversation).await?.into_iter().map(|m| m.user_id).collect())
    }

    /// The members of several conversations at once, oldest first within each.
    pub(crate) async fn members_of_many(
        &self,
        conversations: &[ConversationId],
    ) -> Result<Vec<(ConversationId, MemberRecord)>, StoreError> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, |pool| {
            let mut query = QueryBuilder::new(format!(
                "SELECT {MEMBER_COLUMNS} FROM conversation_members WHERE conversation_id IN ("
            ));
            let mut ids = query.separated(", ");
            for c in conversations {
                ids.push_bind(c.0);
            }
            query.push(") ORDER BY joined_at, user_id");
            let rows = query.build().fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push((ConversationId(row.try_get::<Uuid, _>("conversation_id")?), member_from_row!(row)));
            }
            Ok(out)
        })
    }

    /// Adds `user` with `role`; false if already a member. An unknown user is `MissingReference`.
    #[tracing::instrument(skip_all)]
    pub async fn add_member(
        &self,
        conversation: ConversationId,
        user: UserId,
        role: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query(
                "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(conversation.0)
            .bind(user.0)
            .bind(role)
            .bind(now_ms)
            .execute(pool)
            .await
            .map_err(|e| StoreError::classify(e, &[]))?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Removes `user`; false if not a member.
    #[tracing::instrument(skip_all)]
    pub async fn remove_member(&self, conversation: ConversationId, user: UserId) -> Result<bool, StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2")
                .bind(conversation.0)
                .bind(user.0)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Changes a member's role; false if not a member.
    #[tracing::instrument(skip_all)]
    pub async fn set_member_role(
        &self,
        conversation: ConversationId,
        user: UserId,
        role: &str,
    ) -> Result<bool, StoreError> {
        on_pool!(self, |pool| {
            let done =
                sqlx::query("UPDATE conversation_members SET role = $3 WHERE conversation_id = $1 AND user_id = $2")
                    .bind(conversation.0)
                    .bind(user.0)
                    .bind(role)
                    .execute(pool)
                    .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Moves `user`'s watermarks forward (never back, never past the newest message);
    /// reading implies delivery. Returns the watermarks after the change and whether
    /// either moved, or `None` if `user` is not a member.
    #[tracing::instrument(skip_all)]
    pub async fn advance_receipts(
        &self,
        conversation: ConversationId,
        user: UserId,
        delivered: Option<i64>,
        read: Option<i64>,
    ) -> Result<Option<(MemberRecord, bool)>, StoreError> {
        let read = read.unwrap_or(0).max(0);
        let delivered = delivered.unwrap_or(0).max(read);
        let sql = "UPDATE conversation_members SET \
                     last_delivered_seq = CASE WHEN $3 > last_delivered_seq THEN $3 ELSE last_delivered_seq END, \
                     last_read_seq = CASE WHEN $4 > last_read_seq THEN $4 ELSE last_read_seq END \
                   WHERE conversation_id = $1 AND user_id = $2";
        let before = self.member(conversation, user).await?;
        let Some(before) = before else {
            return Ok(None);
        };
        let last_seq = on_pool!(self, |pool| {
            let row = sqlx::query("SELECT last_seq FROM conversations WHERE id = $1")
                .bind(conversation.0)
                .fetch_one(pool)
                .await?;
            row.try_get::<i64, _>("last_seq")?
        });
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(conversation.0)
                .bind(user.0)
                .bind(delivered.min(last_seq))
                .bind(read.min(last_seq))
                .execute(pool)
                .await?;
        });
        let after = self.member(conversation, user).await?.ok_or(StoreError::NotMember)?;
        let moved =
            after.last_delivered_seq != before.last_delivered_seq || after.last_read_seq != before.last_read_seq;
        Ok(Some((after, moved)))
    }

    /// `user`'s unread count in every conversation it belongs to.
    #[tracing::instrument(skip_all)]
    pub async fn unread_counts_for(&self, user: UserId) -> Result<Vec<(ConversationId, i64)>, StoreError> {
        let sql = "SELECT cm.conversation_id, \
                          (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = cm.conversation_id \
                             AND m.seq > cm.last_read_seq AND m.sender_id <> cm.user_id) AS unread \
                   FROM conversation_members cm WHERE cm.user_id = $1";
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql).bind(user.0).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push((
                    ConversationId(row.try_get::<Uuid, _>("conversation_id")?),
                    row.try_get::<i64, _>("unread")?,
                ));
            }
            Ok(out)
        })
    }
}
