//! CRUD handlers for services, routes and consumers, written once over [`Resource`].

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_config::{AiConfig, ConsumerSpec, Entities, KeyError, RouteSpec, ServiceSpec};
use portcullis_store::{Store, StoreFuture};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{AdminState, ApiError, parse_json};

/// An entity type served under `/{COLLECTION}`.
pub trait Resource: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Singular name for messages, such as `service`.
    const KIND: &'static str;
    /// Collection path segment, such as `services`.
    const COLLECTION: &'static str;

    fn name(&self) -> &str;
    fn all(entities: &Entities) -> &[Self];
    /// Checks the entity against itself, the other entities in the store, and the `ai`
    /// section of this node's file, which its prompt, guard and `ai-limits` models must name.
    fn validate(&self, entities: &Entities, ai: Option<&AiConfig>) -> Vec<KeyError>;
    fn put<'a>(&'a self, store: &'a dyn Store) -> StoreFuture<'a, u64>;
    fn delete<'a>(name: &'a str, store: &'a dyn Store) -> StoreFuture<'a, u64>;
}

impl Resource for ServiceSpec {
    const KIND: &'static str = "service";
    const COLLECTION: &'static str = "services";

    fn name(&self) -> &str {
        &self.name
    }

    fn all(entities: &Entities) -> &[Self] {
        &entities.services
    }

    fn validate(&self, _entities: &Entities, ai: Option<&AiConfig>) -> Vec<KeyError> {
        let mut errors = portcullis_config::validate_service_fields("", self);
        errors.extend(portcullis_config::validate_ai_limit_models(
            ".policies",
            &self.policies,
            ai,
        ));
        errors.extend(name_errors(&self.name));
        strip_leading_dot(errors)
    }

    fn put<'a>(&'a self, store: &'a dyn Store) -> StoreFuture<'a, u64> {
        store.put_service(self)
    }

    fn delete<'a>(name: &'a str, store: &'a dyn Store) -> StoreFuture<'a, u64> {
        store.delete_service(name)
    }
}

impl Resource for RouteSpec {
    const KIND: &'static str = "route";
    const COLLECTION: &'static str = "routes";

    fn name(&self) -> &str {
        &self.name
    }

    fn all(entities: &Entities) -> &[Self] {
        &entities.routes
    }

    fn validate(&self, entities: &Entities, ai: Option<&AiConfig>) -> Vec<KeyError> {
        let mut errors = portcullis_config::validate_route_fields("", self);
        errors.extend(portcullis_config::validate_ai_limit_models(
            ".policies",
            &self.policies,
            ai,
        ));
        if let Some(route_ai) = &self.ai {
            errors.extend(portcullis_config::validate_route_settings("", route_ai, ai));
        }
        errors.extend(name_errors(&self.name));
        match &self.service {
            None if self.ai.is_some() => {}
            None => errors.push(KeyError {
                key: ".service".into(),
                message: "a route needs a service, or `ai: {}` to serve the AI gateway".into(),
            }),
            Some(_) if self.ai.is_some() => errors.push(KeyError {
                key: ".service".into(),
                message: "an `ai` route serves requests itself and takes no `service`".into(),
            }),
            Some(service)
                if !entities
                    .services
                    .iter()
                    .any(|existing| &existing.name == service) =>
            {
                errors.push(KeyError {
                    key: ".service".into(),
                    message: format!("service `{service}` does not exist"),
                })
            }
            Some(_) => {}
        }
        strip_leading_dot(errors)
    }

    fn put<'a>(&'a self, store: &'a dyn Store) -> StoreFuture<'a, u64> {
        store.put_route(self)
    }

    fn delete<'a>(name: &'a str, store: &'a dyn Store) -> StoreFuture<'a, u64> {
        store.delete_route(name)
    }
}

impl Resource for ConsumerSpec {
    const KIND: &'static str = "consumer";
    const COLLECTION: &'static str = "consumers";

    fn name(&self) -> &str {
        &self.name
    }

    fn all(entities: &Entities) -> &[Self] {
        &entities.consumers
    }

    fn validate(&self, entities: &Entities, ai: Option<&AiConfig>) -> Vec<KeyError> {
        let mut errors = portcullis_config::validate_consumer_fields("", self);
        errors.extend(portcullis_config::validate_ai_limit_models(
            ".policies",
            &self.policies,
            ai,
        ));
        errors.extend(portcullis_config::validate_certificate_owners(
            "",
            self,
            &entities.consumers,
        ));
        errors.extend(name_errors(&self.name));
        if !self.api_keys.is_empty() {
            errors.push(KeyError {
                key: ".api_keys".into(),
                message: format!(
                    "keys are not set here; create them with POST /consumers/{}/keys",
                    self.name
                ),
            });
        }
        strip_leading_dot(errors)
    }

    fn put<'a>(&'a self, store: &'a dyn Store) -> StoreFuture<'a, u64> {
        store.put_consumer(self)
    }

    fn delete<'a>(name: &'a str, store: &'a dyn Store) -> StoreFuture<'a, u64> {
        store.delete_consumer(name)
    }
}

