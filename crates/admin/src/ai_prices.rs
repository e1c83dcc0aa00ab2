//! `/ai/prices`: the effective AI price table, and the prices stored through the admin API.
//!
//! A stored price overrides the node file's `ai.prices` entry of the same `provider/model`
//! as a whole, on every node that shares the store. A write bumps the config version, so other
//! nodes swap their price table like after any other write. Deleting a stored price brings the
//! file's price back. File prices cannot be changed or deleted here.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use portcullis_ai::prices::{EffectivePrice, effective_prices};
use portcullis_config::PriceSpec;
use serde_json::{Value, json};

use crate::{AdminState, ApiError, parse_json};

/// Reads the effective price table of this node: its file's prices and the store's.
async fn load_table(state: &AdminState) -> Result<Vec<EffectivePrice>, ApiError> {
    let stored = state.control.store().load().await?.ai_prices;
    let config = state.control.config();
    let file = config.ai.as_ref().map_or(&[][..], |ai| &ai.prices[..]);
    Ok(effective_prices(file, &stored))
}

/// Lists the effective price table, ordered by model, each entry with its `source`.
pub async fn list(State(state): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let table = load_table(&state).await?;
    Ok(Json(json!({ "data": table })))
}

/// Reads the effective price of one model.
pub async fn get(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(model): crate::PathParams<String>,
) -> Result<Json<EffectivePrice>, ApiError> {
    load_table(&state)
        .await?
        .into_iter()
        .find(|entry| entry.spec.model == model)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "price of `{model}` not found in `ai.prices` or the store; store one with PUT /ai/prices/{model}"
            ))
        })
}

/// Stores the price of one model, replacing any stored one; the body's `model` may be left out.
pub async fn put(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(model): crate::PathParams<String>,
    crate::RawBody(body): crate::RawBody,
) -> Result<Json<EffectivePrice>, ApiError> {
    let mut value: Value = parse_json(&body)?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object with the price fields",
        ));
    };
    match object.get("model") {
        None => {
            object.insert("model".into(), Value::String(model.clone()));
        }
        Some(Value::String(body_model)) if *body_model == model => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the body's model {other} differs from the model `{model}` in the path"
            )));
        }
    }
    let bytes =
        serde_json::to_vec(&value).map_err(|error| ApiError::bad_request(error.to_string()))?;
    let mut price: PriceSpec = parse_json(&bytes)?;
    clear_negative_zeros(&mut price);

    let config = state.control.config();
    let errors = portcullis_config::validate_stored_price(&price, config.ai.as_ref());
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let version = state.control.store().put_ai_price(&price).await?;
    state.control.apply_write(version).await;
    tracing::info!(model = %price.model, config.version = version, "AI price stored through the admin API");
    Ok(Json(EffectivePrice {
        spec: price,
        source: portcullis_ai::prices::PriceSource::Store,
    }))
}

/// Deletes the stored price of one model, so the file's price, if any, applies again.
pub async fn delete(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(model): crate::PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let version = state
        .control
        .store()
        .delete_ai_price(&model)
        .await
        .map_err(|error| match error {
            portcullis_store::StoreError::NotFound(_) => ApiError::not_found(format!(
                "no stored price for `{model}`; prices from the file's `ai.prices` change only in the file"
            )),
            error => ApiError::from(error),
        })?;
    state.control.apply_write(version).await;
    tracing::info!(model = %model, config.version = version, "stored AI price deleted through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces each price of `-0.0`, which JSON allows and validation accepts, with `0.0`, so that
/// responses and the store never show a negative zero.
fn clear_negative_zeros(price: &mut PriceSpec) {
    let required = [&mut price.input_per_million, &mut price.output_per_million];
    let optional = [
        price.cache_read_per_million.as_mut(),
        price.cache_write_per_million.as_mut(),
        price.reasoning_per_million.as_mut(),
    ];
    for value in required.into_iter().chain(optional.into_iter().flatten()) {
        if *value == 0.0 {
            *value = 0.0;
        }
    }
}
