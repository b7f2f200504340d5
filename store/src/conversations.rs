//! Conversations: creating them, reading their details, listing a member's.

use parley_wire::payloads::Message;
use parley_wire::{ConversationId, UserId};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::backend::on_pool;
use crate::members::MemberRecord;
use crate::messages::{message_columns, optional_message_from_row};
use crate::{time_from_ms, Store, StoreError};

/// A conversation's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    pub id: ConversationId,
    /// `direct` or `group`.
    pub kind: String,
    pub title: Option<String>,
    /// Who talks to whom: `user_user`, `user_provider`, … , `group`.
    pub audience: String,
    pub context_type: Option<String>,
    pub context_id: Option<String>,
    pub created_by: Option<UserId>,
    /// Sequence number of the newest message (0 when empty).
    pub last_seq: i64,
    /// Newest message time, or creation time for an empty conversation, in ms.
    pub last_activity_ms: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A conversation as listed for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conversation: ConversationRecord,
    pub members: Vec<MemberRecord>,
    pub last_message: Option<Message>,
    /// Messages from others after the member's read watermark.
    pub unread: i64,
}

/// Which of a member's conversations to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListView {
    /// Everything not archived.
    #[default]
    All,
    Unread,
    Pinned,
    Archived,
    Favourites,
}

/// A listing's view and optional search text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationFilter {
    pub view: ListView,
    /// Matches the title or another member's username, display name or specialty (case-insensitive).
    pub query: Option<String>,
}

/// Position in the "newest activity first" listing: strictly older than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationCursor {
    pub last_activity_ms: i64,
    pub id: ConversationId,
}

/// A group to create, with its first members (the creator is its owner).
#[derive(Debug, Clone)]
pub struct NewGroup {
    pub id: ConversationId,
    pub title: Option<String>,
    pub audience: String,
    pub context_type: Option<String>,
    pub context_id: Option<String>,
    pub creator: UserId,
    pub members: Vec<UserId>,
    pub now_ms: i64,
}

const CONVERSATION_COLUMNS: &str = "c.id, c.kind, c.title, c.audience, c.context_type, c.context_id, c.created_by, \
     c.last_seq, COALESCE(c.last_message_at, c.created_at) AS activity, c.created_at";

macro_rules! conversation_from_row {
    ($row:expr) => {
        ConversationRecord {
            id: ConversationId($row.try_get::<Uuid, _>("id")?),
            kind: $row.try_get("kind")?,
            title: $row.try_get("title")?,
            audience: $row.try_get("audience")?,
            context_type: $row.try_get("context_type")?,
            context_id: $row.try_get("context_id")?,
            created_by: $row.try_get::<Option<Uuid>, _>("created_by")?.map(UserId),
            last_seq: $row.try_get("last_seq")?,
            last_activity_ms: $row.try_get("activity")?,
            created_at: time_from_ms($row.try_get("created_at")?),
        }
    };
}

