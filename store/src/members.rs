//! Membership: roles, joining and leaving, and each member's receipt watermarks.

use parley_wire::{ConversationId, UserId};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::backend::on_pool;
use crate::events::append_events;
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
    /// The member's own settings (only shown to that member).
    pub settings: MemberSettings,
}

/// A member's own settings for a conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemberSettings {
    pub pinned: bool,
    pub archived: bool,
    pub favourite: bool,
    pub muted_until: Option<chrono::DateTime<chrono::Utc>>,
    pub ringtone: Option<String>,
    /// 1:1 only: this member blocked the other.
    pub blocked: bool,
}

/// A change to a member's settings: `None` leaves a field as it is; for the
/// nullable fields, `Some(None)` clears them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsChange {
    pub pinned: Option<bool>,
    pub archived: Option<bool>,
    pub favourite: Option<bool>,
    pub muted_until_ms: Option<Option<i64>>,
    pub ringtone: Option<Option<String>>,
    pub blocked: Option<bool>,
}

const MEMBER_COLUMNS: &str = "conversation_id, user_id, role, joined_at, last_delivered_seq, last_read_seq, \
     pinned, archived, favourite, muted_until, ringtone, blocked";

macro_rules! member_from_row {
    ($row:expr) => {
        MemberRecord {
            user_id: UserId($row.try_get::<Uuid, _>("user_id")?),
            role: $row.try_get("role")?,
            joined_at: time_from_ms($row.try_get("joined_at")?),
            last_delivered_seq: $row.try_get("last_delivered_seq")?,
            last_read_seq: $row.try_get("last_read_seq")?,
            settings: MemberSettings {
                pinned: $row.try_get("pinned")?,
                archived: $row.try_get("archived")?,
                favourite: $row.try_get("favourite")?,
                muted_until: $row.try_get::<Option<i64>, _>("muted_until")?.map(time_from_ms),
                ringtone: $row.try_get("ringtone")?,
                blocked: $row.try_get("blocked")?,
            },
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

    /// Applies `change` to `user`'s settings in `conversation` and appends a
    /// `settings` event (body from `make_body`) to the user's own log. Returns the
    /// settings after the change and the event number, or `None` if not a member.
    #[tracing::instrument(skip_all)]
    pub async fn update_member_settings(
        &self,
        conversation: ConversationId,
        user: UserId,
        change: &SettingsChange,
        now_ms: i64,
        make_body: impl Fn(&MemberSettings) -> String,
    ) -> Result<Option<(MemberSettings, i64)>, StoreError> {
        let update = "UPDATE conversation_members SET \
                        pinned = COALESCE($3, pinned), archived = COALESCE($4, archived), \
                        favourite = COALESCE($5, favourite), blocked = COALESCE($6, blocked), \
                        muted_until = CASE WHEN $7 THEN $8 ELSE muted_until END, \
                        ringtone = CASE WHEN $9 THEN $10 ELSE ringtone END \
                      WHERE conversation_id = $1 AND user_id = $2";
        let select =
            format!("SELECT {MEMBER_COLUMNS} FROM conversation_members WHERE conversation_id = $1 AND user_id = $2");
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(update)
                .bind(conversation.0)
                .bind(user.0)
                .bind(change.pinned)
                .bind(change.archived)
                .bind(change.favourite)
                .bind(change.blocked)
                .bind(change.muted_until_ms.is_some())
                .bind(change.muted_until_ms.flatten())
                .bind(change.ringtone.is_some())
                .bind(change.ringtone.clone().flatten())
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Ok(None);
            }
            let row = sqlx::query(&select).bind(conversation.0).bind(user.0).fetch_one(&mut *tx).await?;
            let settings = member_from_row!(row).settings;
            let body = make_body(&settings);
            let taken = append_events!(tx, &[user], "settings", Some(conversation.0), None, &body, now_ms);
            tx.commit().await?;
            Ok(Some((settings, taken.first().map_or(0, |(_, seq)| *seq))))
        })
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
