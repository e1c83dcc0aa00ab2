//! The AI gateway's endpoints, provider calls and fallback.
//!
//! A route with `ai: {}` hands its requests here with the route prefix removed, so `/v1` routes
//! serve `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`, and `/v1/messages` for
//! Anthropic clients. A request's `model` is an alias from `ai.models` or a direct
//! `provider/model`. Targets are tried in order: a connect error, a timeout, 429 or 5xx moves to
//! the next target, but only before any response byte reached the client, so a stream is never
//! restarted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_config::{
    AiConfig, AiRouteSpec, AliasTarget, ApiKey, PriceSpec, ProviderKind, ProviderRetries,
    ProviderSpec, split_target,
};
use serde_json::{Value, json};

use crate::attempt::{TargetOutcome, call_target, target_order};
use crate::error::AiError;
use crate::guards::{Endpoint, Guard};
use crate::pool::KeyPool;
use crate::prices::PriceTable;
use crate::prompts::Prompt;
use crate::record::CallRecord;
use crate::stream::{
    AnthropicPassthrough, AnthropicStream, GeminiStream, OpenAiStream, TranslatedStream, Translator,
};
use crate::usage::{Price, Usage};
use crate::{anthropic, gemini, gemini_embeddings, limits, tool_ids};

/// Boxed error of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every AI response.
pub type AiBody = UnsyncBoxBody<Bytes, BoxError>;

/// Response header naming the `provider/model` that served the call.
pub const X_TARGET: HeaderName = HeaderName::from_static("x-portcullis-target");
/// Version of the Anthropic Messages API the translation implements.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Largest non-streaming provider response read, in bytes.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Largest provider error body read for its message, in bytes.
pub(crate) const MAX_ERROR_BYTES: usize = 64 * 1024;

type ProviderClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An AI request after routing, with the route prefix removed from `path`.
pub struct AiRequest {
    pub method: Method,
    pub path: String,
    /// The client's request headers; `/messages` passes the `anthropic-*` ones on.
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub request_id: String,
    /// Output tokens per choice that the provider may produce, from an `ai-limits`
    /// reservation. A request that allows more, or sets no allowance, is capped to it.
    pub max_output_tokens: Option<u64>,
    /// The query string, which a prompt endpoint reads its `version` from.
    pub query: Option<String>,
    /// The route's `ai` settings: the prompt it serves and the guard it applies.
    pub route: AiRouteSpec,
}

/// The response and, for a call that reached a provider, its usage record.
pub struct AiResponse {
    pub response: Response<AiBody>,
    pub call: Option<Arc<CallRecord>>,
    /// Time spent waiting for providers over every target tried: until the response headers,
    /// and for a response that is not streamed, also while its body is read.
    pub upstream_latency: Option<Duration>,
}

pub(crate) struct Provider {
    pub(crate) name: Arc<str>,
    kind: ProviderKind,
    /// Base URL without a trailing `/`.
    base_url: String,
    pub(crate) keys: KeyPool,
    pub(crate) retries: ProviderRetries,
    default_max_tokens: u32,
    /// The `api-version` query of an `azure-openai` provider.
    azure_api_version: String,
    response_timeout: Duration,
    client: ProviderClient,
}

pub(crate) struct Target {
    pub(crate) provider: Arc<Provider>,
    model: String,
    /// `provider/model`.
    pub(crate) key: Arc<str>,
    /// The alias's weight for this target, when the alias balances load.
    weight: Option<u32>,
}

/// A provider request ready to send.
pub(crate) struct Prepared {
    url: String,
    body: Bytes,
    json_mode: bool,
    /// Headers the client set for the provider, such as `anthropic-version`.
    headers: http::HeaderMap,
}

/// A provider response with a success status, and how the call got there.
struct Served {
    target: usize,
    response: Response<Incoming>,
    json_mode: bool,
    attempts: u32,
    latency: Duration,
}

/// The compiled `ai` section.
pub struct Gateway {
    providers: HashMap<String, Arc<Provider>>,
    /// Aliases in config order, for `/models`.
    aliases: Vec<(String, Vec<AliasTarget>)>,
    /// The file's prices overlaid with the stored ones, swapped on a store change.
    prices: PriceTable,
    pub(crate) prompts: HashMap<String, Prompt>,
    guards: HashMap<String, Guard>,
}

