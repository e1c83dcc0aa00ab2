//! The changes that make a store's state match a declared set of entities and key records.
//!
//! [`diff`] is pure: `portcullis diff` prints its result, and [`crate::Store::replace_all`]
//! computes it again inside its write transaction and applies it, so both agree on what a
//! declared set changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use portcullis_config::Entities;
use serde_json::Value;

use crate::backend::Table;
use crate::codec::Entity;
use crate::{ApiKeyRecord, StoreError, StoreState};

/// A kind of entity that the store keeps by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityKind {
    Service,
    Route,
    Consumer,
}

impl EntityKind {
    /// Returns the singular noun, such as `service`.
    pub fn noun(self) -> &'static str {
        match self {
            EntityKind::Service => "service",
            EntityKind::Route => "route",
            EntityKind::Consumer => "consumer",
        }
    }

    fn of_table(table: Table) -> Self {
        match table {
            Table::Services => EntityKind::Service,
            Table::Routes => EntityKind::Route,
            Table::Consumers => EntityKind::Consumer,
        }
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// One change between the stored and the declared state. Keys are named by id and consumer
/// only, never by hash or plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A declared entity that the store lacks.
    Create { kind: EntityKind, name: String },
    /// A declared entity whose stored spec differs in the top-level `fields`, in byte order.
    Update {
        kind: EntityKind,
        name: String,
        fields: Vec<String>,
    },
    /// A stored entity that is not declared. The keys of a deleted consumer are listed as
    /// [`Change::RevokeKey`] too.
    Delete { kind: EntityKind, name: String },
    /// A declared key record that the store lacks.
    InsertKey { id: String, consumer: String },
    /// A stored key, not revoked yet, that is not declared.
    RevokeKey { id: String, consumer: String },
}

impl fmt::Display for Change {
    /// Writes the change as one line: `+ service echo`, `~ route echo (paths, strip_prefix)`,
    /// `- consumer bob`, `+ key cfg_1234 (alice)` or `- key key_abc (bob)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create { kind, name } => write!(f, "+ {kind} {name}"),
            Change::Update { kind, name, fields } => {
                write!(f, "~ {kind} {name} ({})", fields.join(", "))
            }
            Change::Delete { kind, name } => write!(f, "- {kind} {name}"),
            Change::InsertKey { id, consumer } => write!(f, "+ key {id} ({consumer})"),
            Change::RevokeKey { id, consumer } => write!(f, "- key {id} ({consumer})"),
        }
    }
}

/// Returns the changes that turn `current` into exactly `declared` and `keys`: services, then
/// routes, then consumers, each sorted by name, then key inserts in declared order and key
/// revocations in stored order.
///
/// Entities are compared by their stored JSON, so a consumer's `api_keys` do not count. Keys
/// are matched by id. A stored key record cannot change, so a declared key whose id is stored
/// with another consumer, hash, prefix, expiry, scopes or `rotated_from` is a
/// [`StoreError::Conflict`]. So are a name or key declared twice, a declared route whose service
/// is not declared, a key whose consumer is not declared, and a new key whose hash belongs to
/// a stored key with another id.
///
/// NOTE: `current.keys` contains no revoked keys, so a declared key whose id belongs to a revoked
/// record shows as [`Change::InsertKey`]. [`crate::Store::replace_all`] then fails with a
/// conflict, because a revoked key is never restored.
pub fn diff(
    current: &StoreState,
    declared: &Entities,
    keys: &[ApiKeyRecord],
) -> Result<Vec<Change>, StoreError> {
    check_route_services(declared)?;
    let mut changes = Vec::new();
    diff_entities(&mut changes, &current.entities.services, &declared.services)?;
    diff_entities(&mut changes, &current.entities.routes, &declared.routes)?;
    diff_entities(
        &mut changes,
        &current.entities.consumers,
        &declared.consumers,
    )?;
    diff_keys(&mut changes, &current.keys, declared, keys)?;
    Ok(changes)
}

/// Checks that every declared route names a declared service, since the services that are not
/// declared are deleted.
fn check_route_services(declared: &Entities) -> Result<(), StoreError> {
    let services: HashSet<&str> = declared
        .services
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    for route in &declared.routes {
        let Some(service) = &route.service else {
            continue;
        };
        if !services.contains(service.as_str()) {
            return Err(StoreError::Conflict(format!(
                "route `{}` names service `{service}`, which is not declared; declare the \
                 service or point the route at a declared one",
                route.name
            )));
        }
    }
    Ok(())
}

