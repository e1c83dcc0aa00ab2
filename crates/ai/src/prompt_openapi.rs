//! The OpenAPI 3.1 document of the prompt endpoints that routes publish.
//!
//! Each endpoint is described with the input and output schemas of its prompt's active
//! version. The other versions are listed in the `version` parameter, because a caller may pin
//! one of them.

use portcullis_config::PromptSpec;
use serde_json::{Value, json};

use crate::prompts::X_PROMPT_VERSION;

/// A route that serves a prompt at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptEndpoint {
    pub route: String,
    pub path: String,
    pub prompt: String,
}

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

/// Builds the document. An endpoint whose prompt is not in `prompts` is left out.
pub fn document(prompts: &[PromptSpec], endpoints: &[PromptEndpoint]) -> Value {
    let mut paths = serde_json::Map::new();
    for endpoint in endpoints {
        let Some(prompt) = prompts.iter().find(|prompt| prompt.name == endpoint.prompt) else {
            continue;
        };
        let Some(active) = prompt.version(prompt.active) else {
            continue;
        };
        let versions: Vec<u32> = prompt
            .versions
            .iter()
            .map(|version| version.version)
            .collect();
        let output = match &active.output_schema {
            Some(schema) => schema.clone(),
            None => json!({
                "type": "object",
                "required": ["output"],
                "properties": { "output": { "type": "string", "description": "The model's reply" } }
            }),
        };
        let version_schema = json!({ "type": "integer", "enum": versions });
        let operation = json!({
            "summary": prompt.description.clone().unwrap_or_else(|| format!("Run the prompt `{}`", prompt.name)),
            "operationId": format!("prompt_{}", endpoint.route),
            "x-portcullis-prompt": prompt.name,
            "parameters": [
                { "name": X_PROMPT_VERSION.as_str(), "in": "header", "required": false, "description": format!("Prompt version to run; the active version, {}, when absent", prompt.active), "schema": version_schema },
                { "name": "version", "in": "query", "required": false, "description": "Prompt version to run, as with the header", "schema": version_schema }
            ],
            "requestBody": { "required": true, "content": { "application/json": { "schema": active.input_schema } } },
            "responses": {
                "200": {
                    "description": "The model's reply",
                    "headers": { X_PROMPT_VERSION.as_str(): { "description": "The version that served the request", "schema": { "type": "integer" } } },
                    "content": { "application/json": { "schema": output } }
                },
                "400": error_response("The body does not match the input schema (`invalid_input`, with the field in `param`), or a guard rejected the prompt"),
                "404": error_response("The pinned version does not exist (`prompt_version_not_found`)"),
                "502": error_response("The provider failed, or the model's reply does not match the output schema (`invalid_model_output`)")
            }
        });
        paths.insert(endpoint.path.clone(), json!({ "post": operation }));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "portcullis prompt endpoints",
            "version": "1",
            "description": "Prompt templates published as REST endpoints by routes with `ai: {prompt: NAME}`. Paths are relative to the gateway's listeners."
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "message": { "type": "string" },
                                "type": { "type": "string" },
                                "param": { "type": ["string", "null"] },
                                "code": { "type": "string" },
                                "status": { "type": "integer" },
                                "request_id": { "type": "string" }
                            }
                        }
                    }
                }
            }
        }
    })
}