/// A provider, prompt or guard could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up `{provider}` of the `ai` section: {message}")]
pub struct SetupError {
    /// The name of the provider, prompt or guard.
    pub provider: String,
    pub message: String,
}

impl Gateway {
    /// Builds the providers' clients, aliases and prices from a validated `ai` section.
    pub fn new(config: &AiConfig) -> Result<Gateway, SetupError> {
        let mut providers = HashMap::new();
        for spec in &config.providers {
            providers.insert(spec.name.clone(), Arc::new(provider(spec)?));
        }
        let setup_error = |name: &str, message: String| SetupError {
            provider: name.to_string(),
            message,
        };
        let mut prompts = HashMap::new();
        for spec in &config.prompts {
            let prompt = Prompt::new(spec).map_err(|message| setup_error(&spec.name, message))?;
            prompts.insert(spec.name.clone(), prompt);
        }
        let mut guards = HashMap::new();
        for spec in &config.guards {
            let guard = Guard::new(spec).map_err(|message| setup_error(&spec.name, message))?;
            guards.insert(spec.name.clone(), guard);
        }
        Ok(Gateway {
            prompts,
            guards,
            providers,
            aliases: config
                .models
                .iter()
                .map(|alias| (alias.name.clone(), alias.targets.clone()))
                .collect(),
            prices: PriceTable::new(&config.prices),
        })
    }

    /// Lays `stored`, the prices stored through the admin API, over the file's prices. A call
    /// is priced with the table in place when its provider responds, and an `ai-limits`
    /// reservation with the table in place when the request arrives.
    pub fn set_stored_prices(&self, stored: &[PriceSpec]) {
        self.prices.set_stored(stored);
    }

    /// Returns the names of the stored credentials that providers use, each once, in name order.
    pub fn credential_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .providers
            .values()
            .flat_map(|provider| provider.keys.credentials())
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Installs the current values of the stored credentials in every provider's key pool:
    /// `lookup` returns a credential's decrypted value, or why it has none. The providers keep
    /// their connections and the cool-downs of keys whose value did not change.
    pub fn set_credentials(&self, lookup: &dyn Fn(&str) -> Result<ApiKey, String>) {
        for provider in self.providers.values() {
            provider.keys.set_credentials(lookup);
        }
    }

    /// Returns the prices of the targets of `model`, or `None` when the model is neither an
    /// alias nor a `provider/model` of a configured provider.
    pub fn target_prices(&self, model: &str) -> Option<Vec<Option<Price>>> {
        let targets = self.targets(model).ok()?;
        let prices = self.prices.load();
        Some(
            targets
                .iter()
                .map(|target| prices.get(target.key.as_ref()).copied())
                .collect(),
        )
    }

    /// Serves one request, and renders any error in OpenAI's error shape, or in Anthropic's
    /// for `/messages`. The route's guard checks and redacts the request before any provider
    /// call, and restores redacted values in the response.
    pub async fn handle(&self, request: AiRequest) -> AiResponse {
        let request_id = request.request_id.clone();
        let endpoint = Endpoint::of(&request.route, &request.path);
        let result = self.serve_guarded(request, endpoint).await;
        result.unwrap_or_else(|error| AiResponse {
            response: endpoint_error_response(endpoint, &error, &request_id),
            call: None,
            upstream_latency: None,
        })
    }

    /// Renders `error` for a request of `route` at `path` as [`Gateway::handle`] renders its
    /// own errors: in Anthropic's shape on `/messages`, else in OpenAI's.
    pub fn reject(
        route: &AiRouteSpec,
        path: &str,
        error: &AiError,
        request_id: &str,
    ) -> Response<AiBody> {
        endpoint_error_response(Endpoint::of(route, path), error, request_id)
    }

    /// Serves a request between the route's guard and the restoration of redacted values.
    async fn serve_guarded(
        &self,
        mut request: AiRequest,
        endpoint: Endpoint,
    ) -> Result<AiResponse, AiError> {
        let redactions = self.guard(&mut request, endpoint)?;
        let mut served = self.dispatch(request).await?;
        if let Some(call) = &served.call {
            call.update(|state| state.redactions = redactions.len() as u32);
        }
        served.response =
            crate::guards::restore_response(served.response, redactions, endpoint).await;
        Ok(served)
    }

