//! The store operations, written once over [`Backend`] and [`Tx`].
//!
//! Each write opens a transaction with [`Backend::begin_write`], which serialises writers on
//! the config version. The checks then read committed data that no other writer can change
//! before this transaction ends. [`finish`] bumps the version and commits when the write
//! changed something, and rolls back otherwise.

use portcullis_config::{ConsumerSpec, Entities, PriceSpec, RouteSpec, ServiceSpec};
use serde_json::Value;

use crate::backend::{Backend, EntityRow, Table, Tx};
use crate::codec::{self, Entity};
use crate::{ApiKeyRecord, StoreError, StoreState};

mod credentials;
mod replace;
mod rotate;

pub(crate) use credentials::{credentials, delete_credential, put_credential};
pub(crate) use replace::replace_all;
pub(crate) use rotate::{find_keys, rotate_key};

/// The result of the statements of a write.
enum Outcome {
    Changed,
    Unchanged,
}

/// Ends a write transaction and returns the config version after it.
async fn finish<T: Tx>(
    mut tx: T,
    locked_version: u64,
    operation: &'static str,
    outcome: Result<Outcome, StoreError>,
) -> Result<u64, StoreError> {
    match outcome {
        Ok(Outcome::Changed) => {
            let version = tx.bump_version().await?;
            tx.commit().await?;
            tracing::debug!(operation, version, "config write committed");
            Ok(version)
        }
        Ok(Outcome::Unchanged) => {
            tx.rollback().await?;
            tracing::debug!(
                operation,
                version = locked_version,
                "config write changed nothing"
            );
            Ok(locked_version)
        }
        Err(error) => {
            // The write error is the one the caller needs, so a failed rollback is only
            // logged. The database discards the transaction when the connection closes.
            if let Err(rollback_error) = tx.rollback().await {
                tracing::warn!(operation, error = %rollback_error, "rollback after a failed write failed");
            }
            Err(error)
        }
    }
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn upsert<T: Tx, E: Entity>(
    tx: &mut T,
    entity: &E,
    service_name: Option<&str>,
    spec: &Value,
) -> Result<(), StoreError> {
    let row = EntityRow {
        name: entity.name(),
        service_name,
        spec: spec.to_string(),
        updated_at: codec::now_timestamp()?,
    };
    tx.upsert(E::TABLE, &row).await
}

/// Writes an entity unless the stored spec is the same JSON value, and returns whether it
/// wrote.
async fn upsert_if_changed<T: Tx, E: Entity>(
    tx: &mut T,
    entity: &E,
    service_name: Option<&str>,
) -> Result<bool, StoreError> {
    let spec = entity.to_stored_json()?;
    if let Some(stored) = tx.spec(E::TABLE, entity.name()).await? {
        // A stored spec that does not parse counts as different, so the write replaces it.
        let stored: Option<Value> = serde_json::from_str(&stored).ok();
        if stored.as_ref() == Some(&spec) {
            return Ok(false);
        }
    }
    upsert(tx, entity, service_name, &spec).await?;
    Ok(true)
}

async fn require_route_service<T: Tx>(tx: &mut T, route: &RouteSpec) -> Result<(), StoreError> {
    let Some(service) = &route.service else {
        return Ok(());
    };
    if tx.spec(Table::Services, service).await?.is_none() {
        return Err(StoreError::Conflict(format!(
            "route `{}` names service `{service}`, which does not exist; create the service first",
            route.name
        )));
    }
    Ok(())
}

pub(crate) async fn version<B: Backend>(backend: &B) -> Result<u64, StoreError> {
    let mut tx = backend.begin_read().await?;
    let version = tx.version().await?;
    tx.commit().await?;
    Ok(version)
}

pub(crate) async fn load<B: Backend>(backend: &B) -> Result<StoreState, StoreError> {
    let mut tx = backend.begin_read().await?;
    let state = read_state(&mut tx).await?;
    tx.commit().await?;
    Ok(state)
}

/// Reads the version, the entities, the keys not revoked yet and the credentials, within `tx`.
async fn read_state<T: Tx>(tx: &mut T) -> Result<StoreState, StoreError> {
    let version = tx.version().await?;
    let services = codec::decode_entities::<ServiceSpec>(tx.specs(Table::Services).await?)?;
    let routes = codec::decode_entities::<RouteSpec>(tx.specs(Table::Routes).await?)?;
    let consumers = codec::decode_entities::<ConsumerSpec>(tx.specs(Table::Consumers).await?)?;
    let now = codec::now_timestamp()?;
    let keys = tx
        .unrevoked_keys(&now)
        .await?
        .into_iter()
        .map(codec::key_record)
        .collect::<Result<Vec<_>, _>>()?;
    let ai_prices = tx
        .prices()
        .await?
        .iter()
        .map(|(model, spec)| codec::decode_price(model, spec))
        .collect::<Result<Vec<_>, _>>()?;
    let credentials = tx
        .credentials(None)
        .await?
        .into_iter()
        .map(codec::credential_record)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StoreState {
        version,
        entities: Entities {
            services,
            routes,
            consumers,
        },
        keys,
        ai_prices,
        credentials,
    })
}

