//! Many messages in one transaction: what a busy bridge stores. The result is
//! the same as storing them one by one in order; the cost is a handful of
//! statements for the whole batch instead of seven per message.

use std::collections::{BTreeMap, HashMap, HashSet};

use parley_wire::{ConversationId, MessageId, UserId};
use sqlx::Row;
use uuid::Uuid;

use crate::backend::{id_list, is_postgres, is_postgres_pool, on_pool};
use crate::conversations::direct_key;
use crate::events::lock_rows;
use crate::{NewMessage, Posted, Store, StoreError, Stored, Target};
use serde::Serialize;

/// Rows per multi-row statement, well under both backends' bound-parameter limits.
const ROWS_PER_STATEMENT: usize = 1000;

/// (sender, client id) pairs per ORed lookup on SQLite, whose expression trees
/// are at most 1,000 deep (a longer chain of ORs fails the whole batch).
const PAIRS_PER_SQLITE_STATEMENT: usize = 250;

/// What [`Store::store_messages`] did: one result per message, in order, and how
/// many of them were stored in the shared transaction.
#[derive(Debug)]
pub struct Batched {
    pub results: Vec<Result<Stored<Posted>, StoreError>>,
    pub together: usize,
}

/// Pushes a condition matching the (sender, client id) pairs of `$pairs` (a
/// `&[(UserId, &str)]`) to query builder `$q`. Written as ORed equalities: both
/// backends then look each pair up in the unique index, where a row-value IN
/// scans the table on SQLite and two IN lists probe every combination (measured:
/// the bridge spent most of its time in those probes).
macro_rules! push_pairs {
    ($q:expr, $pairs:expr) => {{
        for (n, (sender, client_id)) in $pairs.iter().enumerate() {
            $q.push(if n == 0 { "(sender_id = " } else { " OR (sender_id = " });
            $q.push_bind(sender.0).push(" AND client_id = ").push_bind(*client_id).push(")");
        }
    }};
}

/// Rows as one JSON array: the single parameter of PostgreSQL's
/// `json_to_recordset($1::json)`, written straight from the rows' fields.
fn records<T: Serialize>(rows: &[T]) -> Result<String, StoreError> {
    serde_json::to_string(rows).map_err(|e| StoreError::Database(sqlx::Error::Encode(Box::new(e))))
}

/// A (sender, client id) pair looked up.
#[derive(Serialize)]
struct PairRow<'a> {
    s: Uuid,
    c: &'a str,
}

/// A row whose counter moves on by `n` (`at`: the conversation's last message time).
#[derive(Serialize)]
struct CountRow {
    id: Uuid,
    n: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<i64>,
}

#[derive(Serialize)]
struct MessageRow<'a> {
    id: Uuid,
    conversation_id: Option<Uuid>,
    seq: Option<i64>,
    sender_id: Uuid,
    client_id: &'a str,
    kind: &'a str,
    body: &'a str,
    reply_to: Option<Uuid>,
    attachment_id: Option<Uuid>,
    attachment: Option<String>,
    created_at: i64,
}

#[derive(Serialize)]
struct EventRow {
    user_id: Uuid,
    seq: i64,
    conversation_id: Option<Uuid>,
    message_id: Uuid,
    created_at: i64,
}

impl Store {
    /// Stores `msgs` as [`Store::store_message`] would one after another, and
    /// answers each in order. The ones that store something (the first message of
    /// a 1:1 conversation included) share one transaction, so every number and
    /// every member's log is what storing them one by one would give. Retries and
    /// refusals store nothing and are answered one by one after it, each exactly as
    /// it would be alone; so is the whole batch if its transaction fails.
    #[tracing::instrument(skip_all, fields(messages = msgs.len()))]
    pub async fn store_messages(&self, msgs: &[NewMessage]) -> Batched {
        let mut done: Vec<Option<Stored<Posted>>> = vec![None; msgs.len()];
        if msgs.len() > 1 {
            match self.store_together(msgs).await {
                Ok(together) => done = together,
                Err(e) => tracing::warn!(error = %e, "batch fell back to one message at a time"),
            }
        }
        let together = done.iter().filter(|d| d.is_some()).count();
        let mut results = Vec::with_capacity(msgs.len());
        for (msg, stored) in msgs.iter().zip(done) {
            results.push(match stored {
                Some(stored) => Ok(stored),
                None => self.store_message(msg).await,
            });
        }
        Batched { results, together }
    }