    /// Applies the route's guard to the request body of a POST. A route that names a guard
    /// this node does not have fails closed with 503.
    fn guard(
        &self,
        request: &mut AiRequest,
        endpoint: Endpoint,
    ) -> Result<crate::guards::Redactions, AiError> {
        let Some(name) = &request.route.guard else {
            return Ok(Default::default());
        };
        let guard = self.guards.get(name).ok_or_else(|| {
            AiError::upstream(
                StatusCode::SERVICE_UNAVAILABLE,
                "guard_not_configured",
                format!("guard `{name}` is not defined in this node's `ai.guards`"),
            )
        })?;
        if request.method != Method::POST {
            return Ok(Default::default());
        }
        let mut body = parse_body(&request.body)?;
        let redactions = guard.apply(endpoint, &mut body, &request.request_id)?;
        if !redactions.is_empty() {
            request.body = Bytes::from(body.to_string());
        }
        Ok(redactions)
    }

    /// Lists the prompt and guard that `route` names and this gateway does not have. A route
    /// from the store may name them, because the store is shared by nodes with other files.
    pub fn missing_settings(&self, route: &AiRouteSpec) -> Vec<String> {
        let mut missing = Vec::new();
        if let Some(prompt) = &route.prompt
            && !self.prompts.contains_key(prompt)
        {
            missing.push(format!("prompt `{prompt}` is not defined in `ai.prompts`"));
        }
        if let Some(guard) = &route.guard
            && !self.guards.contains_key(guard)
        {
            missing.push(format!("guard `{guard}` is not defined in `ai.guards`"));
        }
        missing
    }

