//! A webhook receiver on an ephemeral port of 127.0.0.1 that records every request and
//! responds with the statuses it is given.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub signature: Option<String>,
    pub body: Bytes,
}

impl Delivery {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the webhook body is JSON")
    }
}

#[derive(Default)]
struct Recorded {
    deliveries: Vec<Delivery>,
    /// Statuses for the next requests, in order; 200 once they run out.
    statuses: Vec<u16>,
}

/// A running receiver.
#[derive(Clone)]
pub struct Receiver {
    pub address: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
}

impl Receiver {
    /// Starts a receiver that responds to the first requests with `statuses`, then with 200.
    pub async fn start(statuses: &[u16]) -> Receiver {
        let recorded = Arc::new(Mutex::new(Recorded {
            deliveries: Vec::new(),
            statuses: statuses.to_vec(),
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(recorded.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { address, recorded }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.recorded.lock().unwrap().deliveries.clone()
    }

    /// Polls until a delivery matches `predicate` and returns it.
    pub async fn wait_for(
        &self,
        limit: Duration,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> Delivery {
        let started = Instant::now();
        loop {
            let found = self
                .deliveries()
                .into_iter()
                .find(|delivery| predicate(&delivery.json()));
            if let Some(delivery) = found {
                return delivery;
            }
            assert!(
                started.elapsed() < limit,
                "no matching webhook delivery within {limit:?}; got {:?}",
                self.deliveries()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(
    State(recorded): State<Arc<Mutex<Recorded>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut recorded = recorded.lock().unwrap();
    recorded.deliveries.push(Delivery {
        signature: headers
            .get("x-portcullis-signature")
            .map(|value| value.to_str().unwrap().to_owned()),
        body,
    });
    let status = if recorded.statuses.is_empty() {
        200
    } else {
        recorded.statuses.remove(0)
    };
    StatusCode::from_u16(status).unwrap()
}

/// Returns `sha256=<hex HMAC-SHA-256 of body under secret>`, the expected signature header.
pub fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
