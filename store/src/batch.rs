//! Many messages in one transaction: what a busy bridge stores. The result is
//! the same as storing them one by one in order. Each statement is a wait for the
//! database (a round trip to PostgreSQL, a hand-over to SQLite's connection
//! thread), and on a busy machine those waits are most of a batch's time, so:
//! - on PostgreSQL a batch is one call of the `store_message_batch` function
//!   (migration 0005), one round trip; a large batch whose messages fall into
//!   groups of people who share no conversation is two calls at once, one per
//!   part, on two connections, so that the database works on it with two cores;
//! - on SQLite it is two hand-overs: `BEGIN IMMEDIATE` with everything the batch
//!   reads, then everything it writes with `COMMIT` (each several statements
//!   sent at once).
//!
//! Both are worth it for a single message too (about ten statements alone).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures_util::future::join_all;
use parley_wire::{ConversationId, MessageId, UserId};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Column, QueryBuilder, Row};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::backend::{begin_writing, Backend};
use crate::conversations::direct_key;
use crate::{NewMessage, Posted, Store, StoreError, Stored, Target};

/// Rows per multi-row statement, well under SQLite's bound-parameter limit.
const ROWS_PER_STATEMENT: usize = 1000;

/// (sender, client id) pairs per ORed lookup on SQLite, whose expression trees
/// are at most 1,000 deep (a longer chain of ORs fails the whole batch).
const PAIRS_PER_STATEMENT: usize = 250;

/// What [`Store::store_messages`] did: one result per message, in order, and how
/// many of them were stored in the shared transaction.
#[derive(Debug)]
pub struct Batched {
    pub results: Vec<Result<Stored<Posted>, StoreError>>,
    pub together: usize,
}

/// A batch's place among batches stored one after another: it waits for the end
/// of the previous batch's storing before it stores, and ends its own once all of
/// it is stored. Dropped unended (a batch that failed before storing), it ends
/// too.
#[derive(Debug, Default)]
pub struct Turn {
    after: Option<oneshot::Receiver<()>>,
    ends: Option<oneshot::Sender<()>>,
}

/// The end of a [`Turn`], for the turn after it.
#[derive(Debug)]
pub struct TurnEnd(oneshot::Receiver<()>);

impl Turn {
    /// The turn after `previous` (none: at once), and its end.
    pub fn after(previous: Option<TurnEnd>) -> (Turn, TurnEnd) {
        let (ends, end) = oneshot::channel();
        (Turn { after: previous.map(|p| p.0), ends: Some(ends) }, TurnEnd(end))
    }

    async fn wait(&mut self) {
        if let Some(previous) = self.after.take() {
            let _ = previous.await;
        }
    }

    fn end(&mut self) {
        if let Some(ends) = self.ends.take() {
            let _ = ends.send(());
        }
    }
}

impl TurnEnd {
    /// Waits for the turn to end: true once its batch is stored, false when it
    /// was dropped first.
    pub async fn stored(self) -> bool {
        self.0.await.is_ok()
    }
}

/// What the shared transaction stored: `None` for the messages left to the
/// one-by-one path.
type Together = Vec<Option<Stored<Posted>>>;

impl Store {
    /// Stores `msgs` as [`Store::store_message`] would one after another, and
    /// answers each in order. The ones that store something (the first message of
    /// a 1:1 conversation included) share one transaction (on PostgreSQL, a large
    /// batch of 1:1 messages one per part, and parts share no conversation and no
    /// person), so every number and every member's log is what storing them one
    /// by one would give. Retries and refusals store nothing and are answered one
    /// by one after it, each exactly as it would be alone; so is the whole batch
    /// (or part) if its transaction fails.
    pub async fn store_messages(&self, msgs: &[NewMessage]) -> Batched {
        self.store_messages_in_turn(msgs, Turn::default()).await
    }

