//! Consultations between a user and a provider (or institution): requested, open,
//! closed. Every change lands in both parties' event logs (kind `consultation`) in
//! the same transaction; opening one also ensures the parties' 1:1 conversation
//! and points its context at the consultation.

use std::str::FromStr;

use parley_wire::payloads::Consultation;
use parley_wire::{ConversationId, UserId};
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::conversations::ensure_direct_in;
use crate::events::append_events;
use crate::{time_from_ms, Store, StoreError};

/// Where a consultation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsultationStatus {
    /// The user asked; the provider has not accepted.
    Requested,
    Open,
    Closed,
}

impl ConsultationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsultationStatus::Requested => "requested",
            ConsultationStatus::Open => "open",
            ConsultationStatus::Closed => "closed",
        }
    }
}

impl FromStr for ConsultationStatus {
    type Err = parley_wire::ids::UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "requested" => ConsultationStatus::Requested,
            "open" => ConsultationStatus::Open,
            "closed" => ConsultationStatus::Closed,
            _ => return Err(parley_wire::ids::UnknownValue),
        })
    }
}

/// A consultation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsultationRecord {
    pub id: Uuid,
    pub user_id: UserId,
    /// A provider or institution account.
    pub provider_id: UserId,
    pub status: ConsultationStatus,
    pub note: Option<String>,
    /// The parties' 1:1 conversation, set when it opened.
    pub conversation_id: Option<ConversationId>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub opened_at: Option<chrono::DateTime<chrono::Utc>>,
    pub closed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<&ConsultationRecord> for Consultation {
    fn from(c: &ConsultationRecord) -> Self {
        Consultation {
            id: c.id,
            user_id: c.user_id,
            provider_id: c.provider_id,
            status: c.status.as_str().to_string(),
            note: c.note.clone(),
            conversation_id: c.conversation_id,
            created_at: c.created_at,
            opened_at: c.opened_at,
            closed_at: c.closed_at,
        }
    }
}

/// A consultation to record as requested.
#[derive(Debug, Clone)]
pub struct NewConsultation {
    pub id: Uuid,
    pub user: UserId,
    pub provider: UserId,
    pub note: Option<String>,
    pub now_ms: i64,
}

/// A consultation after a change, with the events the change wrote (user, event number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsultationChange {
    pub consultation: ConsultationRecord,
    pub events: Vec<(UserId, i64)>,
}

/// What a user and a provider have had, as the contact policy asks it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsultationStanding {
    /// A consultation between them is open now.
    pub open: bool,
    /// Some consultation between them was opened at some time (open now or closed since).
    pub opened: bool,
}

/// Position in the "newest first" listing: strictly older than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsultationCursor {
    pub created_at_ms: i64,
    pub id: Uuid,
}

const COLUMNS: &str = "id, user_id, provider_id, status, note, conversation_id, created_at, opened_at, closed_at";

macro_rules! consultation_from_row {
    ($row:expr) => {
        ConsultationRecord {
            id: $row.try_get("id")?,
            user_id: UserId($row.try_get::<Uuid, _>("user_id")?),
            provider_id: UserId($row.try_get::<Uuid, _>("provider_id")?),
            status: $row
                .try_get::<String, _>("status")?
                .parse()
                .map_err(|_| StoreError::Corrupt("consultations.status"))?,
            note: $row.try_get("note")?,
            conversation_id: $row.try_get::<Option<Uuid>, _>("conversation_id")?.map(ConversationId),
            created_at: time_from_ms($row.try_get("created_at")?),
            opened_at: $row.try_get::<Option<i64>, _>("opened_at")?.map(time_from_ms),
            closed_at: $row.try_get::<Option<i64>, _>("closed_at")?.map(time_from_ms),
        }
    };
}

/// Reads consultation `$id` in `$tx` and writes its `consultation` event to both
/// parties' logs; evaluates to the [`ConsultationChange`].
macro_rules! record_change {
    ($tx:expr, $id:expr, $now:expr) => {{
        let sql = format!("SELECT {COLUMNS} FROM consultations WHERE id = $1");
        let row = sqlx::query(&sql).bind($id).fetch_one(&mut *$tx).await?;
        let consultation = consultation_from_row!(row);
        let body = serde_json::to_string(&Consultation::from(&consultation)).unwrap_or_default();
        let parties = [consultation.user_id, consultation.provider_id];
        let events = append_events!($tx, &parties, "consultation", None, None, &body, $now);
        ConsultationChange { consultation, events }
    }};
}

