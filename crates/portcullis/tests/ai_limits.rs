//! The `ai-limits` policy through the real binary, in front of the mock OpenAI server: token
//! limits, budgets, settlement after streams and disconnects, two nodes sharing Redis, and a
//! Redis outage.
//!
//! Every call to the mock reports 100 prompt tokens (40 of them cached) and 50 completion
//! tokens (20 of them reasoning), 150 tokens in all. Shared counters use the Redis server at
//! `PORTCULLIS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) under a key prefix of their
//! own; the outage test starts a private `redis-server`.

mod common;
mod llm_mock;
mod sdk;

use std::time::Duration;

use common::ai::{abandon_stream_after, post_as_alice, post_with_key};
use common::redis::RedisServer;
use common::{ALICE_KEY, Gateway, client, error_body, metric};
use serde_json::{Value, json};

use llm_mock::{ANTHROPIC_KEY, Mock, OPENAI_KEY};

const BOB_KEY: &str = "bob-demo-key-000001";
const CAROL_KEY: &str = "carol-demo-key-00001";

/// Tokens of every call to the mock.
const CALL_TOKENS: u64 = 150;

fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique_prefix() -> String {
    format!("portcullis:test:{:016x}:", rand::random::<u64>())
}

/// Returns a gateway config with the mock as provider and one `ai` route per entry of
/// `routes`: its path prefix and its `ai-limits` policy as YAML flow mapping.
fn config(
    openai: &Mock,
    anthropic: Option<&Mock>,
    redis: Option<(&str, &str)>,
    routes: &[(&str, &str)],
) -> String {
    let mut text = common::node_config();
    if let Some((url, prefix)) = redis {
        text.push_str(&format!(
            "redis: {{ url: \"{url}\", key_prefix: \"{prefix}\", timeout: 500ms }}\n"
        ));
    }
    text.push_str(&format!(
        r#"ai:
  providers:
    - name: openai-main
      type: openai
      base_url: http://{openai}/v1
      api_key: ${{OPENAI_API_KEY}}
    - name: unpriced
      type: openai-compatible
      base_url: http://{openai}/v1
      api_key: ${{OPENAI_API_KEY}}
    - name: claude-main
      type: anthropic
      base_url: http://{anthropic}
      api_key: ${{ANTHROPIC_API_KEY}}
  models:
    - name: gpt
      targets: [openai-main/gpt-4.1]
  prices:
    - model: openai-main/gpt-4.1
      input_per_million: 2.00
      output_per_million: 8.00
      cache_read_per_million: 0.50
      reasoning_per_million: 20.00
    - model: openai-main/gpt-hang
      input_per_million: 2.00
      output_per_million: 8.00
    - model: claude-main/claude-sonnet-4-5
      input_per_million: 3.00
      output_per_million: 15.00
consumers:
  - name: alice
    roles: [research]
    api_keys: [{ALICE_KEY}]
  - name: bob
    roles: [research]
    api_keys: [{BOB_KEY}]
  - name: carol
    roles: [sales]
    api_keys: [{CAROL_KEY}]
routes:
"#,
        openai = openai.addr,
        anthropic = anthropic.map_or(openai.addr, |mock| mock.addr),
    ));
    for (name, policy) in routes {
        text.push_str(&format!(
            "  - name: {name}\n    paths: [/{name}]\n    ai: {{}}\n    policies:\n      - key-auth: {{}}\n      - ai-limits: {policy}\n"
        ));
    }
    text
}

fn start(openai: &Mock, redis: Option<(&str, &str)>, routes: &[(&str, &str)]) -> Gateway {
    start_with_anthropic(openai, None, redis, routes)
}

fn start_with_anthropic(
    openai: &Mock,
    anthropic: Option<&Mock>,
    redis: Option<(&str, &str)>,
    routes: &[(&str, &str)],
) -> Gateway {
    Gateway::start_with_env(
        &config(openai, anthropic, redis, routes),
        &[
            ("OPENAI_API_KEY", OPENAI_KEY),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
        ],
    )
}

