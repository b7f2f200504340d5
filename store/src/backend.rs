//! Connecting, migrating and choosing the backend from the URL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::StoreError;

/// A connection pool to one of the two backends. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) backend: Backend,
}

#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same statement text against whichever pool the store holds. The body is
/// compiled once per backend, so row decoding is checked for both.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::backend::Backend::Sqlite($pool) => $body,
            $crate::backend::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// True inside a PostgreSQL transaction. Its locks are per row, so writers that
/// lock several rows of a table take them in id order; SQLite has one writer.
pub(crate) fn is_postgres<DB: sqlx::Database>(_: &sqlx::Transaction<'_, DB>) -> bool {
    DB::NAME == "PostgreSQL"
}

/// A list of ids as one comma-separated text parameter, for PostgreSQL's
/// `string_to_array($1, ',')::uuid[]`: the statement text stays the same whatever
/// the length, so it is prepared once per connection instead of once per length
/// (sqlx prepares an uncached statement in a round trip of its own).
pub(crate) fn id_list(ids: impl IntoIterator<Item = uuid::Uuid>) -> String {
    let mut out = String::new();
    for (n, id) in ids.into_iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
    }
    out
}

/// How a transaction that will write begins: SQLite takes its write lock at once
/// (a read that later upgrades fails when another connection wrote meanwhile).
pub(crate) fn begin_writing<DB: sqlx::Database>(_: &sqlx::Pool<DB>) -> &'static str {
    if DB::NAME == "SQLite" {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    }
}

/// A call of the batch function (migration 0005) with no messages: it stores
/// nothing, locks no row, holds no lock once answered, and plans its statements
/// up to the one that stores the messages, with the reference checks that
/// statement fires. The members' logs' two statements are planned by the first
/// batch that stores something.
const WARM_UP: &str = "SELECT count(*) FROM store_message_batch('{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', \
     '{}', '{}', '{}', '{}', '{}')";

/// Warms up a PostgreSQL connection ([`WARM_UP`]), if the migrations have made
/// the batch function yet (before they have, there is nothing to warm); true
/// when it did.
async fn warm(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    let made: bool =
        sqlx::query_scalar("SELECT to_regproc('store_message_batch') IS NOT NULL").fetch_one(&mut *conn).await?;
    if made {
        sqlx::query(WARM_UP).execute(&mut *conn).await?;
    }
    Ok(made)
}

/// [`warm`] for a connection the pool has just opened: a connection that could
/// not be warmed is usable all the same.
async fn warm_new_connection(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    if let Err(e) = warm(conn).await {
        tracing::debug!(error = %e, "new database connection not warmed up");
    }
    Ok(())
}

/// Copies the write-ahead log into the database file every second, without
/// waiting for readers or writers (a passive checkpoint), until the pool closes.
/// Done by the writers themselves, the copy and its sync held up whichever
/// transaction crossed the page count: at 1,000 messages a second, batches of a
/// few messages took 20–80 ms every so often (measured with parley-bench).
async fn checkpoint_every_second(pool: sqlx::SqlitePool) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
}

impl Store {
    /// Opens a pool for `url` (`sqlite://…` or `postgres://…`). SQLite files are created
    /// when missing and run in WAL mode with foreign keys enforced.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let max_connections = max_connections.max(1);
            // Every connection is opened at start and kept: a connection opened
            // when a batch needs it costs that batch the connect (12-15 ms, the
            // password exchange included) and the batch function's planning (about
            // 8 ms more than a warm call), and sqlx by default closes connections
            // idle for 10 minutes and all of them after 30. One closed (a failed
            // rollback) is replaced beside the writers, not in their way.
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .min_connections(max_connections)
                .max_lifetime(None)
                .idle_timeout(None)
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .after_connect(|conn, _| Box::pin(async move { warm_new_connection(conn).await }))
                .connect(url)
                .await?;
            Backend::Postgres(pool)
        } else {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                // Writes do not stop to copy the log into the database (every 1,000
                // pages by default): a task does it every second, beside them.
                .pragma("wal_autocheckpoint", "0");
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .connect_with(options)
                .await?;
            tokio::spawn(checkpoint_every_second(pool.clone()));
            Backend::Sqlite(pool)
        };
        Ok(Store { backend })
    }

    /// Opens every connection of the pool (PostgreSQL) and warms each one up:
    /// the batch function's statements planned, the tables it writes known to the
    /// connection. Called once the migrations have run; the connections opened
    /// before them could not be warmed. Returns how many connections it warmed
    /// (none on SQLite, whose connections are threads of this process).
    #[tracing::instrument(skip_all)]
    pub async fn warm_up(&self) -> Result<usize, StoreError> {
        let Backend::Postgres(pool) = &self.backend else { return Ok(0) };
        let all = pool.options().get_max_connections() as usize;
        // Held together, so that each acquire takes (or opens) another connection.
        let mut held = Vec::with_capacity(all);
        for _ in 0..all {
            held.push(pool.acquire().await?);
        }
        let mut warmed = 0;
        for conn in &mut held {
            warmed += usize::from(warm(conn).await?);
        }
        Ok(warmed)
    }

    /// True when write transactions run side by side (PostgreSQL, row locks).
    /// SQLite has one writer: the others wait for it, polling.
    pub fn concurrent_writers(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Applies the embedded migrations of this backend that have not run yet.
    #[tracing::instrument(skip_all)]
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool) => sqlx::migrate!("../migrations/sqlite").run(pool).await?,
            Backend::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// One round trip to the database, for readiness checks.
    #[tracing::instrument(skip_all)]
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await)
    }
}