    /// Routes a request to its endpoint.
    async fn dispatch(&self, request: AiRequest) -> Result<AiResponse, AiError> {
        if let Some(prompt) = request.route.prompt.clone() {
            return self.prompt(&prompt, request).await;
        }
        match (request.method.clone(), request.path.as_str()) {
            (Method::GET, "/models") => Ok(self.models()),
            (Method::POST, "/chat/completions") => self.chat(request).await,
            (Method::POST, "/embeddings") => self.embeddings(request).await,
            (Method::POST, "/messages") => self.messages(request).await,
            (_, "/models" | "/chat/completions" | "/embeddings" | "/messages") => Err(AiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                kind: "invalid_request_error",
                code: "method_not_allowed".into(),
                message: format!("{} is not allowed on {}", request.method, request.path),
                param: None,
            }),
            (_, path) => Err(AiError::not_found(
                "unknown_endpoint",
                format!(
                    "unknown AI endpoint `{path}`; use /chat/completions, /embeddings, /messages or /models"
                ),
            )),
        }
    }

    fn models(&self) -> AiResponse {
        let data: Vec<Value> = self
            .aliases
            .iter()
            .map(|(name, _)| json!({"id": name, "object": "model", "created": 0, "owned_by": "portcullis"}))
            .collect();
        AiResponse {
            response: json_response(StatusCode::OK, &json!({"object": "list", "data": data})),
            call: None,
            upstream_latency: None,
        }
    }

    /// Returns the targets for `model`: an alias's targets, or one `provider/model`.
    fn targets(&self, model: &str) -> Result<Vec<Target>, AiError> {
        let keys: Vec<(&str, Option<u32>)> =
            match self.aliases.iter().find(|(name, _)| name == model) {
                Some((_, targets)) => targets
                    .iter()
                    .map(|target| (target.target.as_str(), target.weight))
                    .collect(),
                None => vec![(model, None)],
            };
        keys.into_iter()
            .map(|(key, weight)| {
                let (provider, model_name) = split_target(key)
                    .and_then(|(provider, model)| Some((self.providers.get(provider)?, model)))
                    .ok_or_else(|| {
                        AiError::not_found(
                            "model_not_found",
                            format!(
                                "model `{model}` is not an alias in ai.models or a `provider/model` of a configured provider"
                            ),
                        )
                        .with_param("model")
                    })?;
                Ok(Target {
                    provider: provider.clone(),
                    model: model_name.to_string(),
                    key: Arc::from(key),
                    weight,
                })
            })
            .collect()
    }

    pub(crate) async fn chat(&self, request: AiRequest) -> Result<AiResponse, AiError> {
        let body = parse_body(&request.body)?;
        let model = requested_model(&body)?;
        let targets = self.targets(&model)?;
        check_messages(&body)?;
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        let prompt_chars = body
            .get("messages")
            .map_or(0, |messages| messages.to_string().len());

        let served = self
            .call(&targets, &request.request_id, |target| {
                let body =
                    limits::cap_chat_output(&body, request.max_output_tokens, target.provider.kind);
                prepare_chat(target, &body, stream)
            })
            .await?;
        let target = &targets[served.target];
        let call = self.call_record(
            model,
            target,
            served.attempts,
            stream,
            prompt_chars,
            &request.request_id,
        );
        // The wait for the provider, to which reading a non-streamed body is added below.
        let mut provider_time = served.latency;
        let (parts, upstream_body) = served.response.into_parts();
        let created = time::OffsetDateTime::now_utc().unix_timestamp();

        let response = if stream {
            let translator = match target.provider.kind {
                ProviderKind::Anthropic => Translator::Anthropic(AnthropicStream::new(
                    include_usage,
                    served.json_mode,
                    created,
                )),
                ProviderKind::Gemini => {
                    Translator::Gemini(GeminiStream::new(include_usage, created, &target.model))
                }
                _ => Translator::OpenAi(OpenAiStream::new(include_usage)),
            };
            let body = TranslatedStream::new(
                upstream_body,
                translator,
                call.clone(),
                target.provider.response_timeout,
            );
            let mut response = Response::new(body.boxed_unsync());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        } else {
            let read_started = Instant::now();
            let bytes = read_limited(upstream_body, MAX_RESPONSE_BYTES)
                .await
                .map_err(|message| {
                    AiError::upstream(StatusCode::BAD_GATEWAY, "provider_error", message)
                })?;
            provider_time += read_started.elapsed();
            let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
                AiError::upstream(
                    StatusCode::BAD_GATEWAY,
                    "provider_error",
                    format!(
                        "provider `{}` returned a body that is not JSON",
                        target.provider.name
                    ),
                )
            })?;
            match target.provider.kind {
                ProviderKind::Anthropic => {
                    let usage = Usage::from_anthropic(&value["usage"]);
                    call.update(|state| {
                        state.usage = usage.unwrap_or_default();
                        state.usage_final = true;
                    });
                    let completion =
                        anthropic::to_chat_completion(&value, served.json_mode, created);
                    json_response(StatusCode::OK, &completion)
                }
                ProviderKind::Gemini => {
                    let usage = Usage::from_gemini(&value["usageMetadata"]);
                    call.update(|state| {
                        state.usage_final = usage.is_some();
                        state.usage = usage.unwrap_or_default();
                    });
                    let completion = gemini::to_chat_completion(&value, &target.model, created);
                    json_response(StatusCode::OK, &completion)
                }
                _ => {
                    let usage = Usage::from_openai(&value["usage"]);
                    // Counted for the estimate when the provider sent no usage.
                    let output_chars: usize = value["choices"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|choice| choice.pointer("/message/content")?.as_str())
                        .map(str::len)
                        .sum();
                    call.update(|state| {
                        state.usage_final = usage.is_some();
                        state.usage = usage.unwrap_or_default();
                        state.output_chars = output_chars as u64;
                    });
                    let mut response = Response::new(full(bytes));
                    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
                        response
                            .headers_mut()
                            .insert(header::CONTENT_TYPE, content_type.clone());
                    }
                    response
                }
            }
        };
        Ok(served_response(response, target, call, provider_time))
    }

    async fn embeddings(&self, request: AiRequest) -> Result<AiResponse, AiError> {
        let body = parse_body(&request.body)?;
        let model = requested_model(&body)?;
        let targets: Vec<Target> = self
            .targets(&model)?
            .into_iter()
            .filter(|target| target.provider.kind != ProviderKind::Anthropic)
            .collect();
        if targets.is_empty() {
            return Err(AiError::invalid_request(
                "embeddings_not_supported",
                format!("model `{model}` has only Anthropic targets, and Anthropic has no embeddings API"),
            )
            .with_param("model"));
        }
        let prompt_chars = gemini_embeddings::input_chars(&body) as usize;
        let served = self
            .call(&targets, &request.request_id, |target| {
                if target.provider.kind == ProviderKind::Gemini {
                    let model = path_safe_model(target)?;
                    let batch = gemini_embeddings::to_batch_request(&body, model)?;
                    return Ok(Prepared {
                        url: format!(
                            "{}/models/{model}:batchEmbedContents",
                            target.provider.base_url
                        ),
                        body: Bytes::from(batch.body.to_string()),
                        json_mode: false,
                        headers: http::HeaderMap::new(),
                    });
                }
                let mut body = body.clone();
                body["model"] = json!(target.model);
                Ok(Prepared {
                    url: openai_url(target, "embeddings")?,
                    body: Bytes::from(body.to_string()),
                    json_mode: false,
                    headers: http::HeaderMap::new(),
                })
            })
            .await?;
        let target = &targets[served.target];
        let call = self.call_record(
            model,
            target,
            served.attempts,
            false,
            prompt_chars,
            &request.request_id,
        );
        let read_started = Instant::now();
        if target.provider.kind == ProviderKind::Gemini {
            let response =
                gemini_embeddings_response(served.response.into_body(), &body, target, &call)
                    .await?;
            let provider_time = served.latency + read_started.elapsed();
            return Ok(served_response(response, target, call, provider_time));
        }
        let bytes =
            read_recording_usage(served.response.into_body(), &call, Usage::from_openai).await?;
        let provider_time = served.latency + read_started.elapsed();
        let mut response = Response::new(full(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(served_response(response, target, call, provider_time))
    }

    /// Passes an Anthropic Messages request through to the model's Anthropic targets, for
    /// clients such as the `anthropic` SDK. The request is not translated, so targets of other
    /// providers are skipped.
    async fn messages(&self, request: AiRequest) -> Result<AiResponse, AiError> {
        let body = parse_body(&request.body)?;
        let body = limits::cap_messages_output(&body, request.max_output_tokens).into_owned();
        let model = requested_model(&body)?;
        let targets: Vec<Target> = self
            .targets(&model)?
            .into_iter()
            .filter(|target| target.provider.kind == ProviderKind::Anthropic)
            .collect();
        if targets.is_empty() {
            return Err(AiError::invalid_request(
                "no_anthropic_target",
                format!(
                    "model `{model}` has no Anthropic target; /messages passes requests to Anthropic providers only, so use /chat/completions for the others"
                ),
            )
            .with_param("model"));
        }
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        let prompt_chars = body
            .get("messages")
            .map_or(0, |messages| messages.to_string().len())
            + body
                .get("system")
                .map_or(0, |system| system.to_string().len());
        let mut headers = http::HeaderMap::new();
        for name in ["anthropic-version", "anthropic-beta"] {
            for value in request.headers.get_all(name) {
                headers.append(name, value.clone());
            }
        }

        let served = self
            .call(&targets, &request.request_id, |target| {
                let mut body = body.clone();
                body["model"] = json!(target.model);
                Ok(Prepared {
                    url: format!("{}/v1/messages", target.provider.base_url),
                    body: Bytes::from(body.to_string()),
                    json_mode: false,
                    headers: headers.clone(),
                })
            })
            .await?;
        let target = &targets[served.target];
        let call = self.call_record(
            model,
            target,
            served.attempts,
            stream,
            prompt_chars,
            &request.request_id,
        );
        let mut provider_time = served.latency;
        let (parts, upstream_body) = served.response.into_parts();
        let mut response = if stream {
            let translator = Translator::AnthropicPassthrough(AnthropicPassthrough::default());
            let body = TranslatedStream::new(
                upstream_body,
                translator,
                call.clone(),
                target.provider.response_timeout,
            );
            Response::new(body.boxed_unsync())
        } else {
            let read_started = Instant::now();
            let bytes = read_recording_usage(upstream_body, &call, Usage::from_anthropic).await?;
            provider_time += read_started.elapsed();
            Response::new(full(bytes))
        };
        for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
            if let Some(value) = parts.headers.get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        Ok(served_response(response, target, call, provider_time))
    }

    /// Creates the usage record of a call that `target` served.
    fn call_record(
        &self,
        requested_model: String,
        target: &Target,
        attempts: u32,
        stream: bool,
        prompt_chars: usize,
        request_id: &str,
    ) -> Arc<CallRecord> {
        let record = CallRecord::new(
            requested_model,
            target.provider.name.clone(),
            target.model.clone(),
            target.key.clone(),
            attempts,
            stream,
            prompt_chars as u64,
            self.prices.load().get(target.key.as_ref()).copied(),
        );
        Arc::new(record.with_request_id(request_id))
    }

    /// Sends the request to each target in turn, in the order of [`target_order`], until one
    /// responds with a success status. A status like 400 is final, because the next target
    /// would reject the same request. [`call_target`] retries one target and picks its keys.
    ///
    /// NOTE: an error that a provider sends as the first event of a 200 stream, as Anthropic
    /// can for `overloaded_error`, ends that stream and does not move on to the next target.
    async fn call(
        &self,
        targets: &[Target],
        request_id: &str,
        prepare: impl Fn(&Target) -> Result<Prepared, AiError>,
    ) -> Result<Served, AiError> {
        let weights: Vec<Option<u32>> = targets.iter().map(|target| target.weight).collect();
        let order = target_order(&weights, &mut rand::thread_rng());
        let mut latency = Duration::ZERO;
        let mut last_error = None;
        for (tried, index) in order.into_iter().enumerate() {
            let target = &targets[index];
            let prepared = prepare(target)?;
            match call_target(target, &prepared, request_id, &mut latency).await {
                TargetOutcome::Served(response) => {
                    return Ok(Served {
                        target: index,
                        response,
                        json_mode: prepared.json_mode,
                        attempts: tried as u32 + 1,
                        latency,
                    });
                }
                TargetOutcome::Rejected(error) => {
                    tracing::info!(request.id = request_id, ai.target = %target.key, "provider rejected the request");
                    return Err(error);
                }
                TargetOutcome::Failed(error) => {
                    tracing::warn!(request.id = request_id, ai.target = %target.key, error = %error.message, "target failed; trying the next target");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            AiError::upstream(
                StatusCode::BAD_GATEWAY,
                "no_target",
                "the model has no targets",
            )
        }))
    }
}

fn provider(spec: &ProviderSpec) -> Result<Provider, SetupError> {
    let setup_error = |message: String| SetupError {
        provider: spec.name.clone(),
        message,
    };
    let base_url = spec
        .base_url
        .as_deref()
        .or(spec.kind.default_base_url())
        .ok_or_else(|| setup_error("`base_url` is required".into()))?
        .trim_end_matches('/')
        .to_string();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(spec.timeouts.connect));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|error| setup_error(error.to_string()))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let name: Arc<str> = Arc::from(spec.name.as_str());
    Ok(Provider {
        keys: KeyPool::new(
            name.clone(),
            spec.pool_keys(),
            (!spec.api_keys.is_empty()).then(|| spec.key_cooldown.clone()),
        ),
        retries: spec.retries.clone(),
        name,
        kind: spec.kind,
        base_url,
        default_max_tokens: spec.default_max_tokens,
        azure_api_version: spec.azure_api_version().to_string(),
        response_timeout: spec.timeouts.response,
        client: Client::builder(TokioExecutor::new()).build(connector),
    })
}