fn name_errors(name: &str) -> Vec<KeyError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Vec::new()
    } else {
        vec![KeyError {
            key: "name".into(),
            message: format!(
                "invalid name `{name}`; use 1 to 128 letters, digits, `-`, `_` or `.`"
            ),
        }]
    }
}

/// Turns the `.targets[0]` form produced for a root-level entity into `targets[0]`.
fn strip_leading_dot(errors: Vec<KeyError>) -> Vec<KeyError> {
    errors
        .into_iter()
        .map(|error| KeyError {
            key: error.key.trim_start_matches('.').to_string(),
            message: error.message,
        })
        .collect()
}

pub(crate) async fn load_entities(state: &AdminState) -> Result<Entities, ApiError> {
    Ok(state.control.store().load().await?.entities)
}

pub async fn list<R: Resource>(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<Value>, ApiError> {
    let entities = load_entities(&state).await?;
    let items = R::all(&entities);
    Ok(Json(serde_json::json!({ "data": items })))
}

pub async fn get<R: Resource>(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(name): crate::PathParams<String>,
) -> Result<Json<R>, ApiError> {
    let entities = load_entities(&state).await?;
    R::all(&entities)
        .iter()
        .find(|item| item.name() == name)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("{} `{name}` not found", R::KIND)))
}

pub async fn create<R: Resource>(
    State(state): State<Arc<AdminState>>,
    crate::RawBody(body): crate::RawBody,
) -> Result<Response, ApiError> {
    let item: R = parse_json(&body)?;
    let entities = load_entities(&state).await?;
    if R::all(&entities)
        .iter()
        .any(|existing| existing.name() == item.name())
    {
        return Err(ApiError::conflict(format!(
            "{} `{}` exists already; update it with PUT or PATCH /{}/{}",
            R::KIND,
            item.name(),
            R::COLLECTION,
            item.name()
        )));
    }
    write(&state, &item, &entities).await?;
    let location = format!("/{}/{}", R::COLLECTION, item.name());
    let mut response = (StatusCode::CREATED, Json(item)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Creates or replaces the entity at `/{collection}/{name}`; the body's `name` may be left out.
pub async fn put<R: Resource>(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(name): crate::PathParams<String>,
    crate::RawBody(body): crate::RawBody,
) -> Result<Json<R>, ApiError> {
    let value: Value = parse_json(&body)?;
    let item: R = with_path_name(value, &name)?;
    let entities = load_entities(&state).await?;
    write(&state, &item, &entities).await?;
    Ok(Json(item))
}

/// Updates the entity with a JSON merge patch (RFC 7396).
pub async fn patch<R: Resource>(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(name): crate::PathParams<String>,
    crate::RawBody(body): crate::RawBody,
) -> Result<Json<R>, ApiError> {
    let patch: Value = parse_json(&body)?;
    let entities = load_entities(&state).await?;
    let existing = R::all(&entities)
        .iter()
        .find(|item| item.name() == name)
        .ok_or_else(|| ApiError::not_found(format!("{} `{name}` not found", R::KIND)))?;
    let mut value =
        serde_json::to_value(existing).map_err(|error| ApiError::bad_request(error.to_string()))?;
    merge_patch(&mut value, patch);
    let item: R = with_path_name(value, &name)?;
    write(&state, &item, &entities).await?;
    Ok(Json(item))
}

pub async fn delete<R: Resource>(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(name): crate::PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let version = R::delete(&name, state.control.store().as_ref()).await?;
    state.control.apply_write(version).await;
    tracing::info!(entity = R::KIND, name = %name, "deleted through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

async fn write<R: Resource>(
    state: &AdminState,
    item: &R,
    entities: &Entities,
) -> Result<(), ApiError> {
    let config = state.control.config();
    let errors = item.validate(entities, config.ai.as_ref());
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let version = item.put(state.control.store().as_ref()).await?;
    state.control.apply_write(version).await;
    tracing::info!(
        entity = R::KIND,
        name = item.name(),
        config.version = version,
        "written through the admin API"
    );
    Ok(())
}

fn with_path_name<R: Resource>(mut value: Value, name: &str) -> Result<R, ApiError> {
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object describing a {}",
            R::KIND
        )));
    };
    match object.get("name") {
        None => {
            object.insert("name".into(), Value::String(name.to_string()));
        }
        Some(Value::String(body_name)) if body_name == name => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the body's name {other} differs from the name `{name}` in the path; renaming is not supported"
            )));
        }
    }
    let bytes =
        serde_json::to_vec(&value).map_err(|error| ApiError::bad_request(error.to_string()))?;
    parse_json(&bytes)
}

/// Applies an RFC 7396 JSON merge patch to `target`.
fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(object) = target else {
        unreachable!("target was just made an object")
    };
    for (key, value) in patch {
        if value.is_null() {
            object.remove(&key);
        } else {
            merge_patch(object.entry(key).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"list": [1, 2]});
        merge_patch(&mut target, json!({"list": [3]}));
        assert_eq!(target, json!({"list": [3]}));
    }
}
