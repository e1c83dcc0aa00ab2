//! The AI gateway: an OpenAI-compatible API served over OpenAI, Azure OpenAI, Anthropic, Google
//! Gemini and OpenAI-compatible providers, with per-call token usage and cost.
//!
//! The models are plain: [`anthropic`] and [`gemini`] translate requests and responses, [`stream`] translates
//! event streams, [`usage`] splits provider token counts into billing categories and prices
//! them. [`gateway`] is the thin I/O around them: endpoints, provider calls and fallback. The
//! data plane calls [`Gateway::handle`] after its policy chain, and reads the call's
//! [`record::CallRecord`] when the response ends to write the access log and the metrics.

pub mod anthropic;
mod attempt;
mod chat;
pub mod error;
pub mod gateway;
pub mod gemini;
pub mod gemini_embeddings;
pub mod guards;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod prices;
pub mod prompt_openapi;
pub mod prompts;
pub mod record;
pub mod sse;
pub mod stream;
pub mod tool_ids;
pub mod usage;

pub use error::AiError;
pub use gateway::{AiBody, AiRequest, AiResponse, Gateway, SetupError};
pub use metrics::AiMetrics;
pub use record::{CallRecord, CallSummary};
