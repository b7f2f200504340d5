//! What the store can answer besides success.

/// Errors callers can match on; database details stay inside `Database`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule refused the write; names the field (`email`, `username`…).
    #[error("{0} is already taken")]
    Conflict(&'static str),
    /// The user is not a member of the conversation (or it does not exist).
    #[error("not a member of that conversation")]
    NotMember,
    /// A member of the 1:1 conversation blocked the other (`by_sender`: the sender did).
    #[error("the conversation is blocked")]
    Blocked { by_sender: bool },
    /// `reply_to` names no message of the same conversation.
    #[error("the message replied to is not in this conversation")]
    InvalidReply,
    /// A referenced row does not exist.
    #[error("a referenced record does not exist")]
    MissingReference,
    /// A stored value is not one the code knows (names the column).
    #[error("unexpected value in {0}")]
    Corrupt(&'static str),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Turns a unique or foreign-key violation into the matching variant; `fields`
    /// are the column names to look for in the backend's message or constraint name.
    pub(crate) fn classify(err: sqlx::Error, fields: &[&'static str]) -> StoreError {
        if let sqlx::Error::Database(db) = &err {
            if db.is_unique_violation() {
                let text = format!("{} {}", db.message(), db.constraint().unwrap_or(""));
                if let Some(field) = fields.iter().find(|f| text.contains(*f)) {
                    return StoreError::Conflict(field);
                }
                return StoreError::Conflict("record");
            }
            if db.is_foreign_key_violation() {
                return StoreError::MissingReference;
            }
        }
        StoreError::Database(err)
    }

    /// True when the error is a uniqueness violation (used to detect racing retries).
    pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
    }
}
