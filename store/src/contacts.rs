//! Contacts: requests, answers and the accepted pairs. Every change lands in both
//! users' event logs (kind `contact`) in the same transaction, so their devices
//! learn it live or through sync.

use parley_wire::UserId;
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::events::append_events;
use crate::{time_from_ms, Store, StoreError};

/// Where two users stand, seen from one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactState {
    None,
    /// I asked; they have not answered.
    Requested,
    /// They asked me.
    Incoming,
    Contacts,
}

impl ContactState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContactState::None => "none",
            ContactState::Requested => "requested",
            ContactState::Incoming => "incoming",
            ContactState::Contacts => "contacts",
        }
    }
}

/// One entry of a contact list or request list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRecord {
    pub user: UserId,
    pub state: ContactState,
    /// When they became contacts, or when the request was made.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// One `contact` event a change wrote: `user`'s event `seq` says it now stands at
/// `state` with `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactEvent {
    pub user: UserId,
    pub seq: i64,
    pub other: UserId,
    pub state: ContactState,
}

/// What a contact change did, with the events it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactChange {
    /// The state afterwards, seen by the acting user.
    pub state: ContactState,
    /// False when nothing changed (a repeated request, say).
    pub changed: bool,
    pub events: Vec<ContactEvent>,
}

/// Writes the event of a contact change to `$user`'s log, naming `$other`.
macro_rules! contact_event {
    ($tx:expr, $user:expr, $other:expr, $state:expr, $now:expr) => {{
        let (user, other, state): (UserId, UserId, ContactState) = ($user, $other, $state);
        let body = serde_json::json!({ "user_id": other, "state": state.as_str() }).to_string();
        let taken = append_events!($tx, &[user], "contact", None, None, &body, $now);
        taken.into_iter().map(move |(user, seq)| ContactEvent { user, seq, other, state })
    }};
}

/// Where `$user` stands with `$other`, read on `$conn` (a transaction or a connection).
macro_rules! state_in {
    ($conn:expr, $user:expr, $other:expr) => {{
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM contacts WHERE user_id = $1 AND contact_id = $2) AS contacts, \
                    (SELECT COUNT(*) FROM contact_requests WHERE from_id = $1 AND to_id = $2) AS mine, \
                    (SELECT COUNT(*) FROM contact_requests WHERE from_id = $2 AND to_id = $1) AS theirs",
        )
        .bind($user.0)
        .bind($other.0)
        .fetch_one(&mut *$conn)
        .await?;
        if row.try_get::<i64, _>("contacts")? > 0 {
            ContactState::Contacts
        } else if row.try_get::<i64, _>("theirs")? > 0 {
            ContactState::Incoming
        } else if row.try_get::<i64, _>("mine")? > 0 {
            ContactState::Requested
        } else {
            ContactState::None
        }
    }};
}

/// Makes `$a` and `$b` contacts inside `$tx`, dropping requests either way.
macro_rules! connect_in {
    ($tx:expr, $a:expr, $b:expr, $now:expr) => {{
        sqlx::query(
            "DELETE FROM contact_requests WHERE (from_id = $1 AND to_id = $2) OR (from_id = $2 AND to_id = $1)",
        )
        .bind($a.0)
        .bind($b.0)
        .execute(&mut *$tx)
        .await?;
        sqlx::query(
            "INSERT INTO contacts (user_id, contact_id, since) VALUES ($1, $2, $3), ($2, $1, $3) ON CONFLICT DO NOTHING",
        )
        .bind($a.0)
        .bind($b.0)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
    }};
}