    /// [`Store::store_messages`] in its `turn`, which ends as soon as every message
    /// is stored or refused, before the answers are made. The batch is made ready
    /// to send first (on PostgreSQL its arrays encoded), so a caller that gives
    /// each batch the turn after the previous one keeps the database busy with
    /// one batch after another, and its messages stored in the order of the
    /// batches, the ones left to the one-by-one path included.
    #[tracing::instrument(skip_all, fields(messages = msgs.len()))]
    pub async fn store_messages_in_turn(&self, msgs: &[NewMessage], mut turn: Turn) -> Batched {
        let mut done: Together = vec![None; msgs.len()];
        // One round trip (two on SQLite), against about ten for a message alone:
        // worth it for a single message too.
        let together = match &self.backend {
            Backend::Postgres(pool) if !msgs.is_empty() => Some(store_together_pg(pool, msgs, &mut turn).await),
            Backend::Sqlite(pool) if !msgs.is_empty() => {
                turn.wait().await;
                Some(store_together_sqlite(pool, msgs).await)
            }
            _ => {
                turn.wait().await;
                None
            }
        };
        match together {
            Some(Ok(together)) => done = together,
            Some(Err(e)) => tracing::warn!(error = %e, "batch fell back to one message at a time"),
            None => {}
        }
        let together = done.iter().filter(|d| d.is_some()).count();
        if together == msgs.len() {
            turn.end();
        }
        let mut results = Vec::with_capacity(msgs.len());
        for (msg, stored) in msgs.iter().zip(done) {
            results.push(match stored {
                Some(stored) => Ok(stored),
                None => self.store_message(msg).await,
            });
        }
        turn.end();
        Batched { results, together }
    }
}

/// The batch on PostgreSQL: one call of `store_message_batch`, or, for a large
/// batch whose messages fall into groups of people who share no conversation,
/// one call per part at once, each on its own connection (see [`parts`]); sent in
/// its turn. A part that fails leaves its messages to the one-by-one path, as a
/// whole batch that fails does.
async fn store_together_pg(pool: &PgPool, msgs: &[NewMessage], turn: &mut Turn) -> Result<Together, StoreError> {
    let parts = parts(msgs, PARTS);
    let calls: Vec<PgCall> = parts.iter().map(|part| PgCall::new(part.iter().map(|&i| &msgs[i]).collect())).collect();
    // The connections are taken after the turn: one held while waiting could be
    // the one the batch before needs (a pool of one or two).
    turn.wait().await;
    let called = std::time::Instant::now();
    let mut stored = join_all(calls.into_iter().map(|call| call.run(pool))).await;
    tracing::debug!(
        messages = msgs.len(),
        parts = parts.len(),
        ms = called.elapsed().as_secs_f64() * 1e3,
        "batch call"
    );
    if parts.len() == 1 {
        if let Some(whole) = stored.pop() {
            return whole;
        }
    }
    let mut out: Together = vec![None; msgs.len()];
    for (part, stored) in parts.into_iter().zip(stored) {
        match stored {
            Ok(stored) => part.into_iter().zip(stored).for_each(|(i, s)| out[i] = s),
            Err(e) => {
                tracing::warn!(error = %e, messages = part.len(), "part of a batch fell back to one message at a time")
            }
        }
    }
    Ok(out)
}

/// The parts a large batch is stored in at once on PostgreSQL, at most. At
/// `--rate 10000` on two cores, three rounds each, interleaved: one part 7,300–8,841
/// messages a second, two 8,860–9,783, three 8,606–10,017, four 9,093–9,854
/// (docs/benchmarks.md, session 14): two take the gain.
const PARTS: usize = 2;

/// The fewest messages a batch holds for [`parts`] to split it: below, a second
/// call costs about what it saves (a call's fixed cost is about 1.7 ms).
const PARTS_FROM: usize = 128;