/// Checks a model name that goes into a URL path, as Gemini models and Azure deployments do.
fn path_safe_model(target: &Target) -> Result<&str, AiError> {
    let model = target.model.as_str();
    let valid = model
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !model.starts_with('.');
    if valid {
        Ok(model)
    } else {
        Err(AiError::invalid_request(
            "invalid_model",
            format!(
                "invalid model `{model}` for provider `{}`; a {} model name has only letters, digits, `-`, `_` and `.`",
                target.provider.name,
                target.provider.kind.name()
            ),
        )
        .with_param("model"))
    }
}

/// Returns the URL of an OpenAI endpoint such as `chat/completions`: under `base_url`, or for
/// Azure OpenAI under the deployment that the target's model names, with `api-version`.
fn openai_url(target: &Target, endpoint: &str) -> Result<String, AiError> {
    let provider = &target.provider;
    if provider.kind == ProviderKind::AzureOpenai {
        let deployment = path_safe_model(target)?;
        return Ok(format!(
            "{}/openai/deployments/{deployment}/{endpoint}?api-version={}",
            provider.base_url, provider.azure_api_version
        ));
    }
    Ok(format!("{}/{endpoint}", provider.base_url))
}

fn prepare_chat(target: &Target, body: &Value, stream: bool) -> Result<Prepared, AiError> {
    let provider = &target.provider;
    if provider.kind == ProviderKind::Anthropic {
        let translated =
            anthropic::to_messages_request(body, &target.model, provider.default_max_tokens)?;
        return Ok(Prepared {
            url: format!("{}/v1/messages", provider.base_url),
            body: Bytes::from(translated.body.to_string()),
            json_mode: translated.json_mode,
            headers: http::HeaderMap::new(),
        });
    }
    if provider.kind == ProviderKind::Gemini {
        let model = path_safe_model(target)?;
        let url = if stream {
            format!(
                "{}/models/{model}:streamGenerateContent?alt=sse",
                provider.base_url
            )
        } else {
            format!("{}/models/{model}:generateContent", provider.base_url)
        };
        return Ok(Prepared {
            url,
            body: Bytes::from(gemini::to_generate_request(body)?.to_string()),
            json_mode: false,
            headers: http::HeaderMap::new(),
        });
    }
    let mut body = body.clone();
    body["model"] = json!(target.model);
    if let Some(messages) = body.get_mut("messages") {
        tool_ids::fit_openai_messages(messages);
    }
    // Mistral sends usage in the last chunk without being asked. The others need
    // `include_usage`, and the stream translation removes the usage chunk again unless the
    // client requested it.
    if stream && provider.kind != ProviderKind::Mistral {
        match body
            .get_mut("stream_options")
            .and_then(Value::as_object_mut)
        {
            Some(options) => {
                options.insert("include_usage".into(), json!(true));
            }
            None => body["stream_options"] = json!({"include_usage": true}),
        }
    }
    Ok(Prepared {
        url: openai_url(target, "chat/completions")?,
        body: Bytes::from(body.to_string()),
        json_mode: false,
        headers: http::HeaderMap::new(),
    })
}