impl Store {
    /// Records a requested consultation. A live (requested or open) one between the
    /// same two is `StoreError::Conflict("consultation")`; an unknown party is
    /// `StoreError::MissingReference`.
    #[tracing::instrument(skip_all)]
    pub async fn request_consultation(&self, new: &NewConsultation) -> Result<ConsultationChange, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO consultations (id, user_id, provider_id, status, note, created_at) \
                 VALUES ($1, $2, $3, 'requested', $4, $5)",
            )
            .bind(new.id)
            .bind(new.user.0)
            .bind(new.provider.0)
            .bind(&new.note)
            .bind(new.now_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::classify(e, &["consultation"]))?;
            let change = record_change!(tx, new.id, new.now_ms);
            tx.commit().await?;
            Ok(change)
        })
    }

    /// Opens a requested consultation: ensures the parties' 1:1 conversation, gives
    /// it `audience` and the context `consultation` with this id. `None` when the
    /// consultation does not exist or is not `requested` any more.
    #[tracing::instrument(skip_all)]
    pub async fn open_consultation(
        &self,
        id: Uuid,
        audience: &str,
        now_ms: i64,
    ) -> Result<Option<ConsultationChange>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let Some(row) = sqlx::query(
                "UPDATE consultations SET status = 'open', opened_at = $2 \
                 WHERE id = $1 AND status = 'requested' RETURNING user_id, provider_id",
            )
            .bind(id)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Ok(None);
            };
            let user = UserId(row.try_get::<Uuid, _>("user_id")?);
            let provider = UserId(row.try_get::<Uuid, _>("provider_id")?);
            let conversation = ensure_direct_in!(tx, user, provider, now_ms);
            sqlx::query(
                "UPDATE conversations SET audience = $2, context_type = 'consultation', context_id = $3 WHERE id = $1",
            )
            .bind(conversation)
            .bind(audience)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE consultations SET conversation_id = $2 WHERE id = $1")
                .bind(id)
                .bind(conversation)
                .execute(&mut *tx)
                .await?;
            let change = record_change!(tx, id, now_ms);
            tx.commit().await?;
            Ok(Some(change))
        })
    }

    /// Closes a requested or open consultation. `None` when it does not exist or is closed already.
    #[tracing::instrument(skip_all)]
    pub async fn close_consultation(&self, id: Uuid, now_ms: i64) -> Result<Option<ConsultationChange>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE consultations SET status = 'closed', closed_at = $2 \
                 WHERE id = $1 AND status IN ('requested', 'open')",
            )
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                return Ok(None);
            }
            let change = record_change!(tx, id, now_ms);
            tx.commit().await?;
            Ok(Some(change))
        })
    }

    /// The consultation with this id.
    #[tracing::instrument(skip_all)]
    pub async fn consultation(&self, id: Uuid) -> Result<Option<ConsultationRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM consultations WHERE id = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(consultation_from_row!(row)),
                None => None,
            })
        })
    }

    /// The consultations `user` is a party of (either side), newest first, after
    /// `cursor`, optionally only those with `status`.
    #[tracing::instrument(skip_all)]
    pub async fn consultations_of(
        &self,
        user: UserId,
        status: Option<ConsultationStatus>,
        cursor: Option<ConsultationCursor>,
        limit: u32,
    ) -> Result<Vec<ConsultationRecord>, StoreError> {
        let (before_ms, before_id) = match cursor {
            Some(c) => (c.created_at_ms, c.id),
            None => (i64::MAX, Uuid::max()),
        };
        on_pool!(self, |pool| {
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM consultations WHERE (user_id = "));
            q.push_bind(user.0).push(" OR provider_id = ").push_bind(user.0).push(")");
            q.push(" AND (created_at < ").push_bind(before_ms);
            q.push(" OR (created_at = ").push_bind(before_ms).push(" AND id < ").push_bind(before_id).push("))");
            if let Some(status) = status {
                q.push(" AND status = ").push_bind(status.as_str());
            }
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(i64::from(limit));
            let rows = q.build().fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(consultation_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Whether `user` has an open consultation with `provider`, and whether it ever had an opened one.
    #[tracing::instrument(skip_all)]
    pub async fn consultation_standing(
        &self,
        user: UserId,
        provider: UserId,
    ) -> Result<ConsultationStanding, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM consultations WHERE user_id = $1 AND provider_id = $2 \
                           AND status = 'open') AS open, \
                        (SELECT COUNT(*) FROM consultations WHERE user_id = $1 AND provider_id = $2 \
                           AND opened_at IS NOT NULL) AS opened",
            )
            .bind(user.0)
            .bind(provider.0)
            .fetch_one(pool)
            .await?;
            Ok(ConsultationStanding {
                open: row.try_get::<i64, _>("open")? > 0,
                opened: row.try_get::<i64, _>("opened")? > 0,
            })
        })
    }
}
