//! `portcullis diff`, `apply` and `export`, run as the real binary against a SQLite file in a
//! temporary folder, and once against PostgreSQL in a fresh schema.
//!
//! The PostgreSQL test connects to `postgres://postgres@127.0.0.1:5432/test` unless
//! `PORTCULLIS_TEST_POSTGRES_URL` names another database, and fails when it cannot connect.

mod common;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{ADMIN_TOKEN, ALICE_KEY, Gateway, admin, client, example_config, upstream};
use portcullis_config::DeclaredKey;
use portcullis_policy::api_key::KeyHasher;
use portcullis_store::{PostgresStore, Store};
use sqlx::Connection;

const BOB_KEY: &str = "bob-demo-key-00000001";
/// Value of `PORTCULLIS_ADMIN_TOKEN`, which the example configs read.
const EXAMPLE_ADMIN_TOKEN: &str = "example-admin-token-0000000001";
const KEY_HASH_SECRET: &str = "sync-test-key-hash-secret-000000000001";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Runs `portcullis` with `args`.
fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_ADMIN_TOKEN", EXAMPLE_ADMIN_TOKEN)
        .output()
        .expect("run portcullis")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command that must exit 0 and returns its standard output.
fn succeed(args: &[&str]) -> String {
    let output = portcullis(args);
    assert!(
        output.status.success(),
        "portcullis {args:?} exited with {}:\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Returns the config version in the last line of `apply` or `diff` output.
fn version_of(output: &str) -> u64 {
    let last = output.lines().last().unwrap_or_default();
    let (_, version) = last
        .rsplit_once("config version ")
        .unwrap_or_else(|| panic!("no config version in {output:?}"));
    version.parse().expect("the version is a number")
}

fn apply(config: &Path, entities: Option<&Path>) -> String {
    let mut args = vec!["apply", "--config", path_arg(config)];
    if let Some(entities) = entities {
        args.extend(["--entities", path_arg(entities)]);
    }
    succeed(&args)
}

fn diff(config: &Path, entities: Option<&Path>) -> Output {
    let mut args = vec!["diff", "--config", path_arg(config)];
    if let Some(entities) = entities {
        args.extend(["--entities", path_arg(entities)]);
    }
    portcullis(&args)
}

/// Asserts that `diff` reports no changes at `version`.
fn assert_no_diff(config: &Path, entities: Option<&Path>, version: u64) {
    let output = diff(config, entities);
    assert_eq!(
        output.status.code(),
        Some(0),
        "diff should find no changes:\n{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout(&output),
        format!("no changes; config version {version}\n")
    );
}

fn export(config: &Path, output: &Path) -> String {
    succeed(&[
        "export",
        "--config",
        path_arg(config),
        "--output",
        path_arg(output),
    ]);
    std::fs::read_to_string(output).expect("read the export")
}

/// Returns the plaintext API keys that a config file declares.
fn plaintext_keys(source: &str, path: &Path) -> Vec<String> {
    let env = |name: &str| (name == "PORTCULLIS_ADMIN_TOKEN").then(|| EXAMPLE_ADMIN_TOKEN.into());
    let config = portcullis_config::load_str(source, Some(path), &env).expect("the config loads");
    config
        .entities
        .consumers
        .iter()
        .flat_map(|consumer| &consumer.api_keys)
        .filter_map(|key| match key {
            DeclaredKey::Plain(text) => Some(text.clone()),
            DeclaredKey::Hashed(_) => None,
        })
        .collect()
}

/// Creates an empty file at every `cert_file` and `key_file` path that `source` names, since
/// loading a config checks that they exist. `apply` and `export` never read them.
fn create_certificate_placeholders(source: &str, dir: &Path) {
    for line in source.lines() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        for field in ["cert_file:", "key_file:"] {
            if let Some(value) = trimmed.strip_prefix(field) {
                let path = dir.join(value.trim().trim_matches('"'));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, "").unwrap();
            }
        }
    }
}

/// Returns the `gateway.yaml` of every example folder.
fn example_configs() -> Vec<PathBuf> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("read the examples folder")
        .map(|entry| entry.unwrap().path().join("gateway.yaml"))
        .filter(|path| path.exists())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no example under {}", examples.display());
    paths
}

