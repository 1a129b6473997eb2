//! Where a test's data lives: a temporary data dir, and — when `SWITCHBOARD_TEST_DATABASE_URL`
//! names a PostgreSQL server — a fresh database created for the test and dropped after it.
//! An unreachable PostgreSQL fails the test loudly; it is never skipped.

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tempfile::TempDir;

/// The variable that selects PostgreSQL for the whole suite.
pub const DATABASE_URL_VAR: &str = "SWITCHBOARD_TEST_DATABASE_URL";

/// This machine's PostgreSQL (trust auth).
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

pub struct TestData {
    pub dir: TempDir,
    db: Option<TestDb>,
}

/// A PostgreSQL database owned by one test.
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestData {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.is_empty() => Some(TestDb::create(url).await),
            _ => None,
        };
        TestData { dir, db }
    }

    /// Data on the embedded SQLite whatever the suite runs on (the source of a `copy`).
    pub fn sqlite() -> Self {
        TestData {
            dir: tempfile::tempdir().expect("temp dir"),
            db: None,
        }
    }

    /// Data on PostgreSQL whatever the suite runs on, for tests of what only PostgreSQL does
    /// (many nodes): the server of `SWITCHBOARD_TEST_DATABASE_URL`, else this machine's.
    pub async fn postgres() -> Self {
        let url = std::env::var(DATABASE_URL_VAR)
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_POSTGRES.to_string());
        TestData {
            dir: tempfile::tempdir().expect("temp dir"),
            db: Some(TestDb::create(url).await),
        }
    }

    /// A data dir of its own on the database `url` another `TestData` owns (a second node).
    pub fn beside(url: String) -> Self {
        TestData {
            dir: tempfile::tempdir().expect("temp dir"),
            db: Some(TestDb {
                admin_url: String::new(),
                name: String::new(),
                url,
            }),
        }
    }

    /// The `database_url` to give the server: empty for the embedded SQLite default.
    pub fn database_url(&self) -> String {
        self.db.as_ref().map(|d| d.url.clone()).unwrap_or_default()
    }
}

impl TestDb {
    async fn create(admin_url: String) -> Self {
        let name = format!("sb_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("{DATABASE_URL_VAR}={admin_url} is set but PostgreSQL is unreachable: {e}")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let _ = conn.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        TestDb {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            // Borrowed from another TestData, which drops it.
            return;
        }
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside async code: a small runtime of its own, on its own thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Some of the compiled-in migrations, to build a database as an older release left it.
#[derive(Debug)]
pub struct OldSchema(pub Vec<(i64, &'static str, &'static str)>);

impl sqlx::migrate::MigrationSource<'static> for OldSchema {
    fn resolve(
        self,
    ) -> futures_core::future::BoxFuture<
        'static,
        Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async move {
            Ok(self
                .0
                .into_iter()
                .map(|(v, name, sql)| {
                    sqlx::migrate::Migration::new(
                        v,
                        name.into(),
                        sqlx::migrate::MigrationType::Simple,
                        sql.into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Applies the first `migrations` compiled-in migrations of a backend to `conn`.
async fn migrate_to<C: sqlx::migrate::Migrate>(conn: &mut C, postgres: bool, migrations: usize) {
    let first = switchboard::store::migrations(postgres)[..migrations].to_vec();
    sqlx::migrate::Migrator::new(OldSchema(first))
        .await
        .unwrap()
        .run_direct(conn)
        .await
        .unwrap();
}

/// An SQLite database at `path` as a release with only the first `migrations` migrations left
/// it, and a connection to it.
pub async fn old_sqlite(path: &std::path::Path, migrations: usize) -> sqlx::SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    migrate_to(&mut conn, false, migrations).await;
    conn
}

/// A PostgreSQL database at `url` as a release with only the first `migrations` migrations left
/// it, and a connection to it.
pub async fn old_postgres(url: &str, migrations: usize) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.unwrap();
    migrate_to(&mut conn, true, migrations).await;
    conn
}

/// The database of `data` (whichever backend) as a release with its first `sqlite` or
/// `postgres` migrations left it; statements run on it as written, the same on both.
pub enum OldDb {
    Sqlite(sqlx::SqliteConnection),
    Postgres(PgConnection),
}

impl OldDb {
    pub async fn open(data: &TestData, sqlite: usize, postgres: usize) -> Self {
        match data.database_url().as_str() {
            "" => OldDb::Sqlite(old_sqlite(&data.dir.path().join("switchboard.db"), sqlite).await),
            url => OldDb::Postgres(old_postgres(url, postgres).await),
        }
    }

    /// The database of `data` as this release leaves it (every compiled-in migration).
    pub async fn latest(data: &TestData) -> Self {
        let (sqlite, postgres) = (
            switchboard::store::migrations(false).len(),
            switchboard::store::migrations(true).len(),
        );
        Self::open(data, sqlite, postgres).await
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, OldDb::Postgres(_))
    }

    pub async fn exec(&mut self, sql: &str) {
        match self {
            OldDb::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            OldDb::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of the first row `sql` answers, as text.
    pub async fn text(&mut self, sql: &str) -> String {
        match self {
            OldDb::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await,
            OldDb::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn close(self) {
        let _ = match self {
            OldDb::Sqlite(c) => c.close().await,
            OldDb::Postgres(c) => c.close().await,
        };
    }
}