/// Sends one request to `provider` with `key`, the key taken from its pool.
pub(crate) async fn send(
    provider: &Provider,
    prepared: &Prepared,
    request_id: &str,
    key: Option<&ApiKey>,
) -> Result<Response<Incoming>, AiError> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(&prepared.url)
        .header(header::CONTENT_TYPE, "application/json");
    if let Ok(value) = HeaderValue::from_str(request_id) {
        builder = builder.header("x-request-id", value);
    }
    for (name, value) in &prepared.headers {
        builder = builder.header(name, value);
    }
    if provider.kind == ProviderKind::Anthropic
        && !prepared.headers.contains_key("anthropic-version")
    {
        builder = builder.header("anthropic-version", ANTHROPIC_VERSION);
    }
    if let Some(key) = key {
        builder = match provider.kind {
            ProviderKind::Anthropic => builder.header("x-api-key", key.expose()),
            ProviderKind::Gemini => builder.header("x-goog-api-key", key.expose()),
            ProviderKind::AzureOpenai => builder.header("api-key", key.expose()),
            _ => builder.header(header::AUTHORIZATION, format!("Bearer {}", key.expose())),
        };
    }
    let request = builder
        .body(Full::new(prepared.body.clone()))
        .map_err(|_| {
            AiError::upstream(
                StatusCode::BAD_GATEWAY,
                "invalid_provider_url",
                format!("provider `{}` has an invalid URL", provider.name),
            )
        })?;
    match tokio::time::timeout(provider.response_timeout, provider.client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => {
            let detail = std::iter::successors(
                Some(&error as &(dyn std::error::Error + 'static)),
                |error| error.source(),
            )
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
            Err(AiError::upstream(
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                format!("provider `{}` is not reachable: {detail}", provider.name),
            ))
        }
        Err(_) => Err(AiError::upstream(
            StatusCode::GATEWAY_TIMEOUT,
            "provider_timeout",
            format!("provider `{}` did not respond in time", provider.name),
        )),
    }
}

pub(crate) async fn read_limited(body: Incoming, limit: usize) -> Result<Bytes, String> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|error| format!("cannot read the provider response: {error}"))
}

