//! A mock of Azure OpenAI: `/openai/deployments/{deployment}/chat/completions` and
//! `/embeddings`, with the `api-key` header and a required `api-version` query. The deployment
//! name plays the model name's part in the OpenAI mock, and responses carry Azure's content
//! filter results. A stream starts with Azure's chunk of prompt filter results, which has no
//! choices, id or model.

use http::Response;
use http::request::Parts;
use serde_json::{Value, json};

use super::{MockBody, json_response, openai_completion, openai_stream_after};

pub const AZURE_KEY: &str = "test-azure-key";
/// The only `api-version` the mock serves.
pub const AZURE_API_VERSION: &str = "2024-10-21";

pub fn handle(parts: &Parts, body: &Value) -> Response<MockBody> {
    if parts.headers.get("api-key").and_then(|v| v.to_str().ok()) != Some(AZURE_KEY) {
        return json_response(
            401,
            json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}),
        );
    }
    let expected_query = format!("api-version={AZURE_API_VERSION}");
    if parts.uri.query() != Some(expected_query.as_str()) {
        return json_response(
            404,
            json!({"error": {"code": "404", "message": "Resource not found"}}),
        );
    }
    let Some((deployment, endpoint)) = parts
        .uri
        .path()
        .strip_prefix("/openai/deployments/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return json_response(
            404,
            json!({"error": {"code": "404", "message": "Resource not found"}}),
        );
    };
    if deployment.contains("missing") {
        return json_response(
            404,
            json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}}),
        );
    }
    if deployment.contains("429") {
        return json_response(
            429,
            json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation have exceeded the rate limit of your current tier."}}),
        );
    }
    match endpoint {
        "chat/completions" if body["stream"] == true => {
            let filter = json!({"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}}]});
            openai_stream_after(vec![Some(format!("data: {filter}\n\n"))], deployment, body)
        }
        "chat/completions" => {
            let mut completion = openai_completion(deployment, body);
            completion["prompt_filter_results"] = json!([{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}}]);
            completion["choices"][0]["content_filter_results"] =
                json!({"hate": {"filtered": false, "severity": "safe"}});
            json_response(200, completion)
        }
        "embeddings" => json_response(
            200,
            json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25, -1.0]}],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 6, "total_tokens": 6}
            }),
        ),
        _ => json_response(
            404,
            json!({"error": {"code": "404", "message": "Resource not found"}}),
        ),
    }
}