pub(crate) async fn secret<B: Backend>(
    backend: &B,
    name: &str,
    generate: &(dyn Fn() -> String + Send + Sync),
) -> Result<String, StoreError> {
    let key = codec::secret_key(name);
    if let Some(value) = backend.meta_value(&key).await? {
        return Ok(value);
    }
    // Another node may insert between the read above and this insert. The insert then does
    // nothing, and the read below returns the value that won.
    let generated = generate();
    backend.insert_meta_if_absent(&key, &generated).await?;
    // The row exists after the insert unless something outside the store deleted it since.
    let value = backend
        .meta_value(&key)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("secret `{name}`")))?;
    if value == generated {
        tracing::info!(secret = name, "created store secret");
    }
    Ok(value)
}

pub(crate) async fn put_service<B: Backend>(
    backend: &B,
    service: &ServiceSpec,
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = async {
        let spec = service.to_stored_json()?;
        upsert(&mut tx, service, None, &spec).await?;
        Ok(Outcome::Changed)
    }
    .await;
    finish(tx, version, "put service", outcome).await
}

pub(crate) async fn delete_service<B: Backend>(backend: &B, name: &str) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = async {
        if tx.spec(Table::Services, name).await?.is_none() {
            return Err(StoreError::NotFound(format!("service `{name}`")));
        }
        let routes = tx.routes_using(name).await?;
        if !routes.is_empty() {
            return Err(StoreError::Conflict(format!(
                "service `{name}` is used by routes {}; delete those routes or point them at another service first",
                quoted_list(&routes)
            )));
        }
        tx.delete(Table::Services, name).await?;
        Ok(Outcome::Changed)
    }
    .await;
    finish(tx, version, "delete service", outcome).await
}

pub(crate) async fn put_route<B: Backend>(
    backend: &B,
    route: &RouteSpec,
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = async {
        require_route_service(&mut tx, route).await?;
        let spec = route.to_stored_json()?;
        upsert(&mut tx, route, route.service.as_deref(), &spec).await?;
        Ok(Outcome::Changed)
    }
    .await;
    finish(tx, version, "put route", outcome).await
}

/// Deletes a route or a consumer. A consumer's keys are revoked in the same transaction.
async fn delete_route_or_consumer<B: Backend>(
    backend: &B,
    table: Table,
    name: &str,
    operation: &'static str,
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = async {
        if !tx.delete(table, name).await? {
            return Err(StoreError::NotFound(format!("{} `{name}`", table.noun())));
        }
        if table == Table::Consumers {
            let at = codec::now_timestamp()?;
            let revoked = tx.revoke_keys(name, None, &at).await?;
            tracing::debug!(
                consumer = name,
                revoked,
                "revoked the keys of a deleted consumer"
            );
        }
        Ok(Outcome::Changed)
    }
    .await;
    finish(tx, version, operation, outcome).await
}

pub(crate) async fn delete_route<B: Backend>(backend: &B, name: &str) -> Result<u64, StoreError> {
    delete_route_or_consumer(backend, Table::Routes, name, "delete route").await
}

pub(crate) async fn put_consumer<B: Backend>(
    backend: &B,
    consumer: &ConsumerSpec,
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = async {
        let spec = consumer.to_stored_json()?;
        upsert(&mut tx, consumer, None, &spec).await?;
        Ok(Outcome::Changed)
    }
    .await;
    finish(tx, version, "put consumer", outcome).await
}

/// Deletes a consumer and revokes its keys. The key rows stay, so the revocation remains on
/// record.
pub(crate) async fn delete_consumer<B: Backend>(
    backend: &B,
    name: &str,
) -> Result<u64, StoreError> {
    delete_route_or_consumer(backend, Table::Consumers, name, "delete consumer").await
}

pub(crate) async fn put_ai_price<B: Backend>(
    backend: &B,
    price: &PriceSpec,
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = async {
        let spec = codec::encode_price(price)?;
        let updated_at = codec::now_timestamp()?;
        tx.upsert_price(&price.model, &spec, &updated_at).await?;
        Ok(Outcome::Changed)
    }
    .await;
    finish(tx, version, "put AI price", outcome).await
}

pub(crate) async fn delete_ai_price<B: Backend>(
    backend: &B,
    model: &str,
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = async {
        if !tx.delete_price(model).await? {
            return Err(StoreError::NotFound(format!("stored price of `{model}`")));
        }
        Ok(Outcome::Changed)
    }
    .await;
    finish(tx, version, "delete AI price", outcome).await
}

