//! The OpenAPI 3.1 document of the admin API, served at `/openapi.json`.
//!
//! The document is written out here rather than derived from the handlers, because the entity
//! types carry custom serde forms (durations as `1s`, policies as single-key maps) that derive
//! macros describe poorly. A test compares its paths with the router's, so an endpoint cannot be
//! added or removed without the document following.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use portcullis_ai::prompt_openapi::PromptEndpoint;
use portcullis_config::PathMatch;
use serde_json::{Value, json};

use crate::{AdminState, ApiError};

pub async fn document() -> Json<Value> {
    Json(build())
}

/// Returns the OpenAPI document of the prompt endpoints: the store's routes with
/// `ai: {prompt: NAME}`, described with this node's `ai.prompts`.
pub async fn prompts_document(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<Value>, ApiError> {
    let entities = crate::entities::load_entities(&state).await?;
    let config = state.control.config();
    let prompts = config.ai.as_ref().map_or(&[][..], |ai| &ai.prompts[..]);
    let mut endpoints = Vec::new();
    for route in &entities.routes {
        let Some(prompt) = route.ai.as_ref().and_then(|ai| ai.prompt.as_ref()) else {
            continue;
        };
        for path in &route.paths {
            let path = match path {
                PathMatch::Prefix(prefix) => prefix.clone(),
                PathMatch::Exact { exact } => exact.clone(),
            };
            endpoints.push(PromptEndpoint {
                route: route.name.clone(),
                path,
                prompt: prompt.clone(),
            });
        }
    }
    Ok(Json(portcullis_ai::prompt_openapi::document(
        prompts, &endpoints,
    )))
}

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn list_of(name: &str) -> Value {
    json!({ "type": "object", "required": ["data"], "properties": { "data": { "type": "array", "items": schema_ref(name) } } })
}

fn name_parameter(what: &str) -> Value {
    json!({ "name": "name", "in": "path", "required": true, "description": format!("Name of the {what}"), "schema": { "type": "string" } })
}

/// Paths and operations of one entity collection.
fn collection(collection: &str, kind: &str, schema: &str) -> (String, Value, String, Value) {
    let body = json!({ "required": true, "content": { "application/json": { "schema": schema_ref(schema) } } });
    let list = json!({
        "get": {
            "summary": format!("List {collection}"),
            "operationId": format!("list_{collection}"),
            "responses": { "200": json_response(&format!("All {collection}"), list_of(schema)), "401": error_response("Missing or invalid admin token") }
        },
        "post": {
            "summary": format!("Create a {kind}"),
            "operationId": format!("create_{kind}"),
            "requestBody": body,
            "responses": {
                "201": json_response(&format!("The created {kind}"), schema_ref(schema)),
                "400": error_response("Invalid body; `details` lists each key"),
                "401": error_response("Missing or invalid admin token"),
                "409": error_response(&format!("A {kind} with that name exists")),
                "503": error_response("The store is unavailable; nothing was changed")
            }
        }
    });
    let item = json!({
        "parameters": [name_parameter(kind)],
        "get": {
            "summary": format!("Read a {kind}"),
            "operationId": format!("get_{kind}"),
            "responses": { "200": json_response(&format!("The {kind}"), schema_ref(schema)), "404": error_response("Not found") }
        },
        "put": {
            "summary": format!("Create or replace a {kind}"),
            "operationId": format!("put_{kind}"),
            "requestBody": body,
            "responses": {
                "200": json_response(&format!("The stored {kind}"), schema_ref(schema)),
                "400": error_response("Invalid body"),
                "409": error_response("The write conflicts with other entities"),
                "503": error_response("The store is unavailable; nothing was changed")
            }
        },
        "patch": {
            "summary": format!("Update a {kind} with a JSON merge patch (RFC 7396)"),
            "operationId": format!("patch_{kind}"),
            "requestBody": { "required": true, "content": { "application/merge-patch+json": { "schema": { "type": "object" } } } },
            "responses": {
                "200": json_response(&format!("The stored {kind}"), schema_ref(schema)),
                "400": error_response("Invalid result"),
                "404": error_response("Not found")
            }
        },
        "delete": {
            "summary": format!("Delete a {kind}"),
            "operationId": format!("delete_{kind}"),
            "responses": {
                "204": { "description": "Deleted" },
                "404": error_response("Not found"),
                "409": error_response("Another entity still uses it")
            }
        }
    });
    (
        format!("/{collection}"),
        list,
        format!("/{collection}/{{name}}"),
        item,
    )
}

fn build() -> Value {
    let mut paths = serde_json::Map::new();
    for (collection_name, kind, schema) in [
        ("services", "service", "Service"),
        ("routes", "route", "Route"),
        ("consumers", "consumer", "Consumer"),
    ] {
        let (list_path, list, item_path, item) = collection(collection_name, kind, schema);
        paths.insert(list_path, list);
        paths.insert(item_path, item);
    }
    paths.insert(
        "/consumers/{name}/keys".into(),
        json!({
            "parameters": [name_parameter("consumer")],
            "get": {
                "summary": "List a consumer's API keys, revoked ones included",
                "operationId": "list_keys",
                "responses": { "200": json_response("The keys, without plaintext or hash", list_of("Key")), "404": error_response("No such consumer") }
            },
            "post": {
                "summary": "Issue an API key",
                "description": "Returns the plaintext key once; the store keeps only its keyed hash.",
                "operationId": "create_key",
                "requestBody": { "required": false, "content": { "application/json": { "schema": schema_ref("CreateKey") } } },
                "responses": {
                    "201": json_response("The issued key with its plaintext", schema_ref("IssuedKey")),
                    "400": error_response("Invalid expiry"),
                    "404": error_response("No such consumer")
                }
            }
        }),
    );
    paths.insert(
        "/consumers/{name}/keys/{id}".into(),
        json!({
            "parameters": [name_parameter("consumer"), { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
            "get": { "summary": "Read an API key", "operationId": "get_key", "responses": { "200": json_response("The key", schema_ref("Key")), "404": error_response("Not found") } },
            "delete": {
                "summary": "Revoke an API key",
                "description": "The key stops working on this node before the response is sent.",
                "operationId": "revoke_key",
                "responses": { "204": { "description": "Revoked" }, "404": error_response("Not found") }
            }
        }),
    );
    paths.insert(
        "/services/{name}/health".into(),
        json!({
            "parameters": [name_parameter("service")],
            "get": {
                "summary": "Read the health of a service's targets as this node sees them",
                "description": "Each node runs its own health checks and circuit breakers, so nodes of a cluster may differ.",
                "operationId": "get_service_health",
                "responses": {
                    "200": json_response("Health, circuit state and load of each target", schema_ref("ServiceHealth")),
                    "401": error_response("Missing or invalid admin token"),
                    "404": error_response("No such service")
                }
            }
        }),
    );
    paths.insert(
        "/consumers/{name}/keys/{id}/rotate".into(),
        json!({
            "parameters": [name_parameter("consumer"), { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
            "post": {
                "summary": "Rotate an API key",
                "description": "Issues a new key with the old key's scopes and lifetime, and sets the old key to expire after the overlap (an earlier expiry stays). Returns the new plaintext once.",
                "operationId": "rotate_key",
                "requestBody": { "required": false, "content": { "application/json": { "schema": schema_ref("RotateKey") } } },
                "responses": {
                    "201": json_response("The new key with its plaintext, and the old key", schema_ref("RotatedKey")),
                    "400": error_response("Invalid overlap"),
                    "404": error_response("No such key"),
                    "409": error_response("The key is revoked, expired or rotated already")
                }
            }
        }),
    );
    paths.insert(
        "/keys".into(),
        json!({
            "get": {
                "summary": "Find API keys of any consumer by their public prefix",
                "description": "Matches keys whose stored prefix (the first 12 characters, such as `pcs_4vQe1kZ8`) starts with `prefix`. Revoked keys are included. Without parameters, lists every key.",
                "operationId": "find_keys",
                "parameters": [
                    { "name": "prefix", "in": "query", "required": false, "description": "Up to 12 leading characters of a key; longer values are rejected, because the rest is secret", "schema": { "type": "string", "maxLength": 12 } },
                    { "name": "consumer", "in": "query", "required": false, "description": "Only keys of this consumer", "schema": { "type": "string" } }
                ],
                "responses": { "200": json_response("The matching keys, without plaintext or hash", list_of("Key")), "400": error_response("Invalid query or a prefix longer than 12 characters") }
            }
        }),
    );
    paths.insert(
        "/config/reload".into(),
        json!({ "post": {
            "summary": "Re-read the configuration file, as SIGHUP does",
            "operationId": "reload_config",
            "responses": { "200": json_response("The new config version", json!({ "type": "object", "properties": { "config_version": { "type": "integer" } } })), "400": error_response("The file is invalid; nothing was changed") }
        }}),
    );
    paths.insert(
        "/ai/openapi.json".into(),
        json!({ "get": {
            "summary": "Read the OpenAPI document of the prompt endpoints",
            "description": "Lists each route with `ai: {prompt: NAME}` at its paths, with the input and output schemas of the prompt's active version from this node's `ai.prompts`. The paths are served by the gateway's listeners, not by the admin API.",
            "operationId": "get_prompts_openapi",
            "responses": { "200": json_response("An OpenAPI 3.1 document", json!({ "type": "object" })), "401": error_response("Missing or invalid admin token") }
        }}),
    );
    paths.insert(
        "/ai/usage".into(),
        json!({ "get": {
            "summary": "Report usage and cost of AI calls",
            "description": "Sums the calls, tokens by kind and cost that every node sharing the store recorded. The store keeps one row per hour, so a report covers whole hours: rows come from the hours that start in [from rounded down to the hour, to rounded up to the hour), and the response shows the rounded bounds. A call counts in the hour in which its response ended. The last second of calls may not be written yet. The store groups and sums in SQL; a report with more than `limit` rows fails with 400.",
            "operationId": "get_ai_usage",
            "parameters": [
                { "name": "group_by", "in": "query", "required": false, "description": "Comma-separated dimensions: consumer, credential_id, route, model, target, and one of hour and day (a UTC day). Without it, `rows` has one row with the totals. When no call matches, `rows` is empty.", "schema": { "type": "string" }, "examples": { "by_consumer_and_model": { "value": "consumer,model" } } },
                { "name": "from", "in": "query", "required": false, "description": "RFC 3339 start, rounded down to the hour; default 24 hours before `to`", "schema": { "type": "string", "format": "date-time" } },
                { "name": "to", "in": "query", "required": false, "description": "RFC 3339 end, exclusive, rounded up to the next full hour; default now", "schema": { "type": "string", "format": "date-time" } },
                { "name": "limit", "in": "query", "required": false, "description": "Maximum number of rows; a report with more fails with 400", "schema": { "type": "integer", "minimum": 1, "maximum": 10000, "default": 10000 } },
                { "name": "consumer", "in": "query", "required": false, "schema": { "type": "string" } },
                { "name": "credential_id", "in": "query", "required": false, "schema": { "type": "string" } },
                { "name": "route", "in": "query", "required": false, "schema": { "type": "string" } },
                { "name": "model", "in": "query", "required": false, "description": "The model as clients sent it: an alias or provider/model", "schema": { "type": "string" } }
            ],
            "responses": { "200": json_response("Rows per group and the totals", schema_ref("AiUsageReport")), "400": error_response("Invalid query parameter, or more than `limit` rows"), "401": error_response("Missing or invalid admin token") }
        }}),
    );
    let credential_name = name_parameter("credential");
    paths.insert(
        "/ai/credentials".into(),
        json!({ "get": {
            "summary": "List provider credentials",
            "description": "Metadata of every provider credential in the store. Values are never returned.",
            "operationId": "list_ai_credentials",
            "responses": { "200": json_response("All credentials", list_of("AiCredential")), "401": error_response("Missing or invalid admin token"), "503": error_response("This node has no `secrets.master_key`") }
        }}),
    );
    paths.insert(
        "/ai/credentials/{name}".into(),
        json!({
            "parameters": [credential_name],
            "get": {
                "summary": "Read a provider credential's metadata",
                "operationId": "get_ai_credential",
                "responses": { "200": json_response("The credential, without its value", schema_ref("AiCredential")), "401": error_response("Missing or invalid admin token"), "404": error_response("No such credential"), "503": error_response("This node has no `secrets.master_key`") }
            },
            "put": {
                "summary": "Create or replace a provider credential",
                "description": "Encrypts the value with this node's master key and stores it. Every node reloads, and providers whose `api_key` or `api_keys` name the credential use the new value from their next call.",
                "operationId": "put_ai_credential",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["value"], "additionalProperties": false, "properties": { "value": { "type": "string", "description": "The provider API key: printable ASCII without spaces, at most 8192 bytes", "writeOnly": true } } } } } },
                "responses": { "200": json_response("The stored credential, without its value", schema_ref("AiCredential")), "400": error_response("Invalid name or value"), "401": error_response("Missing or invalid admin token"), "503": error_response("This node has no `secrets.master_key`, or the store is unavailable") }
            },
            "delete": {
                "summary": "Delete a provider credential",
                "description": "Fails with 409 while a provider in this node's `ai.providers` uses the credential. Other nodes' files are not checked.",
                "operationId": "delete_ai_credential",
                "responses": { "204": { "description": "Deleted" }, "401": error_response("Missing or invalid admin token"), "404": error_response("No such credential"), "409": error_response("A provider of this node uses the credential"), "503": error_response("This node has no `secrets.master_key`") }
            }
        }),
    );
    paths.insert(
        "/ai/prices".into(),
        json!({ "get": {
            "summary": "List the effective AI price table",
            "description": "The prices of this node's `ai.prices` overlaid with the prices stored through this API, ordered by model. A stored price replaces the file's price of the same model as a whole, on every node that shares the store.",
            "operationId": "list_ai_prices",
            "responses": { "200": json_response("The table", json!({ "type": "object", "properties": { "data": { "type": "array", "items": schema_ref("AiPriceEntry") } } })), "401": error_response("Missing or invalid admin token") }
        }}),
    );
    paths.insert(
        "/ai/prices/{model}".into(),
        json!({
            "parameters": [{ "name": "model", "in": "path", "required": true, "description": "`provider/model`, such as `openai-main/gpt-4.1`. The `/` is sent as is, as in `/ai/prices/openai-main/gpt-4.1`.", "schema": { "type": "string" } }],
            "get": { "summary": "Read the effective price of a model", "operationId": "get_ai_price", "responses": { "200": json_response("The price and its source", schema_ref("AiPriceEntry")), "401": error_response("Missing or invalid admin token"), "404": error_response("The model has no price") } },
            "put": {
                "summary": "Store the price of a model",
                "description": "Replaces any stored price of the model. Calls on this node are priced with it before the response is sent, and other nodes apply it like any other store change. The provider must be defined in this node's `ai.providers`.",
                "operationId": "put_ai_price",
                "requestBody": { "required": true, "content": { "application/json": { "schema": schema_ref("AiPrice") } } },
                "responses": { "200": json_response("The stored price", schema_ref("AiPriceEntry")), "400": error_response("Invalid body: unknown field, negative price, or a model that is not `provider/model` of a defined provider"), "401": error_response("Missing or invalid admin token") }
            },
            "delete": {
                "summary": "Delete the stored price of a model",
                "description": "The price from the file's `ai.prices`, if any, applies again. File prices cannot be deleted here.",
                "operationId": "delete_ai_price",
                "responses": { "204": { "description": "Deleted" }, "401": error_response("Missing or invalid admin token"), "404": error_response("No stored price for the model") }
            }
        }),
    );
    paths.insert(
        "/health/live".into(),
        json!({ "get": { "summary": "Liveness probe", "operationId": "live", "security": [], "responses": { "200": { "description": "The process is running" } } } }),
    );
    paths.insert(
        "/health/ready".into(),
        json!({ "get": {
            "summary": "Readiness probe with the config version in service",
            "operationId": "ready",
            "security": [],
            "parameters": [{ "name": "strict", "in": "query", "required": false, "description": "Answer 503 instead of 200 while the node is degraded", "schema": { "type": "boolean", "default": false } }],
            "responses": { "200": json_response("Ready, or degraded (`status` says which) while serving the last good snapshot", schema_ref("Health")), "503": json_response("Degraded, with `strict=true` only", schema_ref("Health")) }
        }}),
    );
    paths.insert(
        "/metrics".into(),
        json!({ "get": { "summary": "Prometheus metrics", "operationId": "metrics", "security": [], "responses": { "200": { "description": "OpenMetrics text", "content": { "application/openmetrics-text": {} } } } } }),
    );
    paths.insert(
        "/openapi.json".into(),
        json!({ "get": { "summary": "This document", "operationId": "openapi", "security": [], "responses": { "200": { "description": "OpenAPI 3.1 document" } } } }),
    );

    let mut schemas = schemas();
    schemas["AiCredential"] = credential_schema();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "portcullis admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage the services, routes, consumers and API keys of a portcullis gateway."
        },
        "security": [{ "adminToken": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "adminToken": { "type": "http", "scheme": "bearer", "description": "The admin token from the config or the generated token file" } },
            "schemas": schemas
        }
    })
}