/// Reads a provider's JSON response whole and records the usage that `parse` finds in its
/// `usage` field.
async fn read_recording_usage(
    body: Incoming,
    call: &CallRecord,
    parse: fn(&Value) -> Option<Usage>,
) -> Result<Bytes, AiError> {
    let bytes = read_limited(body, MAX_RESPONSE_BYTES)
        .await
        .map_err(|message| AiError::upstream(StatusCode::BAD_GATEWAY, "provider_error", message))?;
    let usage = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|value| parse(&value["usage"]));
    call.update(|state| {
        state.usage_final = usage.is_some();
        state.usage = usage.unwrap_or_default();
    });
    Ok(bytes)
}

/// Reads a Gemini `batchEmbedContents` response, records its usage, and returns it as an
/// OpenAI embeddings list. Without `usageMetadata` the token count is estimated from the
/// inputs' characters, and the record marks it as estimated.
async fn gemini_embeddings_response(
    body: Incoming,
    request: &Value,
    target: &Target,
    call: &CallRecord,
) -> Result<Response<AiBody>, AiError> {
    let provider_error = |message: String| {
        AiError::upstream(
            StatusCode::BAD_GATEWAY,
            "provider_error",
            format!("provider `{}`: {message}", target.provider.name),
        )
    };
    let bytes = read_limited(body, MAX_RESPONSE_BYTES)
        .await
        .map_err(provider_error)?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| provider_error("the response is not JSON".into()))?;
    let batch = gemini_embeddings::to_batch_request(request, &target.model)?;
    let usage = gemini_embeddings::usage(&value);
    let prompt_tokens = usage
        .and_then(|usage| Some(usage.input? + usage.cache_read.unwrap_or(0)))
        .unwrap_or_else(|| crate::record::estimate_tokens(call.prompt_chars));
    call.update(|state| {
        state.usage_final = usage.is_some();
        state.usage = usage.unwrap_or_default();
    });
    let completion =
        gemini_embeddings::to_embeddings_response(&value, &batch, &target.model, prompt_tokens)
            .map_err(provider_error)?;
    Ok(json_response(StatusCode::OK, &completion))
}