/// Checks a new key record against the stored ones and inserts it.
async fn insert_key_row<T: Tx>(tx: &mut T, key: &ApiKeyRecord) -> Result<(), StoreError> {
    if tx.spec(Table::Consumers, &key.consumer).await?.is_none() {
        return Err(StoreError::Conflict(format!(
            "key `{}` names consumer `{}`, which does not exist; create the consumer first",
            key.id, key.consumer
        )));
    }
    if tx.key_exists(&key.id).await? {
        return Err(StoreError::Conflict(format!(
            "a key with id `{}` exists already",
            key.id
        )));
    }
    if let Some(other) = tx.key_id_by_hash(&key.hash).await? {
        return Err(StoreError::Conflict(format!(
            "key `{}` has the same hash as key `{other}`, so it is the same plaintext key",
            key.id
        )));
    }
    tx.insert_key(&codec::key_row(key)?).await
}

pub(crate) async fn insert_key<B: Backend>(
    backend: &B,
    key: &ApiKeyRecord,
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = insert_key_row(&mut tx, key)
        .await
        .map(|()| Outcome::Changed);
    finish(tx, version, "insert key", outcome).await
}

pub(crate) async fn list_keys<B: Backend>(
    backend: &B,
    consumer: &str,
) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let mut tx = backend.begin_read().await?;
    if tx.spec(Table::Consumers, consumer).await?.is_none() {
        tx.rollback().await?;
        return Err(StoreError::NotFound(format!("consumer `{consumer}`")));
    }
    let rows = tx.consumer_keys(consumer).await?;
    tx.commit().await?;
    rows.into_iter().map(codec::key_record).collect()
}

pub(crate) async fn revoke_key<B: Backend>(
    backend: &B,
    consumer: &str,
    id: &str,
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = async {
        let at = codec::now_timestamp()?;
        if tx.revoke_keys(consumer, Some(id), &at).await? > 0 {
            return Ok(Outcome::Changed);
        }
        if tx.consumer_has_key(consumer, id).await? {
            // The key is revoked already and keeps its first revocation time.
            return Ok(Outcome::Unchanged);
        }
        Err(StoreError::NotFound(format!(
            "key `{id}` of consumer `{consumer}`"
        )))
    }
    .await;
    finish(tx, version, "revoke key", outcome).await
}

pub(crate) async fn sync_declared<B: Backend>(
    backend: &B,
    declared: &Entities,
    keys: &[ApiKeyRecord],
) -> Result<u64, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let outcome = sync_declared_rows(&mut tx, declared, keys).await;
    finish(tx, version, "sync declared", outcome).await
}

/// Writes the declared entities in reference order: services, then the routes that name
/// them, then consumers, then the keys of those consumers.
async fn sync_declared_rows<T: Tx>(
    tx: &mut T,
    declared: &Entities,
    keys: &[ApiKeyRecord],
) -> Result<Outcome, StoreError> {
    let mut changed_entities = 0usize;
    for service in &declared.services {
        if upsert_if_changed(tx, service, None).await? {
            changed_entities += 1;
        }
    }
    for route in &declared.routes {
        require_route_service(tx, route).await?;
        if upsert_if_changed(tx, route, route.service.as_deref()).await? {
            changed_entities += 1;
        }
    }
    for consumer in &declared.consumers {
        if upsert_if_changed(tx, consumer, None).await? {
            changed_entities += 1;
        }
    }

    let mut inserted_keys = 0usize;
    for key in keys {
        if tx.key_exists(&key.id).await? {
            continue;
        }
        insert_key_row(tx, key).await?;
        inserted_keys += 1;
    }

    // A key removed from the file must stop working, so config-sourced keys of the declared
    // consumers that the file no longer lists are revoked.
    let declared_ids: std::collections::HashSet<&str> =
        keys.iter().map(|key| key.id.as_str()).collect();
    let now = codec::now_timestamp()?;
    let mut revoked_keys = 0u64;
    for consumer in &declared.consumers {
        for row in tx.consumer_keys(&consumer.name).await? {
            let stale = row.source == "config"
                && row.revoked_at.is_none()
                && !declared_ids.contains(row.id.as_str());
            if stale {
                revoked_keys += tx.revoke_keys(&consumer.name, Some(&row.id), &now).await?;
            }
        }
    }

    if changed_entities == 0 && inserted_keys == 0 && revoked_keys == 0 {
        return Ok(Outcome::Unchanged);
    }
    tracing::info!(
        changed_entities,
        inserted_keys,
        revoked_keys,
        "declared entities changed the store"
    );
    Ok(Outcome::Changed)
}

