//! `echo-upstream [ADDRESS]`: serves the echo upstream, on 127.0.0.1:9000 by default.

use std::net::SocketAddr;

#[tokio::main]
async fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_string());
    let address: SocketAddr = match address.parse() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("error: invalid listen address `{address}`: {error}");
            std::process::exit(2);
        }
    };
    match echo_upstream::spawn(address).await {
        Ok(bound) => eprintln!("echo-upstream listening on http://{bound}"),
        Err(error) => {
            eprintln!("error: cannot listen on {address}: {error}");
            std::process::exit(1);
        }
    }
    std::future::pending::<()>().await;
}