impl Store {
    /// `from` asks `to` to become contacts. If `to` had already asked `from`, they
    /// become contacts at once.
    #[tracing::instrument(skip_all)]
    pub async fn request_contact(&self, from: UserId, to: UserId, now_ms: i64) -> Result<ContactChange, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO contact_requests (from_id, to_id, created_at) \
                 SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM contacts WHERE user_id = $1 AND contact_id = $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(from.0)
            .bind(to.0)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::classify(e, &[]))?
            .rows_affected();
            let state = state_in!(tx, from, to);
            let mut events = Vec::new();
            let state = match state {
                // Both asked: that is an acceptance.
                ContactState::Incoming if inserted == 1 => {
                    connect_in!(tx, from, to, now_ms);
                    events.extend(contact_event!(tx, from, to, ContactState::Contacts, now_ms));
                    events.extend(contact_event!(tx, to, from, ContactState::Contacts, now_ms));
                    ContactState::Contacts
                }
                ContactState::Requested if inserted == 1 => {
                    events.extend(contact_event!(tx, from, to, ContactState::Requested, now_ms));
                    events.extend(contact_event!(tx, to, from, ContactState::Incoming, now_ms));
                    ContactState::Requested
                }
                other => other,
            };
            tx.commit().await?;
            Ok(ContactChange { state, changed: !events.is_empty(), events })
        })
    }

    /// `user` accepts or declines the request `from` made. `None` when there is no such request.
    #[tracing::instrument(skip_all)]
    pub async fn answer_contact(
        &self,
        user: UserId,
        from: UserId,
        accept: bool,
        now_ms: i64,
    ) -> Result<Option<ContactChange>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let taken = sqlx::query("DELETE FROM contact_requests WHERE from_id = $1 AND to_id = $2")
                .bind(from.0)
                .bind(user.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if taken == 0 {
                return Ok(None);
            }
            let state = if accept {
                connect_in!(tx, user, from, now_ms);
                ContactState::Contacts
            } else {
                ContactState::None
            };
            let mut events: Vec<ContactEvent> = contact_event!(tx, user, from, state, now_ms).collect();
            events.extend(contact_event!(tx, from, user, state, now_ms));
            tx.commit().await?;
            Ok(Some(ContactChange { state, changed: true, events }))
        })
    }

    /// Ends whatever `user` and `other` have: contacts, or a request either way.
    #[tracing::instrument(skip_all)]
    pub async fn remove_contact(&self, user: UserId, other: UserId, now_ms: i64) -> Result<ContactChange, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let contacts = sqlx::query(
                "DELETE FROM contacts WHERE (user_id = $1 AND contact_id = $2) OR (user_id = $2 AND contact_id = $1)",
            )
            .bind(user.0)
            .bind(other.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let requests = sqlx::query(
                "DELETE FROM contact_requests WHERE (from_id = $1 AND to_id = $2) OR (from_id = $2 AND to_id = $1)",
            )
            .bind(user.0)
            .bind(other.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let mut events = Vec::new();
            if contacts + requests > 0 {
                events.extend(contact_event!(tx, user, other, ContactState::None, now_ms));
                events.extend(contact_event!(tx, other, user, ContactState::None, now_ms));
            }
            tx.commit().await?;
            Ok(ContactChange { state: ContactState::None, changed: !events.is_empty(), events })
        })
    }

    /// Where `user` stands with `other`.
    #[tracing::instrument(skip_all)]
    pub async fn contact_state(&self, user: UserId, other: UserId) -> Result<ContactState, StoreError> {
        on_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            Ok(state_in!(conn, user, other))
        })
    }

    /// `user`'s contacts (`Contacts`) or its pending requests both ways (`Requested`, `Incoming`).
    #[tracing::instrument(skip_all)]
    pub async fn contacts_of(&self, user: UserId, requests: bool) -> Result<Vec<ContactRecord>, StoreError> {
        let sql = if requests {
            "SELECT to_id AS other, created_at AS since, 'requested' AS state FROM contact_requests WHERE from_id = $1 \
             UNION ALL \
             SELECT from_id, created_at, 'incoming' FROM contact_requests WHERE to_id = $1 ORDER BY since DESC"
        } else {
            "SELECT contact_id AS other, since, 'contacts' AS state FROM contacts WHERE user_id = $1 ORDER BY since DESC"
        };
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql).bind(user.0).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let state = match row.try_get::<String, _>("state")?.as_str() {
                    "requested" => ContactState::Requested,
                    "incoming" => ContactState::Incoming,
                    _ => ContactState::Contacts,
                };
                out.push(ContactRecord {
                    user: UserId(row.try_get::<Uuid, _>("other")?),
                    state,
                    since: time_from_ms(row.try_get("since")?),
                });
            }
            Ok(out)
        })
    }
}
