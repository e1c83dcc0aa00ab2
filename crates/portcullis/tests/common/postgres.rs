//! A PostgreSQL database of its own for each test that needs one, on the server at
//! `PORTCULLIS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

use sqlx::Connection;

/// Returns the URL of the PostgreSQL server that test databases are created on.
pub fn server_url() -> String {
    std::env::var("PORTCULLIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database created for one test and dropped with it.
pub struct Database {
    pub name: String,
    pub url: String,
}

impl Database {
    /// Creates a database named `{prefix}_{random}`.
    pub async fn create(prefix: &str) -> Database {
        let server = server_url();
        let mut connection = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL at {server} does not answer ({error}); start it or set PORTCULLIS_TEST_POSTGRES_URL"));
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .unwrap();
        let (base, _) = server.rsplit_once('/').expect("the URL names a database");
        Database {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let server = server_url();
        let name = self.name.clone();
        // Drop runs outside the test's runtime, so a small runtime of its own does the work.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut connection) = sqlx::PgConnection::connect(&server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut connection)
                        .await;
                }
            });
        })
        .join();
    }
}
