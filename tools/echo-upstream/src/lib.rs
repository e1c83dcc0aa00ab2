//! A small HTTP/1.1 and HTTP/2 upstream that echoes each request as JSON.
//!
//! Examples, integration tests and benchmarks put it behind the gateway. Besides the echo it
//! has a few paths that misbehave on purpose:
//!
//! - `/status/{code}` answers with that status;
//! - `/delay/{ms}` waits before sending the response headers;
//! - `/stream/{chunks}/{interval_ms}` sends `chunks` lines, one per interval;
//! - `/abort/{bytes}` announces 1,000,000 bytes, sends `bytes` of them, then fails the body,
//!   which closes the connection mid-response;
//! - `/bytes/{n}` sends `n` bytes of `x`;
//! - `/fast` sends a fixed 13-byte body with no echo work, for benchmarks;
//! - `/llm/{delay_ms}/chat/completions` waits `delay_ms` and sends a fixed OpenAI
//!   `chat.completion` with usage, a provider with a known latency for AI gateway benchmarks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The response of the `/llm/...` provider, in the OpenAI Chat Completions shape.
const CHAT_COMPLETION: &str = concat!(
    r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1741569952,"model":"bench","#,
    r#""choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"#,
    r#""usage":{"prompt_tokens":8,"completion_tokens":1,"total_tokens":9}}"#,
    "\n"
);

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `addr` and serves it on a new task; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(bound)
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

async fn handle(request: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let number = |index: usize| {
        segments
            .get(index)
            .and_then(|text| text.parse::<u64>().ok())
    };
    match segments.first().copied() {
        Some("fast") => return Ok(full(StatusCode::OK, "hello, world\n")),
        Some("status") => {
            let status = number(1)
                .and_then(|code| StatusCode::from_u16(code as u16).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            return Ok(full(
                status,
                format!("{{\"status\":{}}}\n", status.as_u16()),
            ));
        }
        Some("llm") if segments.get(2..) == Some(&["chat", "completions"][..]) => {
            tokio::time::sleep(Duration::from_millis(number(1).unwrap_or(0))).await;
            let mut response = full(StatusCode::OK, CHAT_COMPLETION);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                "application/json".parse().expect("static header value"),
            );
            return Ok(response);
        }
        Some("delay") => tokio::time::sleep(Duration::from_millis(number(1).unwrap_or(0))).await,
        Some("bytes") => {
            return Ok(full(
                StatusCode::OK,
                vec![b'x'; number(1).unwrap_or(0) as usize],
            ));
        }
        Some("stream") => {
            let chunks = number(1).unwrap_or(3);
            let interval = Duration::from_millis(number(2).unwrap_or(10));
            let body = stream::unfold(0u64, move |sent| async move {
                if sent == chunks {
                    return None;
                }
                tokio::time::sleep(interval).await;
                let line = Bytes::from(format!("chunk {sent}\n"));
                Some((Ok::<_, std::io::Error>(Frame::data(line)), sent + 1))
            });
            return Ok(Response::new(StreamBody::new(body).boxed()));
        }
        Some("abort") => {
            let sent = number(1).unwrap_or(10) as usize;
            // The pause lets the head and the first bytes reach the client before the failure.
            let body = stream::unfold(0u8, move |step| async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from(vec![b'x'; sent]))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let error = std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "aborted on purpose",
                        );
                        Some((Err(error), 2))
                    }
                    _ => None,
                }
            });
            let mut response = Response::new(StreamBody::new(body).boxed());
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, 1_000_000.into());
            return Ok(response);
        }
        _ => {}
    }
    Ok(echo(request).await)
}

async fn echo(request: Request<Incoming>) -> Response<BoxBody> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return full(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {error}\n"),
            );
        }
    };
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value =
            serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::Array(values)) => values.push(value),
            Some(existing) => *existing = serde_json::Value::Array(vec![existing.clone(), value]),
            None => {
                headers.insert(name.as_str().to_string(), value);
            }
        }
    }
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body.len(),
        "body": String::from_utf8_lossy(&body[..body.len().min(4096)]),
    });
    let mut response = full(StatusCode::OK, format!("{echo}\n"));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().expect("static header value"),
    );
    response
}