fn diff_entities<E: Entity>(
    changes: &mut Vec<Change>,
    stored: &[E],
    declared: &[E],
) -> Result<(), StoreError> {
    let kind = EntityKind::of_table(E::TABLE);
    let mut stored_specs = HashMap::new();
    for entity in stored {
        stored_specs.insert(entity.name(), entity.to_stored_json()?);
    }
    // Sorted by name, so that creations, updates and deletions interleave in name order.
    let mut by_name: BTreeMap<&str, Change> = BTreeMap::new();
    let mut seen = HashSet::new();
    for entity in declared {
        let name = entity.name();
        if !seen.insert(name) {
            return Err(StoreError::Conflict(format!(
                "{kind} `{name}` is declared twice"
            )));
        }
        let spec = entity.to_stored_json()?;
        let change = match stored_specs.remove(name) {
            None => Change::Create {
                kind,
                name: name.to_owned(),
            },
            Some(stored_spec) if stored_spec == spec => continue,
            Some(stored_spec) => Change::Update {
                kind,
                name: name.to_owned(),
                fields: changed_fields(&stored_spec, &spec),
            },
        };
        by_name.insert(name, change);
    }
    for name in stored_specs.into_keys() {
        let change = Change::Delete {
            kind,
            name: name.to_owned(),
        };
        by_name.insert(name, change);
    }
    changes.extend(by_name.into_values());
    Ok(())
}

/// Returns the top-level fields in which two JSON objects differ, in byte order.
fn changed_fields(stored: &Value, declared: &Value) -> Vec<String> {
    let (Some(stored), Some(declared)) = (stored.as_object(), declared.as_object()) else {
        return vec!["(whole spec)".to_owned()];
    };
    let names: BTreeSet<&String> = stored.keys().chain(declared.keys()).collect();
    names
        .into_iter()
        .filter(|name| stored.get(*name) != declared.get(*name))
        .cloned()
        .collect()
}

fn diff_keys(
    changes: &mut Vec<Change>,
    stored: &[ApiKeyRecord],
    declared: &Entities,
    keys: &[ApiKeyRecord],
) -> Result<(), StoreError> {
    let stored_by_id: HashMap<&str, &ApiKeyRecord> =
        stored.iter().map(|key| (key.id.as_str(), key)).collect();
    let stored_by_hash: HashMap<&str, &str> = stored
        .iter()
        .map(|key| (key.hash.as_str(), key.id.as_str()))
        .collect();
    let consumers: HashSet<&str> = declared
        .consumers
        .iter()
        .map(|consumer| consumer.name.as_str())
        .collect();

    let mut declared_ids = HashSet::new();
    let mut declared_hashes: HashMap<&str, &str> = HashMap::new();
    for key in keys {
        if !consumers.contains(key.consumer.as_str()) {
            return Err(StoreError::Conflict(format!(
                "key `{}` names consumer `{}`, which is not declared",
                key.id, key.consumer
            )));
        }
        if !declared_ids.insert(key.id.as_str()) {
            return Err(StoreError::Conflict(format!(
                "key `{}` is declared twice",
                key.id
            )));
        }
        if let Some(other) = declared_hashes.insert(key.hash.as_str(), key.id.as_str()) {
            return Err(StoreError::Conflict(format!(
                "keys `{other}` and `{}` have the same hash, so they are the same plaintext key",
                key.id
            )));
        }
        match stored_by_id.get(key.id.as_str()) {
            Some(stored_key) => check_unchanged(stored_key, key)?,
            None => {
                if let Some(other) = stored_by_hash.get(key.hash.as_str()) {
                    return Err(StoreError::Conflict(format!(
                        "key `{}` has the same hash as stored key `{other}`, so it is the same \
                         plaintext key; declare it with id `{other}` or leave it out",
                        key.id
                    )));
                }
                changes.push(Change::InsertKey {
                    id: key.id.clone(),
                    consumer: key.consumer.clone(),
                });
            }
        }
    }

    for key in stored {
        if !declared_ids.contains(key.id.as_str()) {
            changes.push(Change::RevokeKey {
                id: key.id.clone(),
                consumer: key.consumer.clone(),
            });
        }
    }
    Ok(())
}

