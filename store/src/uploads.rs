//! Uploaded files: who owns them and who may fetch them.

use parley_wire::payloads::Attachment;
use parley_wire::UserId;
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{Store, StoreError};

/// An upload as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub attachment: Attachment,
    pub owner: UserId,
}

impl Store {
    /// Records an upload whose bytes are already in place.
    #[tracing::instrument(skip_all)]
    pub async fn insert_upload(&self, owner: UserId, attachment: &Attachment, now_ms: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO uploads (id, owner_id, content_type, size, filename, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(attachment.id)
            .bind(owner.0)
            .bind(&attachment.content_type)
            .bind(attachment.size)
            .bind(&attachment.filename)
            .bind(now_ms)
            .execute(pool)
            .await
            .map_err(|e| StoreError::classify(e, &[]))?;
            Ok(())
        })
    }

    /// An upload, if `reader` owns it, belongs to a conversation where a message
    /// carries it, or it is someone's profile photo (those are public to users).
    #[tracing::instrument(skip_all)]
    pub async fn upload_for(&self, id: Uuid, reader: UserId) -> Result<Option<UploadRecord>, StoreError> {
        let sql = "SELECT u.id, u.owner_id, u.content_type, u.size, u.filename FROM uploads u WHERE u.id = $1 \
                   AND (u.owner_id = $2 OR EXISTS (SELECT 1 FROM messages m JOIN conversation_members cm \
                        ON cm.conversation_id = m.conversation_id AND cm.user_id = $2 \
                        WHERE m.attachment_id = u.id AND m.deleted_at IS NULL) \
                        OR EXISTS (SELECT 1 FROM users p WHERE p.photo_id = u.id))";
        on_pool!(self, |pool| {
            let row = sqlx::query(sql).bind(id).bind(reader.0).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(UploadRecord {
                    attachment: Attachment {
                        id: row.try_get("id")?,
                        content_type: row.try_get("content_type")?,
                        size: row.try_get("size")?,
                        filename: row.try_get("filename")?,
                    },
                    owner: UserId(row.try_get::<Uuid, _>("owner_id")?),
                }),
                None => None,
            })
        })
    }
}