async fn call(gateway: &Gateway, path: &str, key: &str, body: Value) -> reqwest::Response {
    post_with_key(gateway, path, key, None, &body).await
}

/// Sends a chat call and returns its status after reading the whole body.
async fn chat_status(gateway: &Gateway, path: &str, key: &str, max_tokens: u64) -> u16 {
    let body = json!({"model": "gpt", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(gateway, path, key, body).await;
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

fn remaining_metric(policy: &str, route: &str, subject: &str, model: &str, limit: &str) -> String {
    format!(
        "portcullis_ai_limit_remaining{{policy=\"{policy}\",route=\"{route}\",subject=\"{subject}\",model=\"{model}\",limit=\"{limit}\"}}"
    )
}

/// Waits until the gateway reports `expected` remaining under `limit` for `subject` on
/// `route`, which it does once the settlement of the last call ran.
async fn wait_remaining(gateway: &Gateway, route: &str, subject: &str, limit: &str, expected: f64) {
    wait_model_remaining(gateway, route, subject, "", limit, expected).await;
}

/// Waits like [`wait_remaining`] for the counters of one model under `per_model: true`.
async fn wait_model_remaining(
    gateway: &Gateway,
    route: &str,
    subject: &str,
    model: &str,
    limit: &str,
    expected: f64,
) {
    let name = remaining_metric("default", route, subject, model, limit);
    let accept = |value: f64| (value - expected).abs() < 1e-9;
    wait_metric(gateway, &name, accept, &expected.to_string()).await;
}

/// Polls the metric `name` for up to 5 seconds until `accept` takes its value.
async fn wait_metric(gateway: &Gateway, name: &str, accept: impl Fn(f64) -> bool, expected: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let value = metric(gateway, name).await;
        if accept(value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} is {value}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
}

#[tokio::test]
async fn token_limit_rejects_then_settles() {
    let openai = llm_mock::openai().await;
    let gateway = start(
        &openai,
        None,
        &[(
            "day",
            "{ tokens_per_day: 1000, default_output_tokens: 100 }",
        )],
    );

    // No max_tokens: 100 output tokens are reserved and sent as the provider's maximum.
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/day/chat/completions", ALICE_KEY, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-ratelimit-limit-tokens"), Some("1000"));
    let remaining: u64 = header(&response, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    // The reservation counts 100 output tokens and a few estimated input tokens.
    assert!((890..900).contains(&remaining), "{remaining}");
    let reset = header(&response, "x-ratelimit-reset-tokens").unwrap();
    assert!(reset.ends_with('s'), "{reset}");
    response.bytes().await.unwrap();
    assert_eq!(openai.requests()[0].body["max_completion_tokens"], 100);

    // The settlement replaces the reservation with the 150 tokens the provider reported.
    wait_remaining(&gateway, "day", "alice", "tokens_per_day", 1000.0 - 150.0).await;

    // 900 output tokens no longer fit the 850 left.
    let body =
        json!({"model": "gpt", "max_tokens": 900, "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/day/chat/completions", ALICE_KEY, body).await;
    let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    assert_eq!(
        header(&response, "x-ratelimit-remaining-tokens"),
        Some("850")
    );
    let error = error_body(response, 429).await;
    assert_eq!(error["error"]["code"], "token_limit_exceeded");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("has 850 left"), "{message}");
    assert_eq!(
        openai.requests().len(),
        1,
        "a rejected call reached the provider"
    );

    // More than the whole limit can never fit, so there is no Retry-After.
    let body = json!({"model": "gpt", "max_tokens": 5000, "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/day/chat/completions", ALICE_KEY, body).await;
    assert!(header(&response, "retry-after").is_none());
    let error = error_body(response, 429).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the 1000"),
        "{error}"
    );

    // A rejection leaves the counters alone, and another consumer has counters of its own.
    assert_eq!(
        chat_status(&gateway, "/day/chat/completions", ALICE_KEY, 800).await,
        200
    );
    assert_eq!(
        chat_status(&gateway, "/day/chat/completions", BOB_KEY, 800).await,
        200
    );
    let rejections = metric(
        &gateway,
        "portcullis_ai_limit_rejections_total{policy=\"default\",subject=\"alice\",model=\"\",limit=\"tokens_per_day\"}",
    )
    .await;
    assert_eq!(rejections, 2.0);
}

#[tokio::test]
async fn unnamed_limits_on_two_routes_report_apart() {
    let openai = llm_mock::openai().await;
    let gateway = start(
        &openai,
        None,
        &[
            ("first", "{ tokens_per_day: 1000 }"),
            ("second", "{ tokens_per_day: 5000 }"),
        ],
    );

    assert_eq!(
        chat_status(&gateway, "/first/chat/completions", ALICE_KEY, 10).await,
        200
    );
    assert_eq!(
        chat_status(&gateway, "/second/chat/completions", ALICE_KEY, 10).await,
        200
    );
    assert_eq!(
        chat_status(&gateway, "/second/chat/completions", ALICE_KEY, 10).await,
        200
    );

    // Both instances are named `default`, and each route keeps counters and a series of its own.
    wait_remaining(&gateway, "first", "alice", "tokens_per_day", 1000.0 - 150.0).await;
    wait_remaining(
        &gateway,
        "second",
        "alice",
        "tokens_per_day",
        5000.0 - 300.0,
    )
    .await;
    let text = common::metrics_text(&gateway).await;
    let series = text
        .lines()
        .filter(|line| line.starts_with("portcullis_ai_limit_remaining{"))
        .count();
    assert_eq!(series, 2, "{text}");
}

#[tokio::test]
async fn stream_and_embeddings_are_counted() {
    let openai = llm_mock::openai().await;
    let gateway = start(&openai, None, &[("day", "{ tokens_per_day: 10000 }")]);

    let body = json!({"model": "gpt", "stream": true, "max_tokens": 300, "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/day/chat/completions", ALICE_KEY, body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    wait_remaining(&gateway, "day", "alice", "tokens_per_day", 10000.0 - 150.0).await;

    // The mock's embeddings report 8 prompt tokens.
    let body = json!({"model": "openai-main/text-embedding-3-small", "input": "Hi"});
    let response = call(&gateway, "/day/embeddings", ALICE_KEY, body).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    wait_remaining(&gateway, "day", "alice", "tokens_per_day", 10000.0 - 158.0).await;
}

// Two workers, because `access_log_line` blocks one while the client connection must still
// be closed on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_keeps_tokens_received() {
    let openai = llm_mock::openai().await;
    let gateway = start(&openai, None, &[("day", "{ tokens_per_day: 1000 }")]);
    let body = json!({"model": "openai-main/gpt-hang", "stream": true, "max_tokens": 500, "messages": [{"role": "user", "content": "Hi"}]});
    let response = post_as_alice(&gateway, "/day/chat/completions", "ai-limits-hang", &body).await;
    // The provider stream hangs after its text; the client gives up.
    abandon_stream_after(response, " gpt").await;

    let line = gateway.access_log_line("ai-limits-hang");
    assert_eq!(line["outcome"], "client_aborted", "{line}");
    let ai = &line["ai"];
    assert_eq!(ai["usage_estimated"], true, "{line}");
    let spent = ai["input_tokens"].as_u64().unwrap() + ai["output_tokens"].as_u64().unwrap();
    assert!(spent > 0, "{line}");
    assert!(spent < 500, "{line}");
    // The tokens received stay counted, and the rest of the 500 reserved is returned.
    wait_remaining(
        &gateway,
        "day",
        "alice",
        "tokens_per_day",
        1000.0 - spent as f64,
    )
    .await;
}

#[tokio::test]
async fn team_budget_counts_cached_and_reasoning() {
    let openai = llm_mock::openai().await;
    let gateway = start(
        &openai,
        None,
        &[(
            "budget",
            "{ budget: { amount: 0.001, period: month }, by: team }",
        )],
    );
    assert_eq!(
        chat_status(&gateway, "/budget/chat/completions", ALICE_KEY, 10).await,
        200
    );
    // 60 input at 2.00, 40 cached at 0.50, 30 output at 8.00 and 20 reasoning at 20.00 per
    // million: 0.00078, so 0.00022 of the team's budget is left.
    wait_remaining(&gateway, "budget", "research", "budget", 0.00022).await;

    // bob shares alice's team: 20 output tokens at the reasoning price do not fit.
    let body =
        json!({"model": "gpt", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/budget/chat/completions", BOB_KEY, body).await;
    assert_eq!(
        header(&response, "x-portcullis-budget-remaining"),
        Some("0.000220")
    );
    let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!(
        retry_after > 0 && retry_after <= 31 * 86_400,
        "{retry_after}"
    );
    let error = error_body(response, 429).await;
    assert_eq!(error["error"]["code"], "budget_exceeded");

    // carol is in another team, and the limit applies to consumers with a team only under
    // `by: team`.
    assert_eq!(
        chat_status(&gateway, "/budget/chat/completions", CAROL_KEY, 10).await,
        200
    );
    wait_remaining(&gateway, "budget", "sales", "budget", 0.00022).await;

    // A model without a price cannot be counted against a budget.
    let body =
        json!({"model": "unpriced/gpt-4.1", "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/budget/chat/completions", ALICE_KEY, body).await;
    let error = error_body(response, 403).await;
    assert_eq!(error["error"]["code"], "model_not_priced");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_share_one_redis_limit() {
    let openai = llm_mock::openai().await;
    let redis = redis_url();
    let prefix = unique_prefix();
    let routes = [(
        "shared",
        "{ tokens_per_day: 600, backend: redis, on_backend_error: deny }",
    )];
    let nodes = [
        start(&openai, Some((&redis, &prefix)), &routes),
        start(&openai, Some((&redis, &prefix)), &routes),
    ];
    // Each call reserves about 10 tokens and settles at 150. The two nodes together admit four
    // calls (600 tokens), where counting per node would admit eight.
    let mut admitted = 0;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let node = &nodes[i % 2];
        let status = chat_status(node, "/shared/chat/completions", ALICE_KEY, 10).await;
        statuses.push(status);
        if status == 200 {
            admitted += 1;
            let expected = 600.0 - (CALL_TOKENS * admitted) as f64;
            wait_remaining(node, "shared", "alice", "tokens_per_day", expected).await;
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429, 429]);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_open_or_closed() {
    let openai = llm_mock::openai().await;
    let mut redis = RedisServer::start();
    let url = redis.url();
    let prefix = unique_prefix();
    let gateway = start(
        &openai,
        Some((&url, &prefix)),
        &[
            (
                "open",
                "{ tokens_per_day: 100000, backend: redis, on_backend_error: allow }",
            ),
            (
                "closed",
                "{ tokens_per_day: 100000, backend: redis, on_backend_error: deny }",
            ),
        ],
    );
    assert_eq!(
        chat_status(&gateway, "/open/chat/completions", ALICE_KEY, 10).await,
        200
    );
    assert_eq!(
        chat_status(&gateway, "/closed/chat/completions", ALICE_KEY, 10).await,
        200
    );

    redis.kill();
    let body =
        json!({"model": "gpt", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/open/chat/completions", ALICE_KEY, body.clone()).await;
    assert_eq!(response.status(), 200, "fail-open admits during the outage");
    assert!(header(&response, "x-ratelimit-remaining-tokens").is_none());
    response.bytes().await.unwrap();
    let response = call(&gateway, "/closed/chat/completions", ALICE_KEY, body).await;
    assert_eq!(header(&response, "retry-after"), Some("1"));
    let error = error_body(response, 503).await;
    assert_eq!(error["error"]["code"], "ai_limits_unavailable");

    for action in ["allow", "deny"] {
        let name = format!(
            "portcullis_ai_limit_backend_errors_total{{policy=\"default\",backend=\"redis\",action=\"{action}\"}}"
        );
        assert!(
            metric(&gateway, &name).await >= 1.0,
            "no count for {action}"
        );
    }
    let address = format!("127.0.0.1:{}", redis.port);
    let log = gateway.stderr();
    assert!(
        log.lines().any(
            |line| line.contains("Redis rate-limit counter operations failed")
                && line.contains(&address)
        ),
        "no warning naming {address}:\n{log}"
    );

    redis.resume();
    let mut status = 0;
    for _ in 0..100 {
        status = chat_status(&gateway, "/closed/chat/completions", ALICE_KEY, 10).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 200,
        "the fail-closed limit recovers without a restart"
    );
}

#[tokio::test]
async fn messages_and_model_filter() {
    let openai = llm_mock::openai().await;
    let anthropic = llm_mock::anthropic().await;
    let gateway = start_with_anthropic(
        &openai,
        Some(&anthropic),
        None,
        &[(
            "claude",
            "{ tokens_per_day: 100000, models: [claude-main/claude-sonnet-4-5], per_model: true, default_output_tokens: 64 }",
        )],
    );

    // An Anthropic client's max_tokens is reserved as sent.
    let body = json!({"model": "claude-main/claude-sonnet-4-5", "max_tokens": 2000, "messages": [{"role": "user", "content": "Hi"}]});
    let response = client()
        .post(gateway.url("/claude/messages"))
        .header("apikey", ALICE_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let remaining: u64 = header(&response, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 100000 - 2000, "{remaining}");
    response.bytes().await.unwrap();
    assert_eq!(anthropic.requests()[0].body["max_tokens"], 2000);
    // The mock reports 30 input, 200 cache-write, 1000 cache-read and 15 output tokens.
    let model = "claude-main/claude-sonnet-4-5";
    wait_model_remaining(
        &gateway,
        "claude",
        "alice",
        model,
        "tokens_per_day",
        100000.0 - 1245.0,
    )
    .await;

    // A chat call to the same model without max_tokens gets the default as Anthropic's
    // max_tokens.
    let body = json!({"model": "claude-main/claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/claude/chat/completions", ALICE_KEY, body).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    assert_eq!(anthropic.requests()[1].body["max_tokens"], 64);
    wait_model_remaining(
        &gateway,
        "claude",
        "alice",
        model,
        "tokens_per_day",
        100000.0 - 2490.0,
    )
    .await;

    // Other models are not limited, so their calls carry no token headers.
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/claude/chat/completions", ALICE_KEY, body).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "x-ratelimit-remaining-tokens").is_none());
    response.bytes().await.unwrap();
    assert!(
        openai.requests()[0]
            .body
            .get("max_completion_tokens")
            .is_none()
    );
}

#[tokio::test]
async fn minute_bucket_limits_listed_teams() {
    let openai = llm_mock::openai().await;
    let gateway = start(
        &openai,
        None,
        &[(
            "minute",
            "{ tokens_per_minute: 200, teams: [research], default_output_tokens: 100 }",
        )],
    );
    // The first call settles at 150 of the 200 tokens, which refill at 200 per minute.
    assert_eq!(
        chat_status(&gateway, "/minute/chat/completions", ALICE_KEY, 100).await,
        200
    );
    let name = remaining_metric("default", "minute", "alice", "", "tokens_per_minute");
    wait_metric(&gateway, &name, |value| value <= 60.0, "at most 60").await;

    // The next 100 output tokens wait for the bucket to refill, about 15 seconds.
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]});
    let response = call(&gateway, "/minute/chat/completions", ALICE_KEY, body).await;
    let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!((10..=20).contains(&retry_after), "{retry_after}");
    let error = error_body(response, 429).await;
    assert_eq!(error["error"]["code"], "token_limit_exceeded");

    // bob shares alice's team but has a bucket of his own, and carol's team is not listed.
    assert_eq!(
        chat_status(&gateway, "/minute/chat/completions", BOB_KEY, 100).await,
        200
    );
    for _ in 0..3 {
        assert_eq!(
            chat_status(&gateway, "/minute/chat/completions", CAROL_KEY, 100).await,
            200
        );
    }
}

#[tokio::test]
async fn openai_sdk_gets_token_limit_error() {
    let openai = llm_mock::openai().await;
    let gateway = start(
        &openai,
        None,
        &[("sdk", "{ tokens_per_day: 350, default_output_tokens: 100 }")],
    );
    // Each call reserves about 115 tokens and settles at 150, so the third no longer fits,
    // whether or not the second has been settled when it arrives.
    let cases = json!([["chat", "gpt"], ["chat", "gpt"], ["chat", "gpt"]]);
    let results = sdk::run_sdk_script("openai_client.py", &gateway.url("/sdk"), &cases).await;
    assert_eq!(results[0]["content"], "Hello from gpt", "{results:?}");
    assert_eq!(results[1]["content"], "Hello from gpt", "{results:?}");
    assert_eq!(results[2]["status"], 429, "{results:?}");
    assert_eq!(results[2]["body"]["code"], "token_limit_exceeded");
}

#[tokio::test]
async fn prompt_endpoint_counted() {
    let openai = llm_mock::openai().await;
    let mut text = config(&openai, None, None, &[]);
    let prompts = r#"  prompts:
    - name: summary
      active: 1
      versions:
        - version: 1
          model: gpt
          template: 'Summarise: {{text}}'
          input_schema: {type: object, required: [text], properties: {text: {type: string}}}
consumers:
"#;
    text = text.replacen("consumers:\n", prompts, 1);
    text.push_str(
        "  - name: summary\n    paths: [/summary]\n    ai: { prompt: summary }\n    policies:\n      - key-auth: {}\n      - ai-limits: { tokens_per_day: 400, default_output_tokens: 100 }\n",
    );
    let gateway = Gateway::start_with_env(
        &text,
        &[
            ("OPENAI_API_KEY", OPENAI_KEY),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
        ],
    );

    // Each call reserves 100 output tokens and its estimated input, then settles at 150.
    for remaining in [250.0, 100.0] {
        let response = call(&gateway, "/summary", ALICE_KEY, json!({"text": "Hi"})).await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        wait_remaining(&gateway, "summary", "alice", "tokens_per_day", remaining).await;
    }
    let requests = openai.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body["max_completion_tokens"], 100);

    // 100 tokens are left, which the next reservation of 100 output tokens plus input exceeds.
    let response = call(&gateway, "/summary", ALICE_KEY, json!({"text": "Hi"})).await;
    let error = error_body(response, 429).await;
    assert_eq!(error["error"]["code"], "token_limit_exceeded");
    assert_eq!(
        openai.requests().len(),
        2,
        "a rejected call reached the provider"
    );
}

#[tokio::test]
async fn invalid_max_tokens_rejected() {
    let openai = llm_mock::openai().await;
    let gateway = start(&openai, None, &[("day", "{ tokens_per_day: 100000 }")]);
    for limit in [json!(-5), json!(0), json!(2.5), json!("abc")] {
        let body = json!({"model": "gpt", "max_tokens": limit, "messages": [{"role": "user", "content": "Hi"}]});
        let response = call(&gateway, "/day/chat/completions", ALICE_KEY, body).await;
        let error = error_body(response, 400).await;
        assert_eq!(error["error"]["code"], "invalid_max_tokens", "{limit}");
    }
    assert!(
        openai.requests().is_empty(),
        "a rejected call reached the provider"
    );
}