#[test]
fn example_round_trip_is_a_no_op() {
    for example in example_configs() {
        let source = std::fs::read_to_string(&example).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, &source).unwrap();
        create_certificate_placeholders(&source, dir.path());

        let applied = apply(&config, None);
        let version = version_of(&applied);
        assert!(
            applied.starts_with("+ service "),
            "{}: {applied}",
            example.display()
        );
        assert_no_diff(&config, None, version);

        let exported_path = dir.path().join("export.yaml");
        let exported = export(&config, &exported_path);
        assert!(
            exported.starts_with("# Services, routes and consumers exported"),
            "{exported}"
        );
        assert!(exported.contains("key_hash_secret"), "{exported}");
        assert!(!exported.contains(EXAMPLE_ADMIN_TOKEN), "{exported}");
        for key in plaintext_keys(&source, &config) {
            assert!(
                !exported.contains(&key),
                "{}: the export contains the plaintext key {key}",
                example.display()
            );
        }

        assert_no_diff(&config, Some(&exported_path), version);
        let reapplied = apply(&config, Some(&exported_path));
        assert_eq!(
            reapplied,
            format!("no changes; config version {version}\n"),
            "{}",
            example.display()
        );
        assert_no_diff(&config, None, version);
        assert_eq!(
            export(&config, &dir.path().join("again.yaml")),
            exported,
            "a second export of the same state should be identical"
        );
    }
}

/// Returns a config with the echo service and route, and `consumers` as written.
fn config_with_consumers(consumers: &str) -> String {
    format!(
        r#"store:
  sqlite: portcullis.db
services:
  - name: echo
    targets: [http://127.0.0.1:9000]
    policies:
      - key-auth: {{}}
routes:
  - name: echo
    service: echo
    paths: [/echo]
consumers:
{consumers}"#
    )
}

async fn sqlite_connection(path: &Path) -> sqlx::SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("open the SQLite store directly")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_deletes_undeclared_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let alice = format!("  - name: alice\n    api_keys: [{ALICE_KEY}]\n");
    let bob = format!("  - name: bob\n    api_keys: [{BOB_KEY}]\n");
    std::fs::write(&config, config_with_consumers(&format!("{alice}{bob}"))).unwrap();
    let first = version_of(&apply(&config, None));

    std::fs::write(&config, config_with_consumers(&alice)).unwrap();
    let output = diff(&config, None);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let planned = stdout(&output);
    let lines: Vec<&str> = planned.lines().collect();
    assert_eq!(lines.len(), 3, "{planned}");
    assert_eq!(lines[0], "- consumer bob");
    assert!(
        lines[1].starts_with("- key cfg_") && lines[1].ends_with(" (bob)"),
        "{planned}"
    );
    assert_eq!(
        lines[2],
        format!("2 changes to apply to config version {first}")
    );
    assert!(!planned.contains(BOB_KEY), "{planned}");

    let applied = apply(&config, None);
    assert_eq!(applied.lines().take(2).collect::<Vec<_>>(), lines[..2]);
    assert_eq!(version_of(&applied), first + 1);
    assert_no_diff(&config, None, first + 1);

    let mut connection = sqlite_connection(&dir.path().join("portcullis.db")).await;
    let consumers: Vec<String> = sqlx::query_scalar("SELECT name FROM consumers")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    assert_eq!(consumers, ["alice"]);
    let keys: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT consumer, revoked_at FROM api_keys ORDER BY consumer")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], ("alice".to_owned(), None));
    assert_eq!(keys[1].0, "bob");
    assert!(keys[1].1.is_some(), "bob's key is not revoked: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_prices_survive_apply_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let alice = format!("  - name: alice\n    api_keys: [{ALICE_KEY}]\n");
    std::fs::write(&config, config_with_consumers(&alice)).unwrap();
    let first = version_of(&apply(&config, None));

    // The admin API validates the model against a node's providers. The store takes any
    // spec, so this test writes through it directly.
    let store = portcullis_store::SqliteStore::open(&dir.path().join("portcullis.db"))
        .await
        .unwrap();
    let price = portcullis_config::PriceSpec {
        model: "openai-main/gpt-4.1".into(),
        input_per_million: 2.0,
        output_per_million: 8.0,
        cache_read_per_million: None,
        cache_write_per_million: None,
        reasoning_per_million: Some(20.0),
    };
    let stored = store.put_ai_price(&price).await.unwrap();
    assert_eq!(stored, first + 1);

    let output = diff(&config, None);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the store holds 1 AI price set through the admin API"),
        "{stderr}"
    );
    let applied = apply(&config, None);
    assert_eq!(applied, format!("no changes; config version {stored}\n"));
    assert_eq!(store.load().await.unwrap().ai_prices, vec![price.clone()]);

    let exported = export(&config, &dir.path().join("export.yaml"));
    let comment = format!("#   {}", serde_json::to_string(&price).unwrap());
    assert!(
        exported.lines().any(|line| line == comment),
        "the export does not list the stored price as {comment}:\n{exported}"
    );
    // The comment lines do not change what the export declares.
    assert_no_diff(&config, Some(&dir.path().join("export.yaml")), stored);
}

