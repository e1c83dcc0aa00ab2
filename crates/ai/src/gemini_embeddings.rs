//! Translation of OpenAI embeddings requests to Gemini's `models/{model}:batchEmbedContents`,
//! and of its response back to the OpenAI shape.
//!
//! Gemini embeds text only, one `EmbedContentRequest` per input string, and returns the
//! vectors in request order as `{"embeddings": [{"values": [...]}]}`.

use base64::Engine;
use serde_json::{Value, json};

use crate::error::AiError;
use crate::usage::Usage;

/// Maximum inputs in one `batchEmbedContents` call, a limit of the Gemini API.
pub const MAX_BATCH_INPUTS: usize = 100;

/// A translated embeddings request.
pub struct BatchRequest {
    pub body: Value,
    /// Number of inputs, which the response must match.
    pub inputs: usize,
    /// The client asked for `encoding_format: base64`.
    pub base64: bool,
}

/// Translates an OpenAI embeddings request for Gemini `model`.
pub fn to_batch_request(body: &Value, model: &str) -> Result<BatchRequest, AiError> {
    let texts = input_texts(body.get("input"))?;
    if texts.len() > MAX_BATCH_INPUTS {
        return Err(AiError::invalid_request(
            "too_many_inputs",
            format!(
                "`input` has {} strings, but a Gemini target embeds at most {MAX_BATCH_INPUTS} per request; split the request",
                texts.len()
            ),
        )
        .with_param("input"));
    }
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(format) if format == "float" => false,
        Some(format) if format == "base64" => true,
        Some(format) => {
            return Err(AiError::invalid_request(
                "invalid_encoding_format",
                format!("invalid `encoding_format` {format}; use \"float\" or \"base64\""),
            )
            .with_param("encoding_format"));
        }
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            AiError::invalid_request(
                "invalid_dimensions",
                format!("invalid `dimensions` {value}; use a positive integer"),
            )
            .with_param("dimensions")
        })?),
    };
    let model_name = format!("models/{model}");
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut request = json!({
                "model": model_name,
                "content": {"parts": [{"text": text}]},
            });
            if let Some(dimensions) = dimensions {
                request["outputDimensionality"] = json!(dimensions);
            }
            request
        })
        .collect();
    Ok(BatchRequest {
        body: json!({ "requests": requests }),
        inputs: texts.len(),
        base64,
    })
}

