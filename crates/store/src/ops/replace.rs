//! [`crate::Store::replace_all`]: makes the store match a declared set exactly.

use std::collections::HashSet;

use portcullis_config::Entities;

use super::{
    Outcome, finish, insert_key_row, quoted_list, read_state, require_route_service, upsert,
};
use crate::backend::{Backend, Table, Tx};
use crate::codec::{self, Entity};
use crate::diff::{Change, EntityKind, diff};
use crate::{ApiKeyRecord, StoreError};

pub(crate) async fn replace_all<B: Backend>(
    backend: &B,
    declared: &Entities,
    keys: &[ApiKeyRecord],
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = replace_all_rows(&mut tx, declared, keys).await;
    finish(tx, version, "replace all", outcome).await
}

/// The names that a list of changes creates or updates, and the names it deletes, of one kind.
struct Touched<'a> {
    written: HashSet<&'a str>,
    deleted: Vec<&'a str>,
}

fn touched(changes: &[Change], selected: EntityKind) -> Touched<'_> {
    let mut touched = Touched {
        written: HashSet::new(),
        deleted: Vec::new(),
    };
    for change in changes {
        match change {
            Change::Create { kind, name } | Change::Update { kind, name, .. }
                if *kind == selected =>
            {
                touched.written.insert(name.as_str());
            }
            Change::Delete { kind, name } if *kind == selected => touched.deleted.push(name),
            _ => {}
        }
    }
    touched
}

/// Computes the changes against the state this transaction reads and applies them. Undeclared
/// routes go first, so that the services they name can be deleted, and services, routes,
/// consumers and keys follow.
async fn replace_all_rows<T: Tx>(
    tx: &mut T,
    declared: &Entities,
    keys: &[ApiKeyRecord],
) -> Result<Outcome, StoreError> {
    let current = read_state(tx).await?;
    let changes = diff(&current, declared, keys)?;
    if changes.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    let services = touched(&changes, EntityKind::Service);
    let routes = touched(&changes, EntityKind::Route);
    let consumers = touched(&changes, EntityKind::Consumer);

    for name in &routes.deleted {
        tx.delete(Table::Routes, name).await?;
    }
    for service in &declared.services {
        if services.written.contains(service.name.as_str()) {
            upsert(tx, service, None, &service.to_stored_json()?).await?;
        }
    }
    for route in &declared.routes {
        if routes.written.contains(route.name.as_str()) {
            require_route_service(tx, route).await?;
            upsert(
                tx,
                route,
                route.service.as_deref(),
                &route.to_stored_json()?,
            )
            .await?;
        }
    }
    for name in &services.deleted {
        // The diff checked that no declared route names an undeclared service, and the
        // undeclared routes are deleted, so no route uses the service unless the diff and the
        // rows disagree.
        let users = tx.routes_using(name).await?;
        if !users.is_empty() {
            return Err(StoreError::Conflict(format!(
                "service `{name}` is not declared but routes {} use it",
                quoted_list(&users)
            )));
        }
        tx.delete(Table::Services, name).await?;
    }
    for consumer in &declared.consumers {
        if consumers.written.contains(consumer.name.as_str()) {
            upsert(tx, consumer, None, &consumer.to_stored_json()?).await?;
        }
    }

    let now = codec::now_timestamp()?;
    let mut revoked_keys = 0u64;
    for change in &changes {
        if let Change::RevokeKey { id, consumer } = change {
            revoked_keys += tx.revoke_keys(consumer, Some(id), &now).await?;
        }
    }
    for name in &consumers.deleted {
        tx.delete(Table::Consumers, name).await?;
        // The diff lists every key of the consumer that is not revoked, so this revokes none
        // unless the diff and the rows disagree.
        revoked_keys += tx.revoke_keys(name, None, &now).await?;
    }
    let mut inserted_keys = 0usize;
    let inserts: HashSet<&str> = changes
        .iter()
        .filter_map(|change| match change {
            Change::InsertKey { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    for key in keys {
        if !inserts.contains(key.id.as_str()) {
            continue;
        }
        // The state contains every key that is not revoked, so a stored id here belongs to a
        // revoked key.
        if tx.key_exists(&key.id).await? {
            return Err(StoreError::Conflict(format!(
                "key `{}` of consumer `{}` is revoked in the store, and a revoked key cannot be \
                 declared again; leave it out, or declare a new key",
                key.id, key.consumer
            )));
        }
        insert_key_row(tx, key).await?;
        inserted_keys += 1;
    }

    tracing::info!(
        services.written = services.written.len(),
        services.deleted = services.deleted.len(),
        routes.written = routes.written.len(),
        routes.deleted = routes.deleted.len(),
        consumers.written = consumers.written.len(),
        consumers.deleted = consumers.deleted.len(),
        inserted_keys,
        revoked_keys,
        "replaced the store's entities and keys with the declared set"
    );
    Ok(Outcome::Changed)
}