#[test]
fn invalid_declared_set_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        config_with_consumers(&format!("  - name: alice\n    api_keys: [{ALICE_KEY}]\n")),
    )
    .unwrap();
    let version = version_of(&apply(&config, None));

    // The exported record of alice's key, with its scopes changed, is a conflict: a stored
    // key record cannot change.
    let exported_path = dir.path().join("export.yaml");
    let exported = export(&config, &exported_path);
    let edited = exported.replace(
        "        prefix: ",
        "        scopes:\n          - \"admin\"\n        prefix: ",
    );
    assert_ne!(
        edited, exported,
        "the export has no key record to edit:\n{exported}"
    );
    std::fs::write(&exported_path, edited).unwrap();

    let output = diff(&config, Some(&exported_path));
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("differs from the stored record in scopes"),
        "{stderr}"
    );

    let output = portcullis(&[
        "apply",
        "--config",
        path_arg(&config),
        "--entities",
        path_arg(&exported_path),
    ]);
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    assert_no_diff(&config, None, version);

    // An entities file that does not load is reported like `validate` reports it.
    std::fs::write(
        &exported_path,
        "routes:\n  - name: r\n    service: missing\n    paths: [/r]\n",
    )
    .unwrap();
    let output = diff(&config, Some(&exported_path));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(":3: key `routes[0].service`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_key_survives_export_and_apply() {
    let upstream = upstream().await;
    let config = format!(
        "{}key_hash_secret: {KEY_HASH_SECRET}\n",
        example_config(upstream)
    );
    let gateway = Gateway::start(&config);
    let client = client();

    let response = admin(
        &client,
        reqwest::Method::POST,
        &gateway,
        "/consumers/alice/keys",
    )
    .json(&serde_json::json!({ "scopes": ["read"] }))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let issued: serde_json::Value = response.json().await.unwrap();
    let plaintext = issued["key"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();
    let request = |key: &str| {
        client
            .get(gateway.url("/echo/hello"))
            .header("apikey", key)
            .send()
    };
    assert_eq!(request(&plaintext).await.unwrap().status(), 200);

    let exported_path = gateway.path("export.yaml");
    let exported = export(&gateway.config_path, &exported_path);
    let hash = KeyHasher::new(KEY_HASH_SECRET.as_bytes()).digest_hex(&plaintext);
    assert!(exported.contains(&format!("id: \"{id}\"")), "{exported}");
    assert!(
        exported.contains(&format!("hash: \"{hash}\"")),
        "{exported}"
    );
    for secret in [plaintext.as_str(), ALICE_KEY, ADMIN_TOKEN, KEY_HASH_SECRET] {
        assert!(
            !exported.contains(secret),
            "the export contains {secret}:\n{exported}"
        );
    }

    // The file alone does not list the issued key, so applying it would revoke that key.
    let output = diff(&gateway.config_path, None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).starts_with(&format!("- key {id} (alice)\n")),
        "{}",
        stdout(&output)
    );

    // Applying the export to the same store changes nothing, and the key keeps working.
    let version = version_of(&stdout(&diff(&gateway.config_path, Some(&exported_path))));
    let reapplied = apply(&gateway.config_path, Some(&exported_path));
    assert_eq!(reapplied, format!("no changes; config version {version}\n"));
    assert_eq!(request(&plaintext).await.unwrap().status(), 200);

    // A new store with the same key-hash secret accepts the export, and a gateway on it
    // authenticates both the issued key and the key declared in the original file.
    let fresh = tempfile::tempdir().unwrap();
    let node = format!(
        "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n  token: {ADMIN_TOKEN}\nstore:\n  sqlite: portcullis.db\naccess_log: off\nkey_hash_secret: {KEY_HASH_SECRET}\n"
    );
    let node_path = fresh.path().join("gateway.yaml");
    std::fs::write(&node_path, &node).unwrap();
    let applied = apply(&node_path, Some(&exported_path));
    assert!(applied.contains("+ consumer alice\n"), "{applied}");
    assert!(
        applied.contains(&format!("+ key {id} (alice)\n")),
        "{applied}"
    );
    assert_no_diff(&node_path, Some(&exported_path), version_of(&applied));

    let second = Gateway::start_in(fresh, &node);
    for key in [plaintext.as_str(), ALICE_KEY] {
        let response = client
            .get(second.url("/echo/hello"))
            .header("apikey", key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "key {key} on the new store");
    }
}