pub(crate) fn parse_body(body: &[u8]) -> Result<Value, AiError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        AiError::invalid_request(
            "invalid_json",
            format!("the request body is not valid JSON: {error}"),
        )
    })?;
    if !value.is_object() {
        return Err(AiError::invalid_request(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

fn requested_model(body: &Value) -> Result<String, AiError> {
    match body.get("model") {
        Some(Value::String(model)) if !model.is_empty() => Ok(model.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(AiError::invalid_request(
            "missing_model",
            "`model` is required",
        )
        .with_param("model")),
        Some(_) => Err(AiError::invalid_request(
            "invalid_model",
            "`model` must be a string, such as an alias of ai.models or `provider/model`",
        )
        .with_param("model")),
    }
}

/// Checks that `messages` is a non-empty array of objects with a string `role`, which every
/// provider's translation needs.
fn check_messages(body: &Value) -> Result<(), AiError> {
    let invalid = |message: String| {
        Err(AiError::invalid_request("invalid_messages", message).with_param("messages"))
    };
    let messages = match body.get("messages") {
        Some(Value::Array(messages)) => messages,
        Some(_) => return invalid("`messages` must be an array of message objects".into()),
        None => return invalid("`messages` is required".into()),
    };
    if messages.is_empty() {
        return invalid("`messages` must contain at least one message".into());
    }
    for (index, message) in messages.iter().enumerate() {
        if !message.get("role").is_some_and(Value::is_string) {
            return invalid(format!(
                "`messages[{index}]` must be an object with a string `role`"
            ));
        }
    }
    Ok(())
}

pub(crate) fn full(bytes: Bytes) -> AiBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<AiBody> {
    let mut response = Response::new(full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Renders an error in Anthropic's shape.
fn anthropic_error_response(error: &AiError, request_id: &str) -> Response<AiBody> {
    let mut response = Response::new(full(error.anthropic_body(request_id)));
    *response.status_mut() = error.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Renders an error in OpenAI's shape.
fn endpoint_error_response(
    endpoint: Endpoint,
    error: &AiError,
    request_id: &str,
) -> Response<AiBody> {
    if endpoint == Endpoint::Messages {
        anthropic_error_response(error, request_id)
    } else {
        error_response(error, request_id)
    }
}

pub fn error_response(error: &AiError, request_id: &str) -> Response<AiBody> {
    let mut response = Response::new(full(error.body(request_id)));
    *response.status_mut() = error.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn served_response(
    mut response: Response<AiBody>,
    target: &Target,
    call: Arc<CallRecord>,
    latency: Duration,
) -> AiResponse {
    if let Ok(value) = HeaderValue::from_str(&target.key) {
        response.headers_mut().insert(X_TARGET, value);
    }
    AiResponse {
        response,
        call: Some(call),
        upstream_latency: Some(latency),
    }
}
