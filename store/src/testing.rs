//! Fresh databases for tests: a temporary SQLite file, or a new database on the
//! PostgreSQL server named by `PARLEY_TEST_POSTGRES_URL`.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, Executor, PgConnection};

/// The variable that names the PostgreSQL server for the PostgreSQL test runs.
pub const POSTGRES_URL_VAR: &str = "PARLEY_TEST_POSTGRES_URL";

/// Generates one `#[tokio::test]` per backend for each listed async fn taking a
/// [`Backend`], in modules `sqlite` and `postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name($crate::testing::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name($crate::testing::Backend::Postgres).await })*
        }
    };
}

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test, deleted on drop: a SQLite file with its
/// directory, or a PostgreSQL database named `parley_test_*` (dropped even with
/// connections still open; one the server could not drop is named on stderr).
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the server's administrative URL and the database's name.
    server: Option<(String, String)>,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.server.take() else { return };
        // A test's runtime cannot wait for a future inside `drop`: a thread with
        // a runtime of its own drops the database.
        let shown = name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.ok()?;
                Some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: the test database {shown} was left on the server");
        }
    }
}

impl TestDatabase {
    /// A new empty database, or `None` (with a note on stderr) for PostgreSQL when
    /// the variable is unset.
    pub async fn create(backend: Backend) -> Option<TestDatabase> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("parley.db").display());
                Some(TestDatabase { url, _dir: Some(dir), server: None })
            }
            Backend::Postgres => {
                let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
                    eprintln!("skipped: set {POSTGRES_URL_VAR} to run the PostgreSQL variant");
                    return None;
                };
                static COUNTER: AtomicU32 = AtomicU32::new(0);
                let name = format!(
                    "parley_test_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    uuid::Uuid::new_v4().simple()
                );
                let mut admin = PgConnection::connect(&admin_url).await.expect("connect to the PostgreSQL test server");
                admin.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create test database");
                let (base, _) = admin_url.rsplit_once('/').expect("URL with a database name");
                Some(TestDatabase { url: format!("{base}/{name}"), _dir: None, server: Some((admin_url, name)) })
            }
        }
    }
}

/// A migrated [`Store`](crate::Store) on a fresh database of `backend` (keep the
/// [`TestDatabase`] alive as long as the store), or `None` when PostgreSQL is not configured.
pub async fn migrated_store(backend: Backend) -> Option<(crate::Store, TestDatabase)> {
    let db = TestDatabase::create(backend).await?;
    let store = crate::Store::connect(&db.url, 5).await.expect("connect");
    store.migrate().await.expect("migrate");
    Some((store, db))
}

/// A text message for tests: body `text {client_id}`, no reply, no attachment.
pub fn text_message(
    sender: parley_wire::UserId,
    target: crate::Target,
    client_id: &str,
    now_ms: i64,
) -> crate::NewMessage {
    crate::NewMessage {
        sender,
        target,
        client_id: client_id.into(),
        kind: "text",
        body: format!("text {client_id}"),
        reply_to: None,
        attachment: None,
        now_ms,
    }
}

/// A user to insert in tests: username `name`, `role`, no email or phone, a dummy hash.
pub fn new_user(name: &str, role: parley_wire::Role) -> crate::NewUser {
    crate::NewUser {
        id: parley_wire::UserId::new(),
        username: Some(name.to_string()),
        email: None,
        phone: None,
        display_name: None,
        password_hash: "hash".into(),
        role,
        created_at_ms: 1_000,
    }
}

/// The value of SQLite `PRAGMA {name}` on one of the store's connections; `None`
/// on PostgreSQL.
pub async fn sqlite_pragma(store: &crate::Store, name: &str) -> Option<i64> {
    use sqlx::Row;
    let crate::backend::Backend::Sqlite(pool) = &store.backend else { return None };
    let row = sqlx::query(&format!("PRAGMA {name}")).fetch_one(pool).await.expect("pragma");
    Some(row.try_get(0).expect("an integer"))
}