/// Reads `input`: one string or a list of strings. Token arrays are rejected, because Gemini
/// takes text, and so are empty strings, as OpenAI rejects them.
fn input_texts(input: Option<&Value>) -> Result<Vec<&str>, AiError> {
    let invalid = |message: &str| {
        AiError::invalid_request("invalid_input", message.to_string()).with_param("input")
    };
    let texts: Vec<&str> = match input {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| {
                item.as_str().ok_or_else(|| {
                    invalid(
                        "`input` for a Gemini target must be a string or a list of strings; token arrays are not supported",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => return Err(invalid("`input` must not be an empty list")),
        None | Some(Value::Null) => {
            return Err(AiError::invalid_request("missing_input", "`input` is required")
                .with_param("input"));
        }
        Some(_) => return Err(invalid("`input` must be a string or a list of strings")),
    };
    if texts.iter().any(|text| text.is_empty()) {
        return Err(invalid("`input` must not contain empty strings"));
    }
    Ok(texts)
}

/// Returns the characters of the request's `input` strings, or of its JSON text when `input`
/// contains token arrays, for estimating the token count.
pub fn input_chars(body: &Value) -> u64 {
    match input_texts(body.get("input")) {
        Ok(texts) => texts.iter().map(|text| text.chars().count() as u64).sum(),
        Err(_) => body
            .get("input")
            .map_or(0, |input| input.to_string().len() as u64),
    }
}

/// Returns the usage of a `batchEmbedContents` response, when Gemini sent `usageMetadata`.
pub fn usage(response: &Value) -> Option<Usage> {
    Usage::from_gemini(&response["usageMetadata"])
}

/// Translates a `batchEmbedContents` response into an OpenAI embeddings list. `prompt_tokens`
/// is the input token count to report. Returns an error message when the response does not
/// have one vector of numbers per input.
pub fn to_embeddings_response(
    response: &Value,
    request: &BatchRequest,
    model: &str,
    prompt_tokens: u64,
) -> Result<Value, String> {
    let embeddings = response["embeddings"]
        .as_array()
        .ok_or("the Gemini response has no `embeddings` list")?;
    if embeddings.len() != request.inputs {
        return Err(format!(
            "the Gemini response has {} embeddings for {} inputs",
            embeddings.len(),
            request.inputs
        ));
    }
    let mut data = Vec::with_capacity(embeddings.len());
    for (index, embedding) in embeddings.iter().enumerate() {
        let values: Vec<f64> = embedding["values"]
            .as_array()
            .ok_or_else(|| format!("embeddings[{index}] of the Gemini response has no `values`"))?
            .iter()
            .map(Value::as_f64)
            .collect::<Option<_>>()
            .ok_or_else(|| {
                format!(
                    "embeddings[{index}] of the Gemini response has a value that is not a number"
                )
            })?;
        let vector = if request.base64 {
            json!(encode_base64(&values))
        } else {
            json!(values)
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": vector}));
    }
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

/// Encodes a vector as OpenAI does for `encoding_format: base64`: little-endian 32-bit floats.
fn encode_base64(values: &[f64]) -> String {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|value| (*value as f32).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_and_list_inputs() {
        let one = to_batch_request(&json!({"input": "hello"}), "gemini-embedding-001").unwrap();
        assert_eq!(one.inputs, 1);
        assert_eq!(
            one.body,
            json!({"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello"}]}}]})
        );
        let list = to_batch_request(
            &json!({"input": ["a", "bc"], "dimensions": 256, "encoding_format": "base64"}),
            "m",
        )
        .unwrap();
        assert_eq!(list.inputs, 2);
        assert_eq!(input_chars(&json!({"input": ["a", "bc"]})), 3);
        assert!(list.base64);
        assert_eq!(
            list.body["requests"][1]["content"]["parts"][0]["text"],
            "bc"
        );
        assert_eq!(list.body["requests"][1]["outputDimensionality"], 256);
    }

    #[test]
    fn invalid_inputs_are_rejected() {
        let cases = [
            (json!({}), "missing_input"),
            (json!({"input": []}), "invalid_input"),
            (json!({"input": [1, 2, 3]}), "invalid_input"),
            (json!({"input": ["a", ""]}), "invalid_input"),
            (json!({"input": 5}), "invalid_input"),
            (
                json!({"input": "a", "encoding_format": "hex"}),
                "invalid_encoding_format",
            ),
            (json!({"input": "a", "dimensions": 0}), "invalid_dimensions"),
            (json!({"input": vec!["a"; 101]}), "too_many_inputs"),
        ];
        for (body, code) in cases {
            let error = to_batch_request(&body, "m").err().unwrap();
            assert_eq!(error.code, code, "{body}");
            assert_eq!(error.status, 400, "{body}");
        }
    }

    #[test]
    fn response_in_openai_shape() {
        let request = to_batch_request(&json!({"input": ["a", "b"]}), "m").unwrap();
        let gemini = json!({"embeddings": [{"values": [0.5, -1.0]}, {"values": [0.25, 2.0]}]});
        let openai = to_embeddings_response(&gemini, &request, "m", 7).unwrap();
        assert_eq!(openai["object"], "list");
        assert_eq!(openai["data"][1]["index"], 1);
        assert_eq!(openai["data"][1]["embedding"], json!([0.25, 2.0]));
        assert_eq!(openai["usage"]["prompt_tokens"], 7);
        assert_eq!(openai["usage"]["total_tokens"], 7);
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let request =
            to_batch_request(&json!({"input": "a", "encoding_format": "base64"}), "m").unwrap();
        let gemini = json!({"embeddings": [{"values": [1.0, -2.5]}]});
        let openai = to_embeddings_response(&gemini, &request, "m", 1).unwrap();
        let encoded = openai["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(bytes[..4], 1.0f32.to_le_bytes());
        assert_eq!(bytes[4..], (-2.5f32).to_le_bytes());
    }

    #[test]
    fn count_mismatch_is_an_error() {
        let request = to_batch_request(&json!({"input": ["a", "b"]}), "m").unwrap();
        let gemini = json!({"embeddings": [{"values": [0.5]}]});
        let error = to_embeddings_response(&gemini, &request, "m", 1).unwrap_err();
        assert!(error.contains("1 embeddings for 2 inputs"), "{error}");
    }
}