/// Writes key last-use times in one transaction, without a version bump.
pub(crate) async fn record_key_use<B: Backend>(
    backend: &B,
    uses: &[(String, i64)],
) -> Result<(), StoreError> {
    let (mut tx, _version) = backend.begin_write().await?;
    for (id, at) in uses {
        let at = time::OffsetDateTime::from_unix_timestamp(*at)
            .map_err(|error| StoreError::Invalid(format!("last-use time of key `{id}`: {error}")))
            .and_then(codec::format_timestamp);
        let result = match at {
            Ok(at) => tx.touch_key(id, &at).await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            if let Err(rollback_error) = tx.rollback().await {
                tracing::warn!(error = %rollback_error, "rollback after a failed key-use write failed");
            }
            return Err(error);
        }
    }
    tx.commit().await
}

/// Expands to the [`crate::Store`] methods that forward to this module, for use inside an
/// `impl Store` block of a type that implements [`Backend`]. The block itself defines
/// `backend` and `migrate`.
macro_rules! forward_store_methods {
    () => {
        fn version(&self) -> $crate::StoreFuture<'_, u64> {
            Box::pin($crate::ops::version(self))
        }

        fn load(&self) -> $crate::StoreFuture<'_, $crate::StoreState> {
            Box::pin($crate::ops::load(self))
        }

        fn secret<'a>(
            &'a self,
            name: &'a str,
            generate: &'a (dyn Fn() -> String + Send + Sync),
        ) -> $crate::StoreFuture<'a, String> {
            Box::pin($crate::ops::secret(self, name, generate))
        }

        fn put_service<'a>(
            &'a self,
            service: &'a portcullis_config::ServiceSpec,
        ) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::put_service(self, service))
        }

        fn delete_service<'a>(&'a self, name: &'a str) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::delete_service(self, name))
        }

        fn put_route<'a>(
            &'a self,
            route: &'a portcullis_config::RouteSpec,
        ) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::put_route(self, route))
        }

        fn delete_route<'a>(&'a self, name: &'a str) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::delete_route(self, name))
        }

        fn put_consumer<'a>(
            &'a self,
            consumer: &'a portcullis_config::ConsumerSpec,
        ) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::put_consumer(self, consumer))
        }

        fn delete_consumer<'a>(&'a self, name: &'a str) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::delete_consumer(self, name))
        }

        fn put_ai_price<'a>(
            &'a self,
            price: &'a portcullis_config::PriceSpec,
        ) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::put_ai_price(self, price))
        }

        fn delete_ai_price<'a>(&'a self, model: &'a str) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::delete_ai_price(self, model))
        }

        fn insert_key<'a>(&'a self, key: &'a $crate::ApiKeyRecord) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::insert_key(self, key))
        }

        fn list_keys<'a>(
            &'a self,
            consumer: &'a str,
        ) -> $crate::StoreFuture<'a, Vec<$crate::ApiKeyRecord>> {
            Box::pin($crate::ops::list_keys(self, consumer))
        }

        fn revoke_key<'a>(
            &'a self,
            consumer: &'a str,
            id: &'a str,
        ) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::revoke_key(self, consumer, id))
        }

        fn rotate_key<'a>(
            &'a self,
            rotation: &'a $crate::KeyRotation,
        ) -> $crate::StoreFuture<'a, $crate::RotatedKey> {
            Box::pin($crate::ops::rotate_key(self, rotation))
        }

        fn find_keys<'a>(
            &'a self,
            prefix: &'a str,
            consumer: Option<&'a str>,
        ) -> $crate::StoreFuture<'a, Vec<$crate::ApiKeyRecord>> {
            Box::pin($crate::ops::find_keys(self, prefix, consumer))
        }

        fn record_key_use<'a>(&'a self, uses: &'a [(String, i64)]) -> $crate::StoreFuture<'a, ()> {
            Box::pin($crate::ops::record_key_use(self, uses))
        }

        fn credentials(&self) -> $crate::StoreFuture<'_, Vec<$crate::CredentialRecord>> {
            Box::pin($crate::ops::credentials(self))
        }

        fn put_credential<'a>(
            &'a self,
            credential: &'a $crate::credentials::SealedCredential,
        ) -> $crate::StoreFuture<'a, (u64, $crate::CredentialRecord)> {
            Box::pin($crate::ops::put_credential(self, credential))
        }

        fn delete_credential<'a>(&'a self, name: &'a str) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::delete_credential(self, name))
        }

        fn sync_declared<'a>(
            &'a self,
            declared: &'a portcullis_config::Entities,
            keys: &'a [$crate::ApiKeyRecord],
        ) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::sync_declared(self, declared, keys))
        }

        fn replace_all<'a>(
            &'a self,
            declared: &'a portcullis_config::Entities,
            keys: &'a [$crate::ApiKeyRecord],
        ) -> $crate::StoreFuture<'a, u64> {
            Box::pin($crate::ops::replace_all(self, declared, keys))
        }
    };
}

pub(crate) use forward_store_methods;