/// Checks that a declared key matches the stored record with its id in every field that the
/// declaration sets. The creation time is not compared, because plaintext keys get the current
/// time each time they are hashed.
fn check_unchanged(stored: &ApiKeyRecord, declared: &ApiKeyRecord) -> Result<(), StoreError> {
    let id = &declared.id;
    if stored.consumer != declared.consumer {
        return Err(StoreError::Conflict(format!(
            "key `{id}` belongs to consumer `{}` in the store, not `{}`; a stored key cannot \
             move to another consumer",
            stored.consumer, declared.consumer
        )));
    }
    let mut fields = Vec::new();
    if stored.hash != declared.hash {
        fields.push("hash");
    }
    if stored.prefix != declared.prefix {
        fields.push("prefix");
    }
    if stored.expires_at != declared.expires_at {
        fields.push("expires_at");
    }
    if stored.scopes != declared.scopes {
        fields.push("scopes");
    }
    if stored.rotated_from != declared.rotated_from {
        fields.push("rotated_from");
    }
    if fields.is_empty() {
        return Ok(());
    }
    Err(StoreError::Conflict(format!(
        "key `{id}` of consumer `{}` differs from the stored record in {}; a stored key cannot \
         be changed, so declare a new key and leave this one out to revoke it",
        declared.consumer,
        fields.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use portcullis_config::{ConsumerSpec, PathMatch, RouteSpec, ServiceSpec, UpstreamTimeouts};
    use time::macros::datetime;

    use super::*;

    fn service(name: &str, target: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            targets: vec![target.into()],
            load_balancing: Default::default(),
            timeouts: UpstreamTimeouts::default(),
            preserve_host: false,
            health_checks: None,
            retries: Default::default(),
            circuit_breaker: None,
            policies: Vec::new(),
        }
    }

    fn route(name: &str, service: &str) -> RouteSpec {
        RouteSpec {
            name: name.to_owned(),
            service: Some(service.to_owned()),
            ai: None,
            paths: vec![PathMatch::Prefix(format!("/{name}"))],
            methods: Vec::new(),
            hosts: Vec::new(),
            strip_prefix: false,
            policies: Vec::new(),
        }
    }

    fn consumer(name: &str) -> ConsumerSpec {
        ConsumerSpec {
            name: name.to_owned(),
            roles: Vec::new(),
            api_keys: Vec::new(),
            policies: Vec::new(),
            key_rotation: None,
            certificates: Vec::new(),
        }
    }

    fn key(id: &str, consumer: &str, hash: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.to_owned(),
            consumer: consumer.to_owned(),
            hash: hash.to_owned(),
            prefix: "pcs_abcdefgh".to_owned(),
            created_at: datetime!(2024-05-01 12:00:00 UTC),
            expires_at: None,
            revoked_at: None,
            rotated_from: None,
            rotated_to: None,
            scopes: Vec::new(),
            source: "admin".to_owned(),
            last_used_at: None,
        }
    }

    fn state(entities: Entities, keys: Vec<ApiKeyRecord>) -> StoreState {
        StoreState {
            version: 7,
            entities,
            keys,
            ai_prices: Vec::new(),
            credentials: Vec::new(),
        }
    }

    fn example() -> Entities {
        Entities {
            services: vec![service("echo", "http://127.0.0.1:9000")],
            routes: vec![route("echo", "echo")],
            consumers: vec![consumer("alice"), consumer("bob")],
        }
    }

    fn lines(changes: &[Change]) -> Vec<String> {
        changes.iter().map(ToString::to_string).collect()
    }

    fn conflict(result: Result<Vec<Change>, StoreError>) -> String {
        match result {
            Err(StoreError::Conflict(message)) => message,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn equal_states_have_no_changes() {
        let keys = vec![key("k1", "alice", "h1")];
        let current = state(example(), keys.clone());
        assert_eq!(diff(&current, &example(), &keys).unwrap(), []);
    }

    #[test]
    fn empty_store_creates_everything() {
        let keys = vec![key("k1", "alice", "h1")];
        let changes = diff(&StoreState::default(), &example(), &keys).unwrap();
        assert_eq!(
            lines(&changes),
            [
                "+ service echo",
                "+ route echo",
                "+ consumer alice",
                "+ consumer bob",
                "+ key k1 (alice)",
            ]
        );
    }

    #[test]
    fn update_names_changed_fields() {
        let current = state(example(), Vec::new());
        let mut declared = example();
        declared.routes[0].paths = vec![PathMatch::Prefix("/other".into())];
        declared.routes[0].strip_prefix = true;
        declared.routes[0].methods = vec!["GET".into()];
        let changes = diff(&current, &declared, &[]).unwrap();
        assert_eq!(
            changes,
            [Change::Update {
                kind: EntityKind::Route,
                name: "echo".into(),
                fields: vec!["methods".into(), "paths".into(), "strip_prefix".into()],
            }]
        );
        assert_eq!(
            changes[0].to_string(),
            "~ route echo (methods, paths, strip_prefix)"
        );
    }

    #[test]
    fn undeclared_entities_and_keys_are_removed() {
        let mut stored = example();
        stored
            .services
            .push(service("legacy", "http://127.0.0.1:9001"));
        stored.routes.push(route("legacy", "legacy"));
        let current = state(
            stored,
            vec![
                key("k1", "alice", "h1"),
                key("k2", "bob", "h2"),
                key("k3", "alice", "h3"),
            ],
        );
        let mut declared = example();
        declared.consumers.retain(|consumer| consumer.name != "bob");
        let keys = [key("k1", "alice", "h1")];
        let changes = diff(&current, &declared, &keys).unwrap();
        assert_eq!(
            lines(&changes),
            [
                "- service legacy",
                "- route legacy",
                "- consumer bob",
                "- key k2 (bob)",
                "- key k3 (alice)",
            ]
        );
    }

    #[test]
    fn changes_within_a_kind_sort_by_name() {
        let mut stored = example();
        stored.services = vec![
            service("b", "http://127.0.0.1:9000"),
            service("d", "http://127.0.0.1:9000"),
        ];
        stored.routes.clear();
        let mut declared = stored.clone();
        declared.services = vec![
            service("c", "http://127.0.0.1:9000"),
            service("a", "http://127.0.0.1:9000"),
            service("d", "http://127.0.0.1:9001"),
        ];
        let changes = diff(&state(stored, Vec::new()), &declared, &[]).unwrap();
        assert_eq!(
            lines(&changes),
            [
                "+ service a",
                "- service b",
                "+ service c",
                "~ service d (targets)"
            ]
        );
    }

    #[test]
    fn consumer_api_keys_are_not_compared() {
        let current = state(example(), Vec::new());
        let mut declared = example();
        declared.consumers[0].api_keys = vec![portcullis_config::DeclaredKey::Plain(
            "alice-demo-key-0001".into(),
        )];
        assert_eq!(diff(&current, &declared, &[]).unwrap(), []);
    }

    #[test]
    fn key_creation_time_is_not_compared() {
        let current = state(example(), vec![key("k1", "alice", "h1")]);
        let mut declared_key = key("k1", "alice", "h1");
        declared_key.created_at = datetime!(2025-01-01 00:00:00 UTC);
        declared_key.source = "config".into();
        assert_eq!(diff(&current, &example(), &[declared_key]).unwrap(), []);
    }

    #[test]
    fn changed_key_record_is_a_conflict() {
        let current = state(example(), vec![key("k1", "alice", "h1")]);
        let mut changed = key("k1", "alice", "h1");
        changed.scopes = vec!["write".into()];
        changed.expires_at = Some(datetime!(2030-01-01 00:00:00 UTC));
        let message = conflict(diff(&current, &example(), &[changed]));
        assert!(message.contains("`k1`"), "{message}");
        assert!(message.contains("expires_at, scopes"), "{message}");

        let moved = key("k1", "bob", "h1");
        let message = conflict(diff(&current, &example(), &[moved]));
        assert!(message.contains("belongs to consumer `alice`"), "{message}");
    }

    #[test]
    fn new_key_with_stored_hash_is_a_conflict() {
        let current = state(example(), vec![key("k1", "alice", "h1")]);
        let message = conflict(diff(&current, &example(), &[key("k2", "alice", "h1")]));
        assert!(message.contains("stored key `k1`"), "{message}");
    }

    #[test]
    fn declared_duplicates_are_conflicts() {
        // The first `echo` equals the stored one, so only the second would be a change.
        let mut twice = example();
        twice
            .services
            .push(service("echo", "http://127.0.0.1:9001"));
        let message = conflict(diff(&state(example(), Vec::new()), &twice, &[]));
        assert!(
            message.contains("service `echo` is declared twice"),
            "{message}"
        );

        let current = StoreState::default();
        let message = conflict(diff(&current, &twice, &[]));
        assert!(
            message.contains("service `echo` is declared twice"),
            "{message}"
        );

        let keys = [key("k1", "alice", "h1"), key("k1", "bob", "h2")];
        let message = conflict(diff(&current, &example(), &keys));
        assert!(message.contains("key `k1` is declared twice"), "{message}");

        let keys = [key("k1", "alice", "h1"), key("k2", "bob", "h1")];
        let message = conflict(diff(&current, &example(), &keys));
        assert!(message.contains("same hash"), "{message}");
    }

    #[test]
    fn dangling_references_are_conflicts() {
        let mut declared = example();
        declared.services.clear();
        let message = conflict(diff(&StoreState::default(), &declared, &[]));
        assert!(
            message.contains("route `echo` names service `echo`"),
            "{message}"
        );

        let keys = [key("k1", "carol", "h1")];
        let message = conflict(diff(&StoreState::default(), &example(), &keys));
        assert!(message.contains("consumer `carol`"), "{message}");
    }

    #[test]
    fn change_lines_never_show_hashes() {
        let current = state(example(), vec![key("k1", "bob", "secret-hash-1")]);
        let keys = [key("k2", "alice", "secret-hash-2")];
        let changes = diff(&current, &example(), &keys).unwrap();
        assert_eq!(lines(&changes), ["+ key k2 (alice)", "- key k1 (bob)"]);
        for change in &changes {
            let debug = format!("{change:?}");
            assert!(!debug.contains("secret-hash"), "{debug}");
        }
    }
}
