//! Uploaded files: the bytes go to the uploads folder, their description to the
//! store. Owners and members of conversations where they were sent may fetch them.

use std::path::PathBuf;

use parley_wire::payloads::Attachment;
use parley_wire::UserId;
use uuid::Uuid;

use crate::{now_ms, Domain, DomainError};

impl Domain {
    /// Stores `bytes` as a new upload of `owner`.
    #[tracing::instrument(skip_all, fields(user_id = %owner))]
    pub async fn upload(
        &self,
        owner: UserId,
        content_type: &str,
        filename: Option<String>,
        bytes: &[u8],
    ) -> Result<Attachment, DomainError> {
        let max = self.limits().max_upload_bytes;
        if bytes.is_empty() || bytes.len() > max {
            return Err(DomainError::invalid("invalid_upload", format!("an upload is 1 byte to {max} bytes")));
        }
        let valid_type = content_type.split_once('/').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
            && content_type.len() <= 100
            && content_type.chars().all(|c| c.is_ascii_graphic());
        if !valid_type {
            return Err(DomainError::invalid("invalid_content_type", "send a Content-Type such as image/jpeg"));
        }
        if let Some(name) = &filename {
            if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
                return Err(DomainError::invalid("invalid_filename", "filename is 1 to 200 bytes, no slashes"));
            }
        }
        let attachment = Attachment {
            id: Uuid::now_v7(),
            content_type: content_type.to_string(),
            size: bytes.len() as i64,
            filename,
        };
        let dir = &self.limits().uploads_dir;
        let io = |e: std::io::Error| DomainError::Internal(format!("upload storage: {e}"));
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        let path = dir.join(attachment.id.simple().to_string());
        tokio::fs::write(&path, bytes).await.map_err(io)?;
        if let Err(e) = self.store().insert_upload(owner, &attachment, now_ms()).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e.into());
        }
        Ok(attachment)
    }

    /// An upload `reader` may fetch, and where its bytes are.
    pub async fn download(&self, reader: UserId, id: Uuid) -> Result<(Attachment, PathBuf), DomainError> {
        let record = self
            .store()
            .upload_for(id, reader)
            .await?
            .ok_or_else(|| DomainError::not_found("upload_not_found", "no such upload"))?;
        let path = self.limits().uploads_dir.join(id.simple().to_string());
        Ok((record.attachment, path))
    }
}