fn credential_schema() -> Value {
    json!({
        "type": "object",
        "required": ["name", "fingerprint", "key_id", "used_by", "created_at", "updated_at"],
        "properties": {
            "name": { "type": "string" },
            "fingerprint": { "type": ["string", "null"], "description": "First 8 hex digits of the SHA-256 of the value; null when this node cannot decrypt it", "examples": ["3f2a9c01"] },
            "key_id": { "type": "string", "description": "Id of the master key that encrypted the value: 16 hex digits" },
            "used_by": { "type": "array", "items": { "type": "string" }, "description": "Providers in this node's `ai.providers` that use the credential" },
            "created_at": { "type": "string", "format": "date-time" },
            "updated_at": { "type": "string", "format": "date-time" },
            "error": { "type": "string", "description": "Why this node cannot decrypt the value, such as a different master key" }
        }
    })
}

fn schemas() -> Value {
    let duration = json!({ "type": "string", "description": "A duration such as `1s`, `250ms` or `2m`", "examples": ["1s"] });
    json!({
        "AiUsageTotals": {
            "type": "object",
            "properties": {
                "calls": { "type": "integer" },
                "input_tokens": { "type": "integer" },
                "cache_read_tokens": { "type": "integer" },
                "cache_write_tokens": { "type": "integer" },
                "output_tokens": { "type": "integer" },
                "reasoning_tokens": { "type": "integer" },
                "cost": { "type": "number", "description": "From the price table in place when the call ended (`GET /ai/prices`); a call whose target has no price adds 0" },
                "estimated_calls": { "type": "integer", "description": "Calls with a token count estimated from characters" }
            }
        },
        "AiPrice": {
            "type": "object",
            "description": "Prices in currency units per million tokens, each a number of 0 or more. A request body with other fields is rejected.",
            "required": ["input_per_million", "output_per_million"],
            "properties": {
                "model": { "type": "string", "description": "`provider/model`; may be left out, and must equal the path's model when given" },
                "input_per_million": { "type": "number", "minimum": 0 },
                "output_per_million": { "type": "number", "minimum": 0 },
                "cache_read_per_million": { "type": "number", "minimum": 0, "description": "Defaults to `input_per_million`" },
                "cache_write_per_million": { "type": "number", "minimum": 0, "description": "Defaults to `input_per_million`" },
                "reasoning_per_million": { "type": "number", "minimum": 0, "description": "Defaults to `output_per_million`" }
            }
        },
        "AiPriceEntry": {
            "allOf": [{ "$ref": "#/components/schemas/AiPrice" }],
            "type": "object",
            "required": ["model", "source"],
            "properties": {
                "source": { "type": "string", "enum": ["file", "store"], "description": "`file` for the node's `ai.prices`, `store` for a price stored through this API" }
            }
        },
        "AiUsageReport": {
            "type": "object",
            "properties": {
                "from": { "type": "string", "format": "date-time" },
                "to": { "type": "string", "format": "date-time" },
                "group_by": { "type": "array", "items": { "type": "string" } },
                "rows": { "type": "array", "items": { "allOf": [{ "$ref": "#/components/schemas/AiUsageTotals" }], "description": "The totals, plus one key per `group_by` dimension; `hour` and `day` are RFC 3339 times" } },
                "totals": { "$ref": "#/components/schemas/AiUsageTotals" }
            }
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": {
                "type": "object",
                "required": ["status", "code", "message", "request_id"],
                "properties": {
                    "status": { "type": "integer" },
                    "code": { "type": "string", "description": "Stable machine-readable code" },
                    "message": { "type": "string" },
                    "request_id": { "type": "string" },
                    "details": { "type": "array", "items": { "type": "object", "properties": { "key": { "type": "string" }, "message": { "type": "string" } } } }
                }
            }}
        },
        "Service": {
            "type": "object",
            "required": ["name", "targets"],
            "properties": {
                "name": { "type": "string" },
                "targets": { "type": "array", "minItems": 1, "items": { "oneOf": [
                    { "type": "string", "format": "uri", "description": "A target with weight 1" },
                    { "type": "object", "required": ["url"], "additionalProperties": false, "properties": {
                        "url": { "type": "string", "format": "uri" },
                        "weight": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 1 }
                    } }
                ] } },
                "load_balancing": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "algorithm": { "type": "string", "enum": ["round-robin", "least-connections", "consistent-hash"], "default": "round-robin" },
                        "hash_on": { "type": "string", "enum": ["ip", "header", "consumer", "path"], "default": "ip" },
                        "hash_header": { "type": "string" }
                    }
                },
                "timeouts": { "type": "object", "properties": { "connect": duration, "response": duration, "idle": duration } },
                "preserve_host": { "type": "boolean", "default": false },
                "health_checks": schema_ref("HealthChecks"),
                "retries": schema_ref("Retries"),
                "circuit_breaker": schema_ref("CircuitBreaker"),
                "policies": { "type": "array", "items": schema_ref("Policy") }
            }
        },
        "HealthChecks": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "active": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "path": { "type": "string", "default": "/" },
                        "interval": duration,
                        "timeout": duration,
                        "healthy_threshold": { "type": "integer", "minimum": 1, "default": 2 },
                        "unhealthy_threshold": { "type": "integer", "minimum": 1, "default": 3 },
                        "expected_statuses": { "type": "array", "items": { "type": "integer" }, "description": "Empty means any 2xx or 3xx" }
                    }
                },
                "passive": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "unhealthy_threshold": { "type": "integer", "minimum": 1, "default": 5 },
                        "failure_statuses": { "type": "array", "items": { "type": "integer" }, "default": [500, 502, 503, 504] },
                        "ejection_time": duration
                    }
                }
            }
        },
        "Retries": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "attempts": { "type": "integer", "minimum": 0, "maximum": 10, "default": 2 },
                "on_statuses": { "type": "array", "items": { "type": "integer" } },
                "budget": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "ratio": { "type": "number", "minimum": 0, "maximum": 1, "default": 0.2 },
                        "min_per_second": { "type": "integer", "minimum": 0, "default": 10 },
                        "window": duration
                    }
                }
            }
        },
        "CircuitBreaker": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "consecutive_failures": { "type": "integer", "minimum": 1, "default": 5 },
                "failure_ratio": { "type": "number", "exclusiveMinimum": 0, "maximum": 1 },
                "min_requests": { "type": "integer", "minimum": 1, "default": 20 },
                "window": duration,
                "cooldown": duration,
                "half_open_requests": { "type": "integer", "minimum": 1, "default": 1 },
                "failure_statuses": { "type": "array", "items": { "type": "integer" }, "default": [500, 502, 503, 504] }
            }
        },
        "ServiceHealth": {
            "type": "object",
            "required": ["service", "algorithm", "healthy_targets", "targets"],
            "properties": {
                "service": { "type": "string" },
                "algorithm": { "type": "string", "enum": ["round-robin", "least-connections", "consistent-hash"] },
                "healthy_targets": { "type": "integer" },
                "targets": { "type": "array", "items": schema_ref("TargetHealth") }
            }
        },
        "TargetHealth": {
            "type": "object",
            "required": ["target", "address", "weight", "health", "in_flight", "probe_successes", "probe_failures", "request_failures"],
            "properties": {
                "target": { "type": "string", "description": "The target URL as configured" },
                "address": { "type": "string", "description": "host:port" },
                "weight": { "type": "integer" },
                "health": { "type": "string", "enum": ["healthy", "unhealthy"] },
                "unhealthy_cause": { "type": "string", "enum": ["active_check", "passive_check"] },
                "unhealthy_for_ms": { "type": "integer" },
                "circuit": { "type": "string", "enum": ["closed", "open", "half_open"], "description": "Absent without a circuit breaker" },
                "in_flight": { "type": "integer", "description": "Requests whose response has not ended" },
                "probe_successes": { "type": "integer", "description": "Consecutive successful active checks" },
                "probe_failures": { "type": "integer", "description": "Consecutive failed active checks" },
                "request_failures": { "type": "integer", "description": "Consecutive failed requests counted by passive checks" }
            }
        },
        "Route": {
            "type": "object",
            "required": ["name", "paths"],
            "properties": {
                "name": { "type": "string" },
                "service": { "type": "string", "description": "Required unless `ai` is set" },
                "ai": {
                    "type": "object",
                    "additionalProperties": false,
                    "description": "`{}` makes the route serve the node's AI gateway instead of a service",
                    "properties": {
                        "prompt": { "type": "string", "description": "Serve this entry of `ai.prompts` as a prompt endpoint" },
                        "guard": { "type": "string", "description": "Apply this entry of `ai.guards` to the route's prompts" }
                    }
                },
                "paths": { "type": "array", "items": { "oneOf": [
                    { "type": "string", "description": "Prefix that matches whole segments" },
                    { "type": "object", "required": ["exact"], "properties": { "exact": { "type": "string" } } }
                ] } },
                "methods": { "type": "array", "items": { "type": "string" } },
                "hosts": { "type": "array", "items": { "type": "string" } },
                "strip_prefix": { "type": "boolean", "default": false },
                "policies": { "type": "array", "items": schema_ref("Policy") }
            }
        },
        "Consumer": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": { "type": "string" },
                "roles": { "type": "array", "items": { "type": "string" } },
                "policies": { "type": "array", "items": schema_ref("Policy") },
                "key_rotation": schema_ref("KeyRotation"),
                "certificates": { "type": "array", "items": schema_ref("CertificateMatch"), "description": "Client certificate names that `mtls-auth` maps to this consumer; each name identifies at most one consumer" }
            }
        },
        "CertificateMatch": {
            "type": "object",
            "description": "Exactly one of `subject_cn` and `san`",
            "additionalProperties": false,
            "properties": {
                "subject_cn": { "type": "string", "description": "Subject common name, compared exactly" },
                "san": { "type": "string", "description": "Subject alternative name: `DNS:name`, `email:address` or `URI:uri`" }
            }
        },
        "KeyRotation": {
            "type": "object",
            "description": "Scheduled rotation of the consumer's issued keys; unset fields take the top-level `key_rotation` values",
            "properties": {
                "every": { "type": "string", "description": "Age at which an issued key is rotated, such as `30d`" },
                "overlap": { "type": "string", "description": "How long the old key keeps working next to the new one, such as `7d`" },
                "webhook": { "type": "string", "description": "http:// or https:// URL that receives each new key in a signed `key.rotated` event" }
            }
        },
        "Policy": {
            "description": "A single-key object naming the policy type",
            "oneOf": [
                { "type": "object", "required": ["key-auth"], "additionalProperties": false, "properties": { "key-auth": schema_ref("KeyAuth") } },
                { "type": "object", "required": ["acl"], "additionalProperties": false, "properties": { "acl": schema_ref("Acl") } },
                { "type": "object", "required": ["ip-restriction"], "additionalProperties": false, "properties": { "ip-restriction": schema_ref("IpRestriction") } },
                { "type": "object", "required": ["rate-limit"], "additionalProperties": false, "properties": { "rate-limit": schema_ref("RateLimit") } },
                { "type": "object", "required": ["jwt"], "additionalProperties": false, "properties": { "jwt": schema_ref("Jwt") } },
                { "type": "object", "required": ["oauth2-introspection"], "additionalProperties": false, "properties": { "oauth2-introspection": schema_ref("Oauth2Introspection") } },
                { "type": "object", "required": ["cors"], "additionalProperties": false, "properties": { "cors": schema_ref("Cors") } },
                { "type": "object", "required": ["csrf"], "additionalProperties": false, "properties": { "csrf": schema_ref("Csrf") } },
                { "type": "object", "required": ["security-headers"], "additionalProperties": false, "properties": { "security-headers": schema_ref("SecurityHeaders") } },
                { "type": "object", "required": ["waf"], "additionalProperties": false, "properties": { "waf": schema_ref("Waf") } },
                { "type": "object", "required": ["openid-connect"], "additionalProperties": false, "properties": { "openid-connect": schema_ref("OpenidConnect") } },
                { "type": "object", "required": ["mtls-auth"], "additionalProperties": false, "properties": { "mtls-auth": schema_ref("MtlsAuth") } },
                { "type": "object", "required": ["ai-limits"], "additionalProperties": false, "properties": { "ai-limits": schema_ref("AiLimits") } }
            ]
        },
        "MtlsAuth": {
            "type": "object",
            "description": "Authenticate by the TLS client certificate, mapped to a consumer by its `certificates`; takes no fields",
            "additionalProperties": false,
            "properties": {}
        },
        "KeyAuth": {
            "type": "object",
            "properties": {
                "header_names": { "type": "array", "items": { "type": "string" }, "default": ["apikey"] },
                "bearer": { "type": "boolean", "default": true },
                "query_param": { "type": "string" },
                "hide_credentials": { "type": "boolean", "default": true }
            }
        },
        "Acl": {
            "type": "object",
            "description": "Allow or deny authenticated consumers; runs after authentication",
            "properties": {
                "roles": { "type": "array", "items": { "type": "string" }, "description": "The consumer needs one of these roles" },
                "deny_roles": { "type": "array", "items": { "type": "string" } },
                "allow_consumers": { "type": "array", "items": { "type": "string" } },
                "deny_consumers": { "type": "array", "items": { "type": "string" } },
                "scopes": { "type": "array", "items": { "type": "string" }, "description": "The credential needs all of these scopes" },
                "all_roles": { "type": "array", "items": { "type": "string" }, "description": "The caller needs all of these roles" },
                "any_scopes": { "type": "array", "items": { "type": "string" }, "description": "The credential needs one of these scopes" }
            }
        },
        "Jwt": {
            "type": "object",
            "description": "JWT bearer-token authentication for one issuer; see docs/configuration.md",
            "required": ["algorithms"],
            "properties": {
                "issuer": { "type": "string" },
                "audiences": { "type": "array", "items": { "type": "string" } },
                "jwks_uri": { "type": "string" },
                "discovery": { "type": "boolean", "default": false },
                "keys": { "type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "kid": { "type": "string" },
                        "alg": { "type": "string" },
                        "pem": { "type": "string" },
                        "jwk": { "type": "object" },
                        "secret_env": { "type": "string", "description": "Name of the environment variable with the HMAC secret" }
                    }
                } },
                "algorithms": { "type": "array", "items": { "type": "string", "enum": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"] } },
                "consumer_claim": { "type": "string", "default": "sub" },
                "unknown_consumer": { "type": "string", "enum": ["reject", "anonymous"], "default": "reject" },
                "roles_claim": { "type": "string" },
                "scopes_claim": { "type": "string", "default": "scope" },
                "required_claims": { "type": "array", "items": { "type": "string" } },
                "leeway": duration,
                "require_exp": { "type": "boolean", "default": true },
                "max_token_bytes": { "type": "integer", "default": 8192 },
                "forward_claims": { "type": "object", "additionalProperties": { "type": "string" }, "description": "Claim name to upstream header name" },
                "hide_credentials": { "type": "boolean", "default": true },
                "jwks_refresh_interval": duration,
                "jwks_min_refresh_interval": duration,
                "jwks_timeout": duration
            }
        },
        "OpenidConnect": {
            "type": "object",
            "description": "OpenID Connect login (authorization code flow with PKCE) with an encrypted session cookie, and bearer JWTs of the same issuer; see docs/openid-connect.md",
            "required": ["issuer", "client_id", "redirect_uri", "session_secret_env"],
            "properties": {
                "issuer": { "type": "string" },
                "client_id": { "type": "string" },
                "client_auth": { "type": "string", "enum": ["client_secret_basic", "client_secret_post", "private_key_jwt"], "default": "client_secret_basic" },
                "client_secret_env": { "type": "string", "description": "Name of the environment variable with the client secret" },
                "private_key_env": { "type": "string", "description": "Name of the environment variable with the PEM private key for client assertions" },
                "private_key_id": { "type": "string" },
                "redirect_uri": { "type": "string", "description": "Absolute callback URL registered at the provider" },
                "scopes": { "type": "array", "items": { "type": "string" }, "default": ["openid"] },
                "authorization_params": { "type": "object", "additionalProperties": { "type": "string" } },
                "logout_path": { "type": "string" },
                "post_logout_redirect_uri": { "type": "string" },
                "session_secret_env": { "type": "string", "description": "Name of the environment variable with the cookie secret, at least 32 bytes" },
                "cookie_name": { "type": "string", "default": "portcullis_session" },
                "cookie_same_site": { "type": "string", "enum": ["lax", "strict", "none"], "default": "lax" },
                "cookie_secure": { "type": "boolean", "default": true },
                "cookie_path": { "type": "string", "default": "/" },
                "cookie_domain": { "type": "string" },
                "max_cookie_bytes": { "type": "integer", "default": 4096 },
                "session_lifetime": duration,
                "login_timeout": duration,
                "refresh_before": duration,
                "accept_bearer": { "type": "boolean", "default": false },
                "bearer_only": { "type": "boolean", "default": false },
                "bearer_audiences": { "type": "array", "items": { "type": "string" } },
                "algorithms": { "type": "array", "items": { "type": "string" }, "default": ["RS256", "PS256", "ES256"] },
                "leeway": duration,
                "consumer_claim": { "type": "string", "default": "sub" },
                "unknown_consumer": { "type": "string", "enum": ["reject", "anonymous"], "default": "reject" },
                "roles_claim": { "type": "string" },
                "forward_claims": { "type": "object", "additionalProperties": { "type": "string" } },
                "forward_access_token": { "type": "boolean", "default": false },
                "hide_credentials": { "type": "boolean", "default": true },
                "ca_file": { "type": "string" },
                "timeout": duration,
                "discovery_refresh_interval": duration
            }
        },
        "Oauth2Introspection": {
            "type": "object",
            "description": "OAuth 2.0 token introspection (RFC 7662, RFC 9701) at one authorization server; see docs/configuration.md",
            "required": ["client_id"],
            "properties": {
                "introspection_endpoint": { "type": "string" },
                "issuer": { "type": "string" },
                "client_id": { "type": "string" },
                "client_auth": { "type": "string", "enum": ["client_secret_basic", "client_secret_post", "private_key_jwt"], "default": "client_secret_basic" },
                "client_secret_env": { "type": "string", "description": "Name of the environment variable with the client secret" },
                "private_key_env": { "type": "string", "description": "Name of the environment variable with the PEM private key for client assertions" },
                "private_key_id": { "type": "string" },
                "response_format": { "type": "string", "enum": ["json", "jwt"], "default": "json" },
                "jwks_uri": { "type": "string" },
                "response_algorithms": { "type": "array", "items": { "type": "string" }, "default": ["RS256", "PS256", "ES256"] },
                "audiences": { "type": "array", "items": { "type": "string" } },
                "leeway": duration,
                "consumer_claim": { "type": "string", "default": "sub" },
                "unknown_consumer": { "type": "string", "enum": ["reject", "anonymous"], "default": "reject" },
                "roles_claim": { "type": "string" },
                "scopes_claim": { "type": "string", "default": "scope" },
                "forward_claims": { "type": "object", "additionalProperties": { "type": "string" } },
                "hide_credentials": { "type": "boolean", "default": true },
                "max_token_bytes": { "type": "integer", "default": 8192 },
                "ca_file": { "type": "string" },
                "timeout": duration,
                "cache_ttl": duration,
                "negative_cache_ttl": duration,
                "cache_max_entries": { "type": "integer", "default": 10000 },
                "stale_if_error": duration,
                "jwks_refresh_interval": duration
            }
        },
        "Cors": {
            "type": "object",
            "description": "Cross-origin resource sharing; answers preflights in the gateway",
            "properties": {
                "allowed_origins": { "type": "array", "items": { "type": "string" }, "description": "Exact origins such as `https://app.example.com`, or `*` alone" },
                "allowed_origin_patterns": { "type": "array", "items": { "type": "string" }, "description": "Patterns such as `https://*.example.com`, matching every subdomain" },
                "allowed_methods": { "type": "array", "items": { "type": "string" }, "default": ["GET", "HEAD", "POST"] },
                "allowed_headers": { "type": "array", "items": { "type": "string" }, "description": "Request headers a preflight may ask for, or `*` alone" },
                "exposed_headers": { "type": "array", "items": { "type": "string" } },
                "max_age": { "type": "string", "description": "Preflight cache lifetime such as `10m`, at most `24h`" },
                "allow_credentials": { "type": "boolean", "default": false, "description": "Not allowed together with the origin `*`" },
                "disallowed_origin": { "type": "string", "enum": ["ignore", "reject"], "default": "ignore" }
            }
        },
        "Csrf": {
            "type": "object",
            "description": "Cross-site request forgery check for unsafe methods on cookie-authenticated routes",
            "required": ["secret_env"],
            "properties": {
                "allowed_origins": { "type": "array", "items": { "type": "string" } },
                "sec_fetch_site": { "type": "array", "items": { "type": "string", "enum": ["same-origin", "same-site", "none"] }, "default": ["same-origin"] },
                "secret_env": { "type": "string", "description": "Name of the environment variable with the token secret (at least 32 bytes)" },
                "cookie_name": { "type": "string", "default": "portcullis-csrf" },
                "header_name": { "type": "string", "default": "x-csrf-token" },
                "token_ttl": { "type": "string", "default": "12h" },
                "cookie_same_site": { "type": "string", "enum": ["strict", "lax"], "default": "strict" },
                "exempt_headers": { "type": "array", "items": { "type": "string" }, "description": "Headers that exempt a request without cookies, such as `authorization` (Bearer only)" }
            }
        },
        "SecurityHeaders": {
            "type": "object",
            "description": "Security response headers; each header takes a value, `false` to leave it out, or `true` for its default",
            "properties": {
                "strict_transport_security": { "type": ["string", "boolean"], "default": "max-age=31536000; includeSubDomains" },
                "hsts_on_plain_http": { "type": "boolean", "default": false },
                "x_content_type_options": { "type": ["string", "boolean"], "default": "nosniff" },
                "x_frame_options": { "type": ["string", "boolean"], "default": "DENY" },
                "referrer_policy": { "type": ["string", "boolean"], "default": "no-referrer" },
                "permissions_policy": { "type": ["string", "boolean"], "default": "camera=(), geolocation=(), microphone=(), payment=(), usb=()" },
                "cross_origin_opener_policy": { "type": ["string", "boolean"], "default": "same-origin" },
                "content_security_policy": { "type": ["string", "boolean"], "default": "default-src 'none'; frame-ancestors 'none'" },
                "override": { "type": "array", "items": { "type": "string" }, "description": "Header names whose value replaces the upstream's" }
            }
        },
        "Waf": {
            "type": "object",
            "description": "Web application firewall in the inspect phase: the OWASP CRS from `rules_dir`, or the built-in rules",
            "properties": {
                "mode": { "type": "string", "enum": ["block", "detect"], "default": "block" },
                "rules_dir": { "type": "string", "description": "Directory of SecLang `*.conf` rule files on the gateway's host; a relative path resolves against the config file's folder, or the working directory for entities written through this API" },
                "paranoia": { "type": "integer", "minimum": 1, "maximum": 4, "default": 1 },
                "anomaly_threshold": { "type": "integer", "minimum": 1, "default": 5 },
                "body_limit": { "type": "integer", "minimum": 1, "default": 131072, "description": "Request body bytes read and inspected" },
                "on_body_over_limit": { "type": "string", "enum": ["block", "pass"], "default": "block" },
                "model": { "type": "string", "enum": ["on", "off"], "description": "Whether the learned model runs; default on for the built-in rules, off with `rules_dir`" },
                "model_threshold": { "type": "number", "minimum": 0, "maximum": 1, "description": "Attack probability at which the model alone adds 5 to the anomaly score; default the threshold shipped with the model" },
                "model_confirm_threshold": { "type": "number", "minimum": 0, "maximum": 1, "description": "Attack probability that a value matched by a built-in rule must reach for the match to count; default the one shipped with the model" },
                "exclusions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "description": "Rules selected by `rules` or `tags`; without `variables` they do not run, with `variables` they skip those values",
                        "properties": {
                            "rules": { "type": "array", "items": { "oneOf": [{ "type": "integer" }, { "type": "string", "description": "Inclusive range `LOW-HIGH`" }] } },
                            "tags": { "type": "array", "items": { "type": "string" } },
                            "variables": { "type": "array", "items": { "type": "string", "description": "SecLang target such as `ARGS:password`" } }
                        }
                    }
                }
            }
        },
        "IpRestriction": {
            "type": "object",
            "description": "Allow or deny by canonical client IP",
            "properties": {
                "allow": { "type": "array", "items": { "type": "string", "description": "CIDR or IP address" } },
                "deny": { "type": "array", "items": { "type": "string", "description": "CIDR or IP address" } }
            }
        },
        "RateLimit": {
            "type": "object",
            "description": "A rate limit, calendar quota or concurrency limit; which fields apply depends on `algorithm`",
            "required": ["limit"],
            "properties": {
                "name": { "type": "string" },
                "algorithm": { "type": "string", "enum": ["gcra", "sliding-window", "quota", "concurrency"], "default": "gcra" },
                "limit": { "type": "integer", "minimum": 1, "description": "Requests per window or period, or requests in flight for `concurrency`" },
                "window": duration,
                "period": { "type": "string", "enum": ["day", "month"], "description": "Calendar period (UTC) of a `quota`" },
                "burst": { "type": "integer", "minimum": 1 },
                "by": { "type": "string", "enum": ["consumer", "role", "route", "service", "ip", "header", "claim"], "default": "consumer" },
                "header": { "type": "string" },
                "claim": { "type": "string", "description": "JWT claim that keys the limit with `by: claim`" },
                "roles": { "type": "array", "items": { "type": "string" }, "description": "Consumer roles the limit applies to; empty means every request" },
                "delay": { "type": "object", "required": ["max"], "properties": { "max": duration } },
                "backend": { "type": "string", "enum": ["local", "redis"], "default": "local" },
                "batch": { "type": "integer", "minimum": 1, "description": "Requests a node takes from Redis at once" },
                "on_backend_error": { "type": "string", "enum": ["allow", "deny"], "default": "allow" },
                "lease_ttl": duration,
                "legacy_headers": { "type": "boolean", "default": false }
            }
        },
        "AiLimits": {
            "type": "object",
            "description": "Token limits and a money budget for the calls of `ai` routes, per consumer or team; needs at least one of `tokens_per_minute`, `tokens_per_day` and `budget`",
            "properties": {
                "name": { "type": "string" },
                "tokens_per_minute": { "type": "integer", "minimum": 1, "description": "Tokens per minute, refilled continuously" },
                "tokens_per_day": { "type": "integer", "minimum": 1, "description": "Tokens per calendar day in UTC" },
                "budget": { "type": "object", "required": ["amount", "period"], "properties": { "amount": { "type": "number", "exclusiveMinimum": 0, "description": "Spend per period, in the currency unit of ai.prices" }, "period": { "type": "string", "enum": ["day", "month"] } } },
                "by": { "type": "string", "enum": ["consumer", "team"], "default": "consumer" },
                "teams": { "type": "array", "items": { "type": "string" }, "description": "Consumer roles the limit applies to; empty means every consumer" },
                "models": { "type": "array", "items": { "type": "string" }, "description": "Requested models the limit applies to; empty means every model" },
                "per_model": { "type": "boolean", "default": false },
                "default_output_tokens": { "type": "integer", "minimum": 1, "default": 4096 },
                "backend": { "type": "string", "enum": ["local", "redis"], "default": "local" },
                "on_backend_error": { "type": "string", "enum": ["allow", "deny"], "default": "allow" }
            }
        },
        "CreateKey": {
            "type": "object",
            "properties": {
                "expires_at": { "type": "string", "format": "date-time" },
                "expires_in": { "type": "string", "description": "Duration from now, such as `30d`" },
                "scopes": { "type": "array", "items": { "type": "string" } }
            }
        },
        "Key": {
            "type": "object",
            "required": ["id", "consumer", "prefix", "created_at", "status"],
            "properties": {
                "id": { "type": "string" },
                "consumer": { "type": "string" },
                "prefix": { "type": "string", "description": "First characters of the key, to find it" },
                "created_at": { "type": "string", "format": "date-time" },
                "expires_at": { "type": ["string", "null"], "format": "date-time" },
                "revoked_at": { "type": ["string", "null"], "format": "date-time" },
                "rotated_from": { "type": ["string", "null"], "description": "Id of the key this one replaced" },
                "rotated_to": { "type": ["string", "null"], "description": "Id of the key that replaced this one" },
                "scopes": { "type": "array", "items": { "type": "string" } },
                "source": { "type": "string", "enum": ["config", "admin"] },
                "last_used_at": { "type": ["string", "null"], "format": "date-time", "description": "Last use, recorded in batches" },
                "status": { "type": "string", "enum": ["active", "expired", "revoked"] }
            }
        },
        "RotateKey": {
            "type": "object",
            "properties": {
                "overlap": { "type": "string", "description": "How long the old key keeps working, such as `24h`; `key_rotation.overlap` from the config when absent" }
            }
        },
        "RotatedKey": {
            "allOf": [schema_ref("IssuedKey"), { "type": "object", "required": ["previous"], "properties": { "previous": schema_ref("Key") } }]
        },
        "IssuedKey": {
            "allOf": [schema_ref("Key"), { "type": "object", "required": ["key"], "properties": { "key": { "type": "string", "description": "The plaintext key, shown only here" } } }]
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": { "type": "string", "enum": ["ready", "degraded"] },
                "config_version": { "type": "integer" },
                "store": { "type": "string" },
                "reason": { "type": "string" }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::build;

    /// Every path the router serves, in OpenAPI form.
    const ROUTER_PATHS: [&str; 23] = [
        "/services",
        "/services/{name}",
        "/services/{name}/health",
        "/routes",
        "/routes/{name}",
        "/consumers",
        "/consumers/{name}",
        "/consumers/{name}/keys",
        "/consumers/{name}/keys/{id}",
        "/consumers/{name}/keys/{id}/rotate",
        "/keys",
        "/config/reload",
        "/ai/openapi.json",
        "/ai/usage",
        "/ai/prices",
        "/ai/prices/{model}",
        "/ai/credentials",
        "/ai/credentials/{name}",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
        "/consumers/{name}/keys",
    ];

    #[test]
    fn document_lists_every_router_path() {
        let document = build();
        let paths = document["paths"].as_object().unwrap();
        for path in ROUTER_PATHS {
            assert!(
                paths.contains_key(path),
                "{path} is missing from the document"
            );
        }
        let mut unique: Vec<&str> = ROUTER_PATHS.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(
            paths.len(),
            unique.len(),
            "the document has paths the router does not serve"
        );
    }

    #[test]
    fn references_resolve() {
        let document = build();
        let text = document.to_string();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for reference in text.split("#/components/schemas/").skip(1) {
            let name: String = reference
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(schemas.contains_key(&name), "dangling reference to {name}");
        }
    }
}