/// The unique key of the 1:1 conversation between two users, whatever the order.
pub(crate) fn direct_key(a: UserId, b: UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

/// The id (a `Uuid`) of the 1:1 conversation between `$a` and `$b` (`UserId`s), created
/// empty inside transaction `$tx` when it does not exist yet.
macro_rules! ensure_direct_in {
    ($tx:expr, $a:expr, $b:expr, $now:expr) => {{
        let (a, b, now): (UserId, UserId, i64) = ($a, $b, $now);
        let key = $crate::conversations::direct_key(a, b);
        let created = sqlx::query(
            "INSERT INTO conversations (id, kind, direct_key, audience, created_by, last_seq, created_at) \
             VALUES ($1, 'direct', $2, 'user_user', $3, 0, $4) ON CONFLICT (direct_key) DO NOTHING RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(&key)
        .bind(a.0)
        .bind(now)
        .fetch_optional(&mut *$tx)
        .await?;
        match created {
            Some(row) => {
                let id: Uuid = row.try_get("id")?;
                sqlx::query(
                    "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at) \
                     VALUES ($1, $2, 'member', $3), ($1, $4, 'member', $3)",
                )
                .bind(id)
                .bind(a.0)
                .bind(now)
                .bind(b.0)
                .execute(&mut *$tx)
                .await
                .map_err(|e| StoreError::classify(e, &[]))?;
                id
            }
            None => sqlx::query("SELECT id FROM conversations WHERE direct_key = $1")
                .bind(&key)
                .fetch_one(&mut *$tx)
                .await?
                .try_get::<Uuid, _>("id")?,
        }
    }};
}
pub(crate) use ensure_direct_in;

impl Store {
    /// Creates a group whose creator is its owner and the others plain members.
    /// An unknown member is `StoreError::MissingReference`; nothing is created then.
    #[tracing::instrument(skip_all)]
    pub async fn create_group(&self, group: &NewGroup) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO conversations (id, kind, title, audience, context_type, context_id, created_by, last_seq, created_at) \
                 VALUES ($1, 'group', $2, $3, $4, $5, $6, 0, $7)",
            )
            .bind(group.id.0)
            .bind(&group.title)
            .bind(&group.audience)
            .bind(&group.context_type)
            .bind(&group.context_id)
            .bind(group.creator.0)
            .bind(group.now_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::classify(e, &[]))?;
            let mut insert =
                QueryBuilder::new("INSERT INTO conversation_members (conversation_id, user_id, role, joined_at) ");
            let everyone: Vec<(UserId, &str)> = std::iter::once((group.creator, "owner"))
                .chain(group.members.iter().filter(|m| **m != group.creator).map(|m| (*m, "member")))
                .collect();
            insert.push_values(&everyone, |mut row, (user, role)| {
                row.push_bind(group.id.0).push_bind(user.0).push_bind(*role).push_bind(group.now_ms);
            });
            insert.build().execute(&mut *tx).await.map_err(|e| StoreError::classify(e, &[]))?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The 1:1 conversation between `a` and `b`, created (empty) if needed.
    #[tracing::instrument(skip_all)]
    pub async fn ensure_direct(&self, a: UserId, b: UserId, now_ms: i64) -> Result<ConversationId, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let id = ensure_direct_in!(tx, a, b, now_ms);
            tx.commit().await?;
            Ok(ConversationId(id))
        })
    }

    /// The 1:1 conversation between `a` and `b`, if there is one.
    #[tracing::instrument(skip_all)]
    pub async fn direct_between(&self, a: UserId, b: UserId) -> Result<Option<ConversationId>, StoreError> {
        let key = direct_key(a, b);
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT id FROM conversations WHERE direct_key = $1")
                .bind(&key)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(row) => Some(ConversationId(row.try_get::<Uuid, _>("id")?)),
                None => None,
            })
        })
    }

    /// A conversation's fields.
    #[tracing::instrument(skip_all)]
    pub async fn get_conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql).bind(id.0).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(conversation_from_row!(row)),
                None => None,
            })
        })
    }

    /// Sets a group's title.
    #[tracing::instrument(skip_all)]
    pub async fn rename_conversation(&self, id: ConversationId, title: Option<&str>) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("UPDATE conversations SET title = $2 WHERE id = $1")
                .bind(id.0)
                .bind(title)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// The conversations `user` belongs to, newest activity first, after `cursor`,
    /// each with its members, last message and the user's unread count.
    #[tracing::instrument(skip_all)]
    pub async fn conversations_for(
        &self,
        user: UserId,
        cursor: Option<ConversationCursor>,
        limit: u32,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let view = match filter.view {
            ListView::All => "AND cm.archived = FALSE",
            ListView::Archived => "AND cm.archived = TRUE",
            ListView::Pinned => "AND cm.pinned = TRUE",
            ListView::Favourites => "AND cm.favourite = TRUE",
            ListView::Unread => {
                "AND cm.archived = FALSE AND EXISTS (SELECT 1 FROM messages u WHERE u.conversation_id = c.id \
                 AND u.seq > cm.last_read_seq AND u.sender_id <> cm.user_id)"
            }
        };
        // A title or another member's username, display name or specialty containing the query.
        let search = if filter.query.is_some() {
            "AND (LOWER(COALESCE(c.title, '')) LIKE $5 ESCAPE '\\' OR EXISTS (SELECT 1 FROM conversation_members o \
             JOIN users ou ON ou.id = o.user_id WHERE o.conversation_id = c.id AND o.user_id <> cm.user_id \
             AND (LOWER(COALESCE(ou.username, '')) LIKE $5 ESCAPE '\\' \
                  OR LOWER(COALESCE(ou.display_name, '')) LIKE $5 ESCAPE '\\' \
                  OR LOWER(COALESCE(ou.specialty, '')) LIKE $5 ESCAPE '\\')))"
        } else {
            ""
        };
        let pattern = filter.query.as_deref().map(crate::users::like_pattern);
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS}, {}, h.user_id AS hidden_for, \
                    (SELECT COUNT(*) FROM messages u WHERE u.conversation_id = c.id \
                       AND u.seq > cm.last_read_seq AND u.sender_id <> cm.user_id) AS unread \
             FROM conversation_members cm \
             JOIN conversations c ON c.id = cm.conversation_id \
             LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.last_seq \
             LEFT JOIN message_hidden h ON h.message_id = m.id AND h.user_id = cm.user_id \
             WHERE cm.user_id = $1 \
               AND (COALESCE(c.last_message_at, c.created_at) < $2 \
                    OR (COALESCE(c.last_message_at, c.created_at) = $2 AND c.id < $3)) \
               {view} {search} \
             ORDER BY activity DESC, c.id DESC LIMIT $4",
            message_columns!("m", "m_")
        );
        let (before_ms, before_id) = match cursor {
            Some(c) => (c.last_activity_ms, c.id.0),
            None => (i64::MAX, Uuid::max()),
        };
        let mut list = on_pool!(self, |pool| {
            let mut query = sqlx::query(&sql).bind(user.0).bind(before_ms).bind(before_id).bind(i64::from(limit));
            if let Some(p) = &pattern {
                query = query.bind(p.clone());
            }
            let rows = query.fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let conversation = conversation_from_row!(row);
                let last_message = optional_message_from_row!(row, "m_");
                out.push(ConversationSummary {
                    conversation,
                    members: Vec::new(),
                    last_message,
                    unread: row.try_get("unread")?,
                });
            }
            out
        });
        let ids: Vec<ConversationId> = list.iter().map(|c| c.conversation.id).collect();
        for (conversation, member) in self.members_of_many(&ids).await? {
            if let Some(c) = list.iter_mut().find(|c| c.conversation.id == conversation) {
                c.members.push(member);
            }
        }
        Ok(list)
    }
}