    /// The shared transaction: stores what it can and leaves `None` for the rest.
    async fn store_together(&self, msgs: &[NewMessage]) -> Result<Vec<Option<Stored<Posted>>>, StoreError> {
        // A direct conversation's key never changes, so it can be read before the transaction.
        let keys: HashSet<String> = msgs
            .iter()
            .filter_map(|m| match m.target {
                Target::Direct(to) => Some(direct_key(m.sender, to)),
                Target::Conversation(_) => None,
            })
            .collect();
        let mut by_key: HashMap<String, Uuid> = HashMap::new();
        for chunk in keys.into_iter().collect::<Vec<_>>().chunks(ROWS_PER_STATEMENT) {
            on_pool!(self, |pool| {
                let rows = if is_postgres_pool(pool) {
                    // Keys are two hyphenated ids joined by `:`, never a comma.
                    sqlx::query(
                        "SELECT id, direct_key FROM conversations WHERE direct_key = ANY(string_to_array($1, ','))",
                    )
                    .bind(chunk.join(","))
                    .fetch_all(pool)
                    .await?
                } else {
                    let mut q =
                        sqlx::QueryBuilder::new("SELECT id, direct_key FROM conversations WHERE direct_key IN (");
                    let mut list = q.separated(", ");
                    for key in chunk {
                        list.push_bind(key.as_str());
                    }
                    q.push(")");
                    q.build().fetch_all(pool).await?
                };
                for row in rows {
                    by_key.insert(row.try_get("direct_key")?, row.try_get("id")?);
                }
            });
        }
        let mut conversation_of: Vec<Option<Uuid>> = msgs
            .iter()
            .map(|m| match m.target {
                Target::Direct(to) => by_key.get(&direct_key(m.sender, to)).copied(),
                Target::Conversation(c) => Some(c.0),
            })
            .collect();
        let replies: Vec<Uuid> = msgs.iter().filter_map(|m| m.reply_to.map(|r| r.0)).collect();
        let asked: Vec<(UserId, &str)> = msgs.iter().map(|m| (m.sender, m.client_id.as_str())).collect();
        let ids: Vec<MessageId> = msgs.iter().map(|_| MessageId::new()).collect();
        let now_ms = msgs.iter().map(|m| m.now_ms).min().unwrap_or_default();

        on_pool!(self, |pool| {
            let mut tx = pool.begin_with(crate::backend::begin_writing(pool)).await?;
            // PostgreSQL gets statements whose text does not depend on the batch's
            // size (lists as one parameter), so each is prepared once per connection.
            let pg = is_postgres(&tx);
            // First messages of 1:1 conversations: the conversations are made here, with
            // both members, unless the recipient does not exist (answered alone).
            let mut missing: BTreeMap<String, (UserId, UserId)> = BTreeMap::new();
            for (i, m) in msgs.iter().enumerate() {
                if let (None, Target::Direct(to)) = (conversation_of[i], m.target) {
                    if to != m.sender {
                        missing.insert(direct_key(m.sender, to), (m.sender, to));
                    }
                }
            }
            let pairs: Vec<(String, (UserId, UserId))> = missing.into_iter().collect();
            for chunk in pairs.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new("SELECT id FROM users WHERE id IN (");
                let mut list = q.separated(", ");
                for (_, (_, to)) in chunk {
                    list.push_bind(to.0);
                }
                q.push(")");
                let mut known: HashSet<Uuid> = HashSet::new();
                for row in q.build().fetch_all(&mut *tx).await? {
                    known.insert(row.try_get("id")?);
                }
                let chunk: Vec<&(String, (UserId, UserId))> =
                    chunk.iter().filter(|(_, (_, to))| known.contains(&to.0)).collect();
                if chunk.is_empty() {
                    continue;
                }
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO conversations (id, kind, direct_key, audience, created_by, last_seq, created_at) ",
                );
                q.push_values(&chunk, |mut row, (key, (from, _))| {
                    row.push_bind(Uuid::now_v7())
                        .push_bind("direct")
                        .push_bind(key.as_str())
                        .push_bind("user_user")
                        .push_bind(from.0)
                        .push_bind(0_i64)
                        .push_bind(now_ms);
                });
                q.push(" ON CONFLICT (direct_key) DO NOTHING RETURNING id, direct_key");
                let mut created: HashMap<String, Uuid> = HashMap::new();
                for row in q.build().fetch_all(&mut *tx).await? {
                    created.insert(row.try_get("direct_key")?, row.try_get("id")?);
                }
                let mut joined = Vec::new();
                for (key, (from, to)) in &chunk {
                    if let Some(id) = created.get(key) {
                        joined.push((*id, *from));
                        joined.push((*id, *to));
                    }
                }
                if !joined.is_empty() {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO conversation_members (conversation_id, user_id, role, joined_at) ",
                    );
                    q.push_values(&joined, |mut row, (id, user)| {
                        row.push_bind(*id).push_bind(user.0).push_bind("member").push_bind(now_ms);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                // Made meanwhile by another transaction: left for the one-by-one path.
                by_key.extend(created);
            }
            for (i, m) in msgs.iter().enumerate() {
                if let (None, Target::Direct(to)) = (conversation_of[i], m.target) {
                    conversation_of[i] = by_key.get(&direct_key(m.sender, to)).copied();
                }
            }
            let conversations: Vec<Uuid> = conversation_of
                .iter()
                .flatten()
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if conversations.is_empty() {
                tx.rollback().await?;
                return Ok(vec![None; msgs.len()]);
            }
            // The conversation rows are locked in id order (their sequence numbers are
            // taken below), and the members (and blocks) of each are read; on
            // PostgreSQL in one statement.
            let mut members: HashMap<Uuid, Vec<(UserId, bool)>> = HashMap::new();
            for chunk in conversations.chunks(ROWS_PER_STATEMENT) {
                let rows = if pg {
                    sqlx::query(
                        "SELECT c.id AS conversation_id, m.user_id, m.blocked FROM conversations c \
                         JOIN conversation_members m ON m.conversation_id = c.id \
                         WHERE c.id = ANY(string_to_array($1, ',')::uuid[]) ORDER BY c.id FOR NO KEY UPDATE OF c",
                    )
                    .bind(id_list(chunk.iter().copied()))
                    .fetch_all(&mut *tx)
                    .await?
                } else {
                    let mut q = sqlx::QueryBuilder::new(
                        "SELECT conversation_id, user_id, blocked FROM conversation_members WHERE conversation_id IN (",
                    );
                    let mut list = q.separated(", ");
                    for c in chunk {
                        list.push_bind(*c);
                    }
                    q.push(")");
                    q.build().fetch_all(&mut *tx).await?
                };
                for row in rows {
                    let entry = members.entry(row.try_get("conversation_id")?).or_default();
                    entry.push((UserId(row.try_get("user_id")?), row.try_get("blocked")?));
                }
            }
            // Client ids already stored by these senders (retries: answered one by one).
            let mut stored: HashSet<(Uuid, String)> = HashSet::new();
            for chunk in asked.chunks(if pg { ROWS_PER_STATEMENT } else { PAIRS_PER_SQLITE_STATEMENT }) {
                let rows = if pg {
                    // LATERAL: one unique-index probe per pair, whatever the planner
                    // guesses of the list's length.
                    let pairs: Vec<PairRow> =
                        chunk.iter().map(|(sender, client_id)| PairRow { s: sender.0, c: client_id }).collect();
                    sqlx::query(
                        "SELECT m.sender_id, m.client_id FROM json_to_recordset($1::json) AS t(s uuid, c text), \
                         LATERAL (SELECT sender_id, client_id FROM messages WHERE sender_id = t.s AND client_id = t.c) m",
                    )
                    .bind(records(&pairs)?)
                    .fetch_all(&mut *tx)
                    .await?
                } else {
                    let mut q = sqlx::QueryBuilder::new("SELECT sender_id, client_id FROM messages WHERE ");
                    push_pairs!(q, chunk);
                    q.build().fetch_all(&mut *tx).await?
                };
                for row in rows {
                    stored.insert((row.try_get("sender_id")?, row.try_get("client_id")?));
                }
            }
            // The conversation of each message answered.
            let mut reply_in: HashMap<Uuid, Uuid> = HashMap::new();
            for chunk in replies.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new("SELECT id, conversation_id FROM messages WHERE id IN (");
                let mut list = q.separated(", ");
                for r in chunk {
                    list.push_bind(*r);
                }
                q.push(")");
                for row in q.build().fetch_all(&mut *tx).await? {
                    reply_in.insert(row.try_get("id")?, row.try_get("conversation_id")?);
                }
            }

            // Which messages this transaction takes: the rest go one by one.
            let mut accepted: Vec<usize> = Vec::new();
            let mut per_conversation: BTreeMap<Uuid, (i64, i64)> = BTreeMap::new();
            for (i, msg) in msgs.iter().enumerate() {
                let Some(conversation) = conversation_of[i] else { continue };
                let Some(people) = members.get(&conversation) else { continue };
                let member = people.iter().any(|(u, _)| *u == msg.sender);
                let blocked = msg.kind == "text" && people.iter().any(|(_, b)| *b);
                let reply_ok = msg.reply_to.is_none_or(|r| reply_in.get(&r.0) == Some(&conversation));
                if !member || blocked || !reply_ok || !stored.insert((msg.sender.0, msg.client_id.clone())) {
                    continue;
                }
                accepted.push(i);
                let entry = per_conversation.entry(conversation).or_insert((0, msg.now_ms));
                entry.0 += 1;
                entry.1 = entry.1.max(msg.now_ms);
            }
            if accepted.is_empty() {
                tx.rollback().await?;
                return Ok(vec![None; msgs.len()]);
            }

            // Sequence numbers: each conversation moves on by its count at once.
            let mut next_seq: HashMap<Uuid, i64> = HashMap::new();
            let counted: Vec<(Uuid, (i64, i64))> = per_conversation.into_iter().collect();
            for chunk in counted.chunks(ROWS_PER_STATEMENT) {
                let rows = if pg {
                    let rows: Vec<CountRow> =
                        chunk.iter().map(|(c, (n, at))| CountRow { id: *c, n: *n, at: Some(*at) }).collect();
                    sqlx::query(
                        "UPDATE conversations c SET last_seq = c.last_seq + t.n, last_message_at = t.at \
                         FROM json_to_recordset($1::json) AS t(id uuid, n bigint, at bigint) \
                         WHERE c.id = t.id RETURNING c.id, c.last_seq",
                    )
                    .bind(records(&rows)?)
                    .fetch_all(&mut *tx)
                    .await?
                } else {
                    let mut q = sqlx::QueryBuilder::new("UPDATE conversations SET last_seq = last_seq + CASE id");
                    for (c, (n, _)) in chunk {
                        q.push(" WHEN ").push_bind(*c).push(" THEN ").push_bind(*n);
                    }
                    q.push(" END, last_message_at = CASE id");
                    for (c, (_, at)) in chunk {
                        q.push(" WHEN ").push_bind(*c).push(" THEN ").push_bind(*at);
                    }
                    q.push(" END WHERE id IN (");
                    let mut list = q.separated(", ");
                    for (c, _) in chunk {
                        list.push_bind(*c);
                    }
                    q.push(") RETURNING id, last_seq");
                    q.build().fetch_all(&mut *tx).await?
                };
                for row in rows {
                    let id: Uuid = row.try_get("id")?;
                    let last: i64 = row.try_get("last_seq")?;
                    let n = chunk.iter().find(|(c, _)| *c == id).map_or(0, |(_, (n, _))| *n);
                    next_seq.insert(id, last - n + 1);
                }
            }
            let mut seq_of: HashMap<usize, i64> = HashMap::new();
            for &i in &accepted {
                let Some(conversation) = conversation_of[i] else { continue };
                // A conversation deleted since it was read: none of this batch is stored.
                let next = next_seq.get_mut(&conversation).ok_or(StoreError::NotMember)?;
                seq_of.insert(i, *next);
                *next += 1;
            }

            for chunk in accepted.chunks(ROWS_PER_STATEMENT) {
                // A retry that another transaction stored in the meantime fails the
                // whole batch; the caller then stores each message alone.
                if pg {
                    let rows: Vec<MessageRow> = chunk
                        .iter()
                        .map(|&i| {
                            let msg = &msgs[i];
                            MessageRow {
                                id: ids[i].0,
                                conversation_id: conversation_of[i],
                                seq: seq_of.get(&i).copied(),
                                sender_id: msg.sender.0,
                                client_id: &msg.client_id,
                                kind: msg.kind,
                                body: &msg.body,
                                reply_to: msg.reply_to.map(|r| r.0),
                                attachment_id: msg.attachment.as_ref().map(|a| a.id),
                                attachment: msg.attachment.as_ref().and_then(|a| serde_json::to_string(a).ok()),
                                created_at: msg.now_ms,
                            }
                        })
                        .collect();
                    sqlx::query(
                        "INSERT INTO messages \
                         (id, conversation_id, seq, sender_id, client_id, kind, body, reply_to, attachment_id, attachment, created_at) \
                         SELECT * FROM json_to_recordset($1::json) AS t(id uuid, conversation_id uuid, seq bigint, \
                         sender_id uuid, client_id text, kind text, body text, reply_to uuid, attachment_id uuid, \
                         attachment text, created_at bigint)",
                    )
                    .bind(records(&rows)?)
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO messages \
                     (id, conversation_id, seq, sender_id, client_id, kind, body, reply_to, attachment_id, attachment, created_at) ",
                );
                q.push_values(chunk, |mut row, &i| {
                    let msg = &msgs[i];
                    row.push_bind(ids[i].0)
                        .push_bind(conversation_of[i])
                        .push_bind(seq_of.get(&i).copied())
                        .push_bind(msg.sender.0)
                        .push_bind(msg.client_id.as_str())
                        .push_bind(msg.kind)
                        .push_bind(msg.body.as_str())
                        .push_bind(msg.reply_to.map(|r| r.0))
                        .push_bind(msg.attachment.as_ref().map(|a| a.id))
                        .push_bind(msg.attachment.as_ref().and_then(|a| serde_json::to_string(a).ok()))
                        .push_bind(msg.now_ms);
                });
                q.build().execute(&mut *tx).await?;
            }

            // Every member's log moves on by the number of its events at once, rows locked in id order.
            let mut events_of: BTreeMap<UserId, i64> = BTreeMap::new();
            for &i in &accepted {
                if let Some(people) = conversation_of[i].and_then(|c| members.get(&c)) {
                    for (user, _) in people {
                        *events_of.entry(*user).or_default() += 1;
                    }
                }
            }
            let counted: Vec<(UserId, i64)> = events_of.into_iter().collect();
            let mut next_event: HashMap<UserId, i64> = HashMap::new();
            for chunk in counted.chunks(ROWS_PER_STATEMENT) {
                lock_rows!(tx, "users", chunk.iter().map(|(u, _)| u.0));
                let rows = if pg {
                    let rows: Vec<CountRow> =
                        chunk.iter().map(|(u, n)| CountRow { id: u.0, n: *n, at: None }).collect();
                    sqlx::query(
                        "UPDATE users u SET last_event_seq = u.last_event_seq + t.n \
                         FROM json_to_recordset($1::json) AS t(id uuid, n bigint) \
                         WHERE u.id = t.id RETURNING u.id, u.last_event_seq",
                    )
                    .bind(records(&rows)?)
                    .fetch_all(&mut *tx)
                    .await?
                } else {
                    let mut q = sqlx::QueryBuilder::new("UPDATE users SET last_event_seq = last_event_seq + CASE id");
                    for (u, n) in chunk {
                        q.push(" WHEN ").push_bind(u.0).push(" THEN ").push_bind(*n);
                    }
                    q.push(" END WHERE id IN (");
                    let mut list = q.separated(", ");
                    for (u, _) in chunk {
                        list.push_bind(u.0);
                    }
                    q.push(") RETURNING id, last_event_seq");
                    q.build().fetch_all(&mut *tx).await?
                };
                for row in rows {
                    let user = UserId(row.try_get("id")?);
                    let last: i64 = row.try_get("last_event_seq")?;
                    let n = chunk.iter().find(|(u, _)| *u == user).map_or(0, |(_, n)| *n);
                    next_event.insert(user, last - n + 1);
                }
            }
            let mut deliveries: HashMap<usize, Vec<(UserId, i64)>> = HashMap::new();
            let mut events: Vec<(usize, UserId, i64)> = Vec::new();
            for &i in &accepted {
                let people = conversation_of[i].and_then(|c| members.get(&c)).map_or(&[][..], Vec::as_slice);
                let mut taken = Vec::with_capacity(people.len());
                for (user, _) in people {
                    let next = next_event.get_mut(user).ok_or(StoreError::MissingReference)?;
                    taken.push((*user, *next));
                    events.push((i, *user, *next));
                    *next += 1;
                }
                deliveries.insert(i, taken);
            }
            for chunk in events.chunks(ROWS_PER_STATEMENT) {
                if pg {
                    let rows: Vec<EventRow> = chunk
                        .iter()
                        .map(|(i, user, seq)| EventRow {
                            user_id: user.0,
                            seq: *seq,
                            conversation_id: conversation_of[*i],
                            message_id: ids[*i].0,
                            created_at: msgs[*i].now_ms,
                        })
                        .collect();
                    sqlx::query(
                        "INSERT INTO user_events (user_id, seq, kind, conversation_id, message_id, body, created_at) \
                         SELECT user_id, seq, 'message', conversation_id, message_id, '{}', created_at \
                         FROM json_to_recordset($1::json) \
                         AS t(user_id uuid, seq bigint, conversation_id uuid, message_id uuid, created_at bigint)",
                    )
                    .bind(records(&rows)?)
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO user_events (user_id, seq, kind, conversation_id, message_id, body, created_at) ",
                );
                q.push_values(chunk, |mut row, (i, user, seq)| {
                    row.push_bind(user.0)
                        .push_bind(*seq)
                        .push_bind("message")
                        .push_bind(conversation_of[*i])
                        .push_bind(ids[*i].0)
                        .push_bind("{}")
                        .push_bind(msgs[*i].now_ms);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;

            let mut out: Vec<Option<Stored<Posted>>> = vec![None; msgs.len()];
            for &i in &accepted {
                let (Some(conversation), Some(&seq)) = (conversation_of[i], seq_of.get(&i)) else { continue };
                let message = msgs[i].stored(ids[i], ConversationId(conversation), seq);
                out[i] = Some(Stored::New(Posted { message, deliveries: deliveries.remove(&i).unwrap_or_default() }));
            }
            Ok(out)
        })
    }
}