/// Returns `url` with the connection option that sets `search_path` to `schema`.
fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-csearch_path%3D{schema}")
}

async fn drop_schema(url: &str, schema: &str) {
    let drop = async {
        let mut connection = sqlx::PgConnection::connect(url).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut connection)
            .await?;
        connection.close().await
    };
    match tokio::time::timeout(Duration::from_secs(10), drop).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("failed to drop test schema {schema}: {error}"),
        Err(_) => eprintln!("timed out dropping test schema {schema}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_round_trip_is_a_no_op() {
    let base = std::env::var("PORTCULLIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let suffix = RandomState::new().hash_one(std::process::id());
    let schema = format!("portcullis_sync_{suffix:016x}");
    // The library creates the schema; the CLI reaches it through the `options` URL parameter.
    let connect = PostgresStore::connect_with_schema(&base, &schema);
    let store = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(store)) => store,
        Ok(Err(error)) => panic!("failed to connect to PostgreSQL at {base}: {error}"),
        Err(_) => panic!("timed out connecting to PostgreSQL at {base}"),
    };
    assert_eq!(store.backend(), "postgres");
    drop(store);

    let url = with_search_path(&base, &schema);
    let scenario = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.yaml");
        let source = config_with_consumers(&format!(
            "  - name: alice\n    roles: [gold]\n    api_keys: [{ALICE_KEY}]\n  - name: bob\n    api_keys: [{BOB_KEY}]\n"
        ))
        .replace("store:\n  sqlite: portcullis.db\n", &format!("store:\n  postgres: \"{url}\"\n"));
        std::fs::write(&config, &source).unwrap();

        let applied = apply(&config, None);
        assert_eq!(version_of(&applied), 1, "{applied}");
        assert_no_diff(&config, None, 1);

        let exported_path = dir.path().join("export.yaml");
        let exported = export(&config, &exported_path);
        assert!(exported.contains("from a postgres store"), "{exported}");
        for secret in [ALICE_KEY, BOB_KEY, url.as_str()] {
            assert!(
                !exported.contains(secret),
                "the export contains {secret}:\n{exported}"
            );
        }
        assert_no_diff(&config, Some(&exported_path), 1);
        let reapplied = apply(&config, Some(&exported_path));
        assert_eq!(reapplied, "no changes; config version 1\n");

        // Removing bob from the file deletes him and revokes his key in one write.
        let without_bob =
            source.replace(&format!("  - name: bob\n    api_keys: [{BOB_KEY}]\n"), "");
        std::fs::write(&config, without_bob).unwrap();
        let applied = apply(&config, None);
        assert!(
            applied.starts_with("- consumer bob\n- key cfg_"),
            "{applied}"
        );
        assert_eq!(version_of(&applied), 2, "{applied}");
    });
    let outcome = scenario.await;
    drop_schema(&base, &schema).await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}