/// The batch's messages (indices, in order) in up to `wanted` parts that can be
/// stored at once, each on its own connection, with the same result as one after
/// the other: no conversation, and so no person's log, has messages in two
/// parts. Split only when every message goes to a person (a 1:1 conversation has
/// those two members and no other; a group's members are not known before it is
/// read), and only when each part holds at least a quarter of an even share.
fn parts(msgs: &[NewMessage], wanted: usize) -> Vec<Vec<usize>> {
    let whole = || vec![(0..msgs.len()).collect()];
    if msgs.len() < PARTS_FROM || wanted < 2 {
        return whole();
    }
    // People joined by a 1:1 message of the batch (union-find over their indices).
    let mut person: HashMap<UserId, usize> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut index = |u: UserId, parent: &mut Vec<usize>| {
        *person.entry(u).or_insert_with(|| {
            parent.push(parent.len());
            parent.len() - 1
        })
    };
    let mut groups = Vec::with_capacity(msgs.len());
    for m in msgs {
        let Target::Direct(to) = m.target else { return whole() };
        let (a, b) = (index(m.sender, &mut parent), index(to, &mut parent));
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        parent[ra] = rb;
        groups.push(a);
    }
    // Each group's messages, the largest groups first, each to the smallest part.
    let mut sizes: HashMap<usize, usize> = HashMap::new();
    for g in &mut groups {
        *g = root(&mut parent, *g);
        *sizes.entry(*g).or_default() += 1;
    }
    let mut by_size: Vec<(usize, usize)> = sizes.into_iter().collect();
    by_size.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut lengths = vec![0; wanted];
    let mut part_of: HashMap<usize, usize> = HashMap::new();
    for (group, size) in by_size {
        let smallest = (0..wanted).min_by_key(|&p| lengths[p]).unwrap_or(0);
        lengths[smallest] += size;
        part_of.insert(group, smallest);
    }
    if lengths.iter().min().copied().unwrap_or(0) < msgs.len() / (4 * wanted) {
        return whole();
    }
    let mut parts = vec![Vec::new(); wanted];
    for (i, g) in groups.into_iter().enumerate() {
        parts[part_of[&g]].push(i);
    }
    parts
}

/// One call of `store_message_batch`: the messages' columns as arrays.
struct PgCall<'m> {
    msgs: Vec<&'m NewMessage>,
    ids: Vec<MessageId>,
    query: sqlx::query::Query<'m, sqlx::Postgres, sqlx::postgres::PgArguments>,
}

