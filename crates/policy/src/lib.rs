//! Policy models for portcullis.
//!
//! Each module here is a plain model of one policy: the data it needs and the decision it makes,
//! as pure functions over that data. The data plane (`portcullis-proxy`) adapts these models to
//! HTTP and runs them in its phase chain; nothing here sees a request or a socket, so each model
//! can be tested with fixed inputs and a fake clock.

pub mod ai_limits;
pub mod api_key;
pub mod client_certificate;
pub mod cors;
pub mod csrf;
pub mod introspection;
pub mod jwt;
pub mod oidc;
pub mod rate_limit;
pub mod security_headers;
pub mod upstream;