impl<'m> PgCall<'m> {
    fn new(msgs: Vec<&'m NewMessage>) -> PgCall<'m> {
        let ids: Vec<MessageId> = msgs.iter().map(|_| MessageId::new()).collect();
        let recipient = |m: &NewMessage| match m.target {
            Target::Direct(to) => Some(to),
            Target::Conversation(_) => None,
        };
        let query = sqlx::query(
            "SELECT n, conversation_id, seq, user_id, event_seq \
             FROM store_message_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(ids.iter().map(|id| id.0).collect::<Vec<Uuid>>())
        .bind(msgs.iter().map(|m| m.sender.0).collect::<Vec<Uuid>>())
        .bind(msgs.iter().map(|m| recipient(m).map(|to| to.0)).collect::<Vec<Option<Uuid>>>())
        .bind(msgs.iter().map(|m| recipient(m).map(|to| direct_key(m.sender, to))).collect::<Vec<Option<String>>>())
        .bind(
            msgs.iter()
                .map(|m| match m.target {
                    Target::Conversation(c) => Some(c.0),
                    Target::Direct(_) => None,
                })
                .collect::<Vec<Option<Uuid>>>(),
        )
        .bind(msgs.iter().map(|m| m.client_id.as_str()).collect::<Vec<&str>>())
        .bind(msgs.iter().map(|m| m.kind).collect::<Vec<&str>>())
        .bind(msgs.iter().map(|m| m.body.as_str()).collect::<Vec<&str>>())
        .bind(msgs.iter().map(|m| m.reply_to.map(|r| r.0)).collect::<Vec<Option<Uuid>>>())
        .bind(msgs.iter().map(|m| m.attachment.as_ref().map(|a| a.id)).collect::<Vec<Option<Uuid>>>())
        .bind(msgs.iter().map(|m| m.attachment_json()).collect::<Vec<Option<String>>>())
        .bind(msgs.iter().map(|m| m.now_ms).collect::<Vec<i64>>())
        .bind(msgs.iter().map(|_| Uuid::now_v7()).collect::<Vec<Uuid>>());
        PgCall { msgs, ids, query }
    }

    /// Sends the call and reads what it stored, one entry per message.
    async fn run(self, pool: &PgPool) -> Result<Together, StoreError> {
        let PgCall { msgs, ids, query } = self;
        let rows = query.fetch_all(pool).await?;
        // One row per member of each stored message, ordered by message.
        let mut out: Together = vec![None; msgs.len()];
        let mut current: Option<(usize, Posted)> = None;
        for row in rows {
            let i = usize::try_from(row.try_get::<i32, _>("n")? - 1).map_err(|_| StoreError::MissingReference)?;
            let msg = msgs.get(i).ok_or(StoreError::MissingReference)?;
            let member = (UserId(row.try_get("user_id")?), row.try_get("event_seq")?);
            match &mut current {
                Some((at, posted)) if *at == i => posted.deliveries.push(member),
                _ => {
                    if let Some((at, posted)) = current.take() {
                        out[at] = Some(Stored::New(posted));
                    }
                    let conversation = ConversationId(row.try_get("conversation_id")?);
                    let message = msg.stored(ids[i], conversation, row.try_get("seq")?);
                    current = Some((i, Posted { message, deliveries: vec![member] }));
                }
            }
        }
        if let Some((at, posted)) = current {
            out[at] = Some(Stored::New(posted));
        }
        Ok(out)
    }
}

/// What the batch reads on SQLite once it holds the write lock.
#[derive(Default)]
struct Read {
    /// Each 1:1 conversation found, by its pair's key.
    by_key: HashMap<String, Uuid>,
    /// Members (and whether they blocked) of each conversation. A conversation
    /// may be read twice (named by id and by its pair), its members once.
    members: HashMap<Uuid, BTreeMap<UserId, bool>>,
    /// (sender, client id) pairs already stored: retries.
    stored: HashSet<(Uuid, String)>,
    /// The conversation of each message answered.
    reply_in: HashMap<Uuid, Uuid>,
    /// Each conversation's last message number.
    last_seq: HashMap<Uuid, i64>,
    /// Each member's (and each 1:1 pair's person's) last event number.
    last_event: HashMap<UserId, i64>,
}

impl Read {
    /// Files one row of the read query, told apart by its first column's name.
    fn file(&mut self, row: &SqliteRow) -> Result<(), StoreError> {
        match row.columns().first().map(|c| c.name()) {
            Some("member_of") => {
                self.members
                    .entry(row.try_get("member_of")?)
                    .or_default()
                    .insert(UserId(row.try_get("user_id")?), row.try_get("blocked")?);
            }
            Some("sender_id") => {
                self.stored.insert((row.try_get("sender_id")?, row.try_get("client_id")?));
            }
            Some("reply") => {
                self.reply_in.insert(row.try_get("reply")?, row.try_get("reply_in")?);
            }
            Some("conversation") => {
                let id: Uuid = row.try_get("conversation")?;
                self.last_seq.insert(id, row.try_get("last_seq")?);
                if let Some(key) = row.try_get::<Option<String>, _>("direct_key")? {
                    self.by_key.insert(key, id);
                }
            }
            Some("member") => {
                self.last_event.insert(UserId(row.try_get("member")?), row.try_get("last_event_seq")?);
            }
            _ => return Err(StoreError::MissingReference),
        }
        Ok(())
    }
}

/// Pushes `list` as `(?, ?, …)` to `q`.
fn push_list<'a, T>(q: &mut QueryBuilder<'a, Sqlite>, list: impl IntoIterator<Item = T>)
where
    T: 'a + sqlx::Encode<'a, Sqlite> + sqlx::Type<Sqlite>,
{
    q.push("(");
    let mut items = q.separated(", ");
    for item in list {
        items.push_bind(item);
    }
    q.push(")");
}

/// A pooled SQLite connection in a transaction begun by hand (`BEGIN IMMEDIATE`
/// sent with the batch's reads). Dropped before the transaction ended (an error
/// that `ROLLBACK` could not clear, or a cancelled future), it is closed rather
/// than handed back to the pool mid-transaction.
struct Writing {
    conn: PoolConnection<Sqlite>,
    open: bool,
}

impl Drop for Writing {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// The batch on SQLite: what it can store, in one transaction of two hand-overs
/// to the connection's thread.
async fn store_together_sqlite(pool: &SqlitePool, msgs: &[NewMessage]) -> Result<Together, StoreError> {
    let mut writing = Writing { conn: pool.acquire().await?, open: true };
    let result = store_together_sqlite_in(&mut writing.conn, pool, msgs).await;
    if let Ok(Some(_)) = result {
        writing.open = false;
    } else {
        // Nothing to store, or a failure: whatever transaction is open ends here. A
        // `ROLLBACK` that fails (none was open, as when `BEGIN` itself timed out)
        // leaves the connection's state unknown, so it is closed.
        writing.open = sqlx::query("ROLLBACK").execute(&mut *writing.conn).await.is_err();
    }
    result.map(|out| out.unwrap_or_else(|| vec![None; msgs.len()]))
}

/// The batch's two queries on `conn`: `BEGIN IMMEDIATE` and everything it reads,
/// then everything it writes and `COMMIT`. `None`: nothing to store, the
/// transaction is left for the caller to end.
async fn store_together_sqlite_in(
    conn: &mut SqliteConnection,
    pool: &SqlitePool,
    msgs: &[NewMessage],
) -> Result<Option<Together>, StoreError> {
    let ids: Vec<MessageId> = msgs.iter().map(|_| MessageId::new()).collect();
    let now_ms = msgs.iter().map(|m| m.now_ms).min().unwrap_or_default();
    // Each 1:1 pair's key, with the two people (sender first).
    let mut pairs: BTreeMap<String, (UserId, UserId)> = BTreeMap::new();
    for m in msgs {
        if let Target::Direct(to) = m.target {
            if to != m.sender {
                pairs.entry(direct_key(m.sender, to)).or_insert((m.sender, to));
            }
        }
    }
    let targets: Vec<Uuid> = msgs
        .iter()
        .filter_map(|m| match m.target {
            Target::Conversation(c) => Some(c.0),
            Target::Direct(_) => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let keys: Vec<&str> = pairs.keys().map(String::as_str).collect();
    let people: Vec<Uuid> = pairs.values().flat_map(|(a, b)| [a.0, b.0]).collect::<BTreeSet<_>>().into_iter().collect();

    // The write lock, then everything the batch reads: the conversations named
    // (by id, or by their pair's key), their members and the numbers they
    // continue, the pairs' people (a recipient not found does not exist),
    // retries and answered messages.
    let mut q = QueryBuilder::new(begin_writing(pool));
    q.push("; ");
    for chunk in targets.chunks(ROWS_PER_STATEMENT) {
        push_conversation_reads(&mut q, "id", chunk);
    }
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        push_conversation_reads(&mut q, "direct_key", chunk);
    }
    for chunk in people.chunks(ROWS_PER_STATEMENT) {
        q.push("SELECT id AS member, last_event_seq FROM users WHERE id IN ");
        push_list(&mut q, chunk.iter().copied());
        q.push("; ");
    }
    for chunk in msgs.chunks(PAIRS_PER_STATEMENT) {
        q.push("SELECT sender_id, client_id FROM messages WHERE ");
        for (n, m) in chunk.iter().enumerate() {
            q.push(if n == 0 { "(sender_id = " } else { " OR (sender_id = " });
            q.push_bind(m.sender.0).push(" AND client_id = ").push_bind(m.client_id.as_str()).push(")");
        }
        q.push("; ");
    }
    let replies: Vec<Uuid> = msgs.iter().filter_map(|m| m.reply_to.map(|r| r.0)).collect();
    for chunk in replies.chunks(ROWS_PER_STATEMENT) {
        q.push("SELECT id AS reply, conversation_id AS reply_in FROM messages WHERE id IN ");
        push_list(&mut q, chunk.iter().copied());
        q.push("; ");
    }
    let mut read = Read::default();
    for row in q.build().fetch_all(&mut *conn).await? {
        read.file(&row)?;
    }

    // Pairs without a conversation get one, with both members (the first message
    // of a 1:1 conversation), unless the recipient does not exist: that message
    // is answered alone. This transaction holds the one write lock: nobody makes
    // one meanwhile.
    let mut made: Vec<(Uuid, &str, UserId, UserId)> = Vec::new();
    for (key, &(from, to)) in &pairs {
        if read.by_key.contains_key(key) || !read.last_event.contains_key(&to) {
            continue;
        }
        let id = Uuid::now_v7();
        made.push((id, key, from, to));
        read.by_key.insert(key.clone(), id);
        read.last_seq.insert(id, 0);
        read.members.insert(id, BTreeMap::from([(from, false), (to, false)]));
    }
    let conversation_of: Vec<Option<Uuid>> = msgs
        .iter()
        .map(|m| match m.target {
            Target::Direct(to) => read.by_key.get(&direct_key(m.sender, to)).copied(),
            Target::Conversation(c) => Some(c.0),
        })
        .collect();

    // Which messages this transaction takes, and their numbers; the rest go one by one.
    let mut accepted: Vec<(usize, Uuid, i64)> = Vec::new();
    let mut conversation_at: BTreeMap<Uuid, i64> = BTreeMap::new();
    for (i, msg) in msgs.iter().enumerate() {
        let Some(conversation) = conversation_of[i] else { continue };
        let (Some(people), Some(last)) = (read.members.get(&conversation), read.last_seq.get_mut(&conversation)) else {
            continue;
        };
        let member = people.contains_key(&msg.sender);
        let blocked = msg.kind == "text" && people.values().any(|blocked| *blocked);
        let reply_ok = msg.reply_to.is_none_or(|r| read.reply_in.get(&r.0) == Some(&conversation));
        if !member || blocked || !reply_ok || !read.stored.insert((msg.sender.0, msg.client_id.clone())) {
            continue;
        }
        *last += 1;
        accepted.push((i, conversation, *last));
        let at = conversation_at.entry(conversation).or_insert(msg.now_ms);
        *at = (*at).max(msg.now_ms);
    }
    if accepted.is_empty() {
        return Ok(None);
    }
    // Every member's log moves on by one per message.
    let mut deliveries: HashMap<usize, Vec<(UserId, i64)>> = HashMap::new();
    let mut events: Vec<(usize, UserId, i64)> = Vec::new();
    let mut touched: BTreeMap<UserId, i64> = BTreeMap::new();
    for &(i, conversation, _) in &accepted {
        let people = read.members.get(&conversation).map(BTreeMap::keys).into_iter().flatten();
        let mut taken = Vec::new();
        for user in people {
            let last = read.last_event.get_mut(user).ok_or(StoreError::MissingReference)?;
            *last += 1;
            taken.push((*user, *last));
            events.push((i, *user, *last));
            touched.insert(*user, *last);
        }
        deliveries.insert(i, taken);
    }

    // Everything it writes, and the commit, in one go.
    let mut q = QueryBuilder::new("");
    for chunk in made.chunks(ROWS_PER_STATEMENT) {
        q.push("INSERT INTO conversations (id, kind, direct_key, audience, created_by, last_seq, created_at) ");
        q.push_values(chunk, |mut row, &(id, key, from, _)| {
            row.push_bind(id)
                .push_bind("direct")
                .push_bind(key)
                .push_bind("user_user")
                .push_bind(from.0)
                .push_bind(0_i64)
                .push_bind(now_ms);
        });
        q.push("; INSERT INTO conversation_members (conversation_id, user_id, role, joined_at) ");
        q.push_values(chunk.iter().flat_map(|&(id, _, from, to)| [(id, from), (id, to)]), |mut row, (id, user)| {
            row.push_bind(id).push_bind(user.0).push_bind("member").push_bind(now_ms);
        });
        q.push("; ");
    }
    let numbered: Vec<(Uuid, i64, i64)> = conversation_at.iter().map(|(c, at)| (*c, read.last_seq[c], *at)).collect();
    for chunk in numbered.chunks(ROWS_PER_STATEMENT) {
        q.push("UPDATE conversations SET last_seq = CASE id");
        for (c, last, _) in chunk {
            q.push(" WHEN ").push_bind(*c).push(" THEN ").push_bind(*last);
        }
        q.push(" END, last_message_at = CASE id");
        for (c, _, at) in chunk {
            q.push(" WHEN ").push_bind(*c).push(" THEN ").push_bind(*at);
        }
        q.push(" END WHERE id IN ");
        push_list(&mut q, chunk.iter().map(|(c, _, _)| *c));
        q.push("; ");
    }
    for chunk in accepted.chunks(ROWS_PER_STATEMENT) {
        q.push(
            "INSERT INTO messages \
             (id, conversation_id, seq, sender_id, client_id, kind, body, reply_to, attachment_id, attachment, created_at) ",
        );
        q.push_values(chunk, |mut row, &(i, conversation, seq)| {
            let msg = &msgs[i];
            row.push_bind(ids[i].0)
                .push_bind(conversation)
                .push_bind(seq)
                .push_bind(msg.sender.0)
                .push_bind(msg.client_id.as_str())
                .push_bind(msg.kind)
                .push_bind(msg.body.as_str())
                .push_bind(msg.reply_to.map(|r| r.0))
                .push_bind(msg.attachment.as_ref().map(|a| a.id))
                .push_bind(msg.attachment_json())
                .push_bind(msg.now_ms);
        });
        q.push("; ");
    }
    let touched: Vec<(UserId, i64)> = touched.into_iter().collect();
    for chunk in touched.chunks(ROWS_PER_STATEMENT) {
        q.push("UPDATE users SET last_event_seq = CASE id");
        for (u, last) in chunk {
            q.push(" WHEN ").push_bind(u.0).push(" THEN ").push_bind(*last);
        }
        q.push(" END WHERE id IN ");
        push_list(&mut q, chunk.iter().map(|(u, _)| u.0));
        q.push("; ");
    }
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        q.push("INSERT INTO user_events (user_id, seq, kind, conversation_id, message_id, body, created_at) ");
        q.push_values(chunk, |mut row, &(i, user, seq)| {
            row.push_bind(user.0)
                .push_bind(seq)
                .push_bind("message")
                .push_bind(conversation_of[i])
                .push_bind(ids[i].0)
                .push_bind("{}")
                .push_bind(msgs[i].now_ms);
        });
        q.push("; ");
    }
    // A retry stored by the one-by-one path meanwhile cannot happen (one writer);
    // any failure here fails the whole batch (the caller rolls it back), which is
    // then stored one by one.
    q.push("COMMIT");
    q.build().execute(&mut *conn).await?;

    let mut out: Together = vec![None; msgs.len()];
    for (i, conversation, seq) in accepted {
        let message = msgs[i].stored(ids[i], ConversationId(conversation), seq);
        out[i] = Some(Stored::New(Posted { message, deliveries: deliveries.remove(&i).unwrap_or_default() }));
    }
    Ok(Some(out))
}

/// Pushes the reads of the conversations whose `column` (`id` or `direct_key`)
/// is in `list`: each conversation, its members, and their event numbers.
fn push_conversation_reads<'a, T>(q: &mut QueryBuilder<'a, Sqlite>, column: &str, list: &'a [T])
where
    T: 'a + Copy + sqlx::Encode<'a, Sqlite> + sqlx::Type<Sqlite>,
{
    q.push(format_args!("SELECT id AS conversation, last_seq, direct_key FROM conversations WHERE {column} IN "));
    push_list(q, list.iter().copied());
    q.push(format_args!(
        "; SELECT conversation_id AS member_of, user_id, blocked FROM conversation_members \
         WHERE conversation_id IN (SELECT id FROM conversations WHERE {column} IN "
    ));
    push_list(q, list.iter().copied());
    q.push(format_args!(
        "); SELECT id AS member, last_event_seq FROM users WHERE id IN (SELECT user_id FROM conversation_members \
         WHERE conversation_id IN (SELECT id FROM conversations WHERE {column} IN "
    ));
    push_list(q, list.iter().copied());
    q.push(")); ");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(sender: UserId, target: Target) -> NewMessage {
        crate::testing::text_message(sender, target, &Uuid::now_v7().to_string(), 1)
    }

    /// `count` messages going round `pairs` (each pair's two people write to each other).
    fn among(pairs: &[(UserId, UserId)], count: usize) -> Vec<NewMessage> {
        (0..count)
            .map(|k| {
                let (a, b) = pairs[k % pairs.len()];
                if (k / pairs.len()).is_multiple_of(2) {
                    to(a, Target::Direct(b))
                } else {
                    to(b, Target::Direct(a))
                }
            })
            .collect()
    }

    fn people(n: usize) -> Vec<(UserId, UserId)> {
        (0..n).map(|_| (UserId::new(), UserId::new())).collect()
    }

    /// The people of each part.
    fn who(msgs: &[NewMessage], parts: &[Vec<usize>]) -> Vec<HashSet<UserId>> {
        parts
            .iter()
            .map(|part| {
                part.iter()
                    .flat_map(|&i| match msgs[i].target {
                        Target::Direct(to) => vec![msgs[i].sender, to],
                        Target::Conversation(_) => vec![msgs[i].sender],
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn pairs_that_share_nobody_are_split_evenly_and_keep_their_order() {
        let msgs = among(&people(50), 1000);
        let parts = parts(&msgs, 2);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500]);
        let who = who(&msgs, &parts);
        assert!(who[0].is_disjoint(&who[1]), "nobody is in both parts");
        for part in &parts {
            assert!(part.windows(2).all(|w| w[0] < w[1]), "each part in the batch's order");
        }
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>(), "every message once");
    }

    #[test]
    fn people_linked_through_someone_stay_in_one_part() {
        // a–b, b–c, c–d … : one chain, whatever the batch's size.
        let chain: Vec<UserId> = (0..20).map(|_| UserId::new()).collect();
        let pairs: Vec<(UserId, UserId)> = chain.windows(2).map(|w| (w[0], w[1])).collect();
        assert_eq!(parts(&among(&pairs, 1000), 2).len(), 1);
        // Two chains linked by a single message are one group too.
        let mut msgs = among(&people(1), 300);
        msgs.extend(among(&people(1), 300));
        assert_eq!(parts(&msgs, 2).len(), 2);
        let (a, b) = (msgs[0].sender, msgs[599].sender);
        msgs.push(to(a, Target::Direct(b)));
        assert_eq!(parts(&msgs, 2).len(), 1, "{a} now links both pairs");
    }

    #[test]
    fn a_group_message_small_batch_or_lopsided_split_keeps_the_batch_whole() {
        let mut msgs = among(&people(50), 1000);
        msgs.push(to(msgs[0].sender, Target::Conversation(ConversationId::new())));
        assert_eq!(parts(&msgs, 2).len(), 1, "a group's members are not known before it is read");
        assert_eq!(parts(&among(&people(50), PARTS_FROM - 1), 2).len(), 1, "too small to be worth a second call");
        assert_eq!(parts(&among(&people(50), PARTS_FROM), 2).len(), 2);
        // One pair with 940 messages, 20 others with 3 each: the second part would hold 60.
        let mut msgs = among(&people(1), 940);
        msgs.extend(among(&people(20), 60));
        assert_eq!(parts(&msgs, 2).len(), 1, "a part of 60 in 1,000 is not worth a call");
        let mut msgs = among(&people(1), 860);
        msgs.extend(among(&people(20), 140));
        assert_eq!(parts(&msgs, 2).iter().map(Vec::len).collect::<Vec<_>>(), [860, 140]);
        assert_eq!(parts(&among(&people(50), 1000), 1).len(), 1, "one part wanted");
    }

    #[test]
    fn a_note_to_oneself_is_a_group_of_one() {
        let me = UserId::new();
        let mut msgs: Vec<NewMessage> = (0..200).map(|_| to(me, Target::Direct(me))).collect();
        msgs.extend(among(&people(10), 200));
        let parts = parts(&msgs, 2);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [200, 200]);
        assert_eq!(parts[0], (0..200).collect::<Vec<_>>());
    }
}
