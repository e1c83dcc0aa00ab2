//! HTTP/2 flood protection on the client listener: rapid reset, CONTINUATION floods and
//! oversized header lists, sent with the `h2` crate and raw frames. Every load is bounded in
//! streams, bytes and time.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Gateway, client, node_config, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_STREAMS: usize = 20_000;
const MAX_ATTACK_TIME: Duration = Duration::from_secs(5);

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"{}
services:
  - name: echo
    targets: [http://{upstream}]
routes:
  - name: echo
    service: echo
    paths: [/echo]
"#,
        node_config()
    )
}

/// Returns the CPU time the process has used, from `/proc/PID/stat` (Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ (`getconf CLK_TCK`) is 100 on x86 and ARM Linux.
    Duration::from_millis(ticks * 10)
}

/// Returns the resident set size of the process in bytes, from `/proc/PID/status` (Linux).
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

async fn assert_still_serving(gateway: &Gateway) {
    let response = client()
        .get(gateway.url("/echo/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "HTTP/1.1 client not served after the attack"
    );
    let h2_client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let response = h2_client
        .get(gateway.url("/echo/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "HTTP/2 client not served after the attack"
    );
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread")]
async fn rapid_reset_gets_goaway() {
    let gateway = Gateway::start(&config(upstream().await));
    let pid = gateway.pid();
    // Warm up, so that the memory baseline includes a served request.
    assert_still_serving(&gateway).await;
    let cpu_before = cpu_time(pid);
    let memory_before = resident_bytes(pid);

    let tcp = TcpStream::connect(gateway.proxy[0]).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let started = Instant::now();
    let mut streams = 0;
    let mut client_error = None;
    while streams < MAX_STREAMS && started.elapsed() < MAX_ATTACK_TIME {
        sender = match sender.ready().await {
            Ok(sender) => sender,
            Err(error) => {
                client_error = Some(error);
                break;
            }
        };
        let request = http::Request::get(gateway.url("/echo/reset"))
            .body(())
            .unwrap();
        match sender.send_request(request, false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                streams += 1;
            }
            Err(error) => {
                client_error = Some(error);
                break;
            }
        }
    }
    let connection_result = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the gateway did not close the connection")
        .unwrap();

    let error = connection_result
        .err()
        .or(client_error)
        .expect("the gateway kept the connection open for the whole attack");
    // The gateway sends GOAWAY and closes. When the client is still writing at that moment, it
    // can fail on the closed socket before it reads the GOAWAY. `rapid_reset_raw_frames` reads
    // the GOAWAY in every case.
    let closed_while_writing = error.get_io().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )
    });
    if !closed_while_writing {
        assert!(error.is_go_away(), "expected GOAWAY, got {error:?}");
        assert_eq!(
            error.reason(),
            Some(h2::Reason::ENHANCE_YOUR_CALM),
            "{error:?}"
        );
    }
    assert!(
        streams < MAX_STREAMS,
        "the connection carried all {MAX_STREAMS} resets"
    );

    assert_still_serving(&gateway).await;
    let cpu = cpu_time(pid) - cpu_before;
    let memory_growth = resident_bytes(pid).saturating_sub(memory_before);
    eprintln!(
        "rapid reset: GOAWAY after {streams} streams in {:?}; gateway CPU {cpu:?}, RSS growth {memory_growth} bytes",
        started.elapsed()
    );
    assert!(
        cpu < Duration::from_secs(3),
        "the gateway used {cpu:?} of CPU for {streams} reset streams"
    );
    assert!(
        memory_growth < 64 * 1024 * 1024,
        "resident memory grew by {memory_growth} bytes"
    );
}

/// Frame types and flags of RFC 9113 section 6.
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// The error code of RFC 9113 section 7 for a stream the client no longer needs.
const CANCEL: u32 = 0x8;
/// The error code of RFC 9113 section 7 for a peer that generates excessive load.
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut frame = vec![
        (length >> 16) as u8,
        (length >> 8) as u8,
        length as u8,
        kind,
        flags,
    ];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Returns an HPACK literal header field without indexing and with a new name (RFC 7541
/// section 6.2.2). Its value of 16,000 bytes makes the field fill one frame.
fn padding_field() -> Vec<u8> {
    let mut field = vec![0x00, 0x05];
    field.extend_from_slice(b"x-pad");
    // 16,000 as an HPACK integer with a 7-bit prefix: 127, then 15,873 in base 128.
    field.extend_from_slice(&[0x7f, 0x81, 0x7c]);
    field.extend(std::iter::repeat_n(b'a', 16_000));
    field
}

/// Opens an HTTP/2 connection with prior knowledge by hand: the client preface and an empty
/// SETTINGS frame. Returns the task that reads until GOAWAY, and the half to write frames on.
async fn open_raw_connection(
    gateway: &Gateway,
) -> (
    tokio::task::JoinHandle<Option<GoAway>>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let stream = TcpStream::connect(gateway.proxy[0]).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let goaway = tokio::spawn(read_until_goaway(reader));
    writer
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    writer.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    (goaway, writer)
}

/// A GOAWAY frame as received.
#[derive(Debug)]
struct GoAway {
    /// The highest stream id the gateway processed.
    last_stream_id: u32,
    code: u32,
}

/// Reads frames until the peer sends GOAWAY or closes, and returns the GOAWAY if one came.
async fn read_until_goaway(mut reader: tokio::net::tcp::OwnedReadHalf) -> Option<GoAway> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while buffer.len() >= 9 {
            let length =
                ((buffer[0] as usize) << 16) | ((buffer[1] as usize) << 8) | buffer[2] as usize;
            if buffer.len() < 9 + length {
                break;
            }
            if buffer[3] == GOAWAY && length >= 8 {
                let word = |at: usize| {
                    u32::from_be_bytes([buffer[at], buffer[at + 1], buffer[at + 2], buffer[at + 3]])
                };
                return Some(GoAway {
                    last_stream_id: word(9) & 0x7fff_ffff,
                    code: word(13),
                });
            }
            buffer.drain(..9 + length);
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rapid_reset_raw_frames() {
    let limit = 20;
    let config = config(upstream().await).replace(
        "services:",
        &format!("http2:\n  max_pending_accept_reset_streams: {limit}\nservices:"),
    );
    let gateway = Gateway::start(&config);
    let pid = gateway.pid();
    assert_still_serving(&gateway).await;
    let cpu_before = cpu_time(pid);
    let memory_before = resident_bytes(pid);

    let (goaway, mut writer) = open_raw_connection(&gateway).await;

    // GET /echo/reset: :method GET, :scheme http, :path as a literal with an indexed name, and
    // :authority localhost.
    let mut block = vec![0x82, 0x86, 0x04, 0x0b];
    block.extend_from_slice(b"/echo/reset");
    block.extend_from_slice(&[0x01, 0x09]);
    block.extend_from_slice(b"localhost");
    let started = Instant::now();
    let mut streams = 0u32;
    while (streams as usize) < MAX_STREAMS && started.elapsed() < MAX_ATTACK_TIME {
        // Each stream is opened and reset at once, 100 streams per write.
        let mut batch = Vec::new();
        for _ in 0..100 {
            let id = 2 * streams + 1;
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            batch.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            streams += 1;
        }
        if goaway.is_finished() || writer.write_all(&batch).await.is_err() {
            break;
        }
    }
    let goaway = tokio::time::timeout(Duration::from_secs(5), goaway)
        .await
        .expect("the gateway did not close the connection")
        .unwrap()
        .expect("the gateway closed the connection without GOAWAY");
    eprintln!(
        "rapid reset (raw frames): {goaway:?} after {streams} streams written in {:?}",
        started.elapsed()
    );
    assert_eq!(goaway.code, ENHANCE_YOUR_CALM);
    // The client writes far ahead of what the gateway reads, so the streams the gateway
    // processed (client stream ids are odd) are the measure, not the streams written.
    // With the default limit of 64 the gateway would process at least 64.
    let processed = goaway.last_stream_id.div_ceil(2);
    assert!(
        processed <= 2 * limit,
        "the gateway processed {processed} streams before GOAWAY with a limit of {limit}"
    );

    assert_still_serving(&gateway).await;
    let cpu = cpu_time(pid) - cpu_before;
    let memory_growth = resident_bytes(pid).saturating_sub(memory_before);
    assert!(
        cpu < Duration::from_secs(3),
        "the gateway used {cpu:?} of CPU for the attack"
    );
    assert!(
        memory_growth < 64 * 1024 * 1024,
        "resident memory grew by {memory_growth} bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn continuation_flood_is_cut_off() {
    let gateway = Gateway::start(&config(upstream().await));
    let (goaway, mut writer) = open_raw_connection(&gateway).await;
    // :method GET, :scheme http, :path / from the static table, :authority localhost, and no
    // END_HEADERS, so the header block goes on in CONTINUATION frames.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 0x09];
    block.extend_from_slice(b"localhost");
    writer
        .write_all(&frame(HEADERS, END_STREAM, 1, &block))
        .await
        .unwrap();

    let continuation = frame(CONTINUATION, 0, 1, &padding_field());
    let max_frames = 2_000; // About 32 MB, far past any sane header list.
    let started = Instant::now();
    let mut sent = 0;
    while sent < max_frames && started.elapsed() < MAX_ATTACK_TIME {
        if writer.write_all(&continuation).await.is_err() {
            break;
        }
        sent += 1;
    }
    let code = tokio::time::timeout(Duration::from_secs(5), goaway)
        .await
        .expect("the gateway did not close the connection")
        .unwrap();
    eprintln!("CONTINUATION flood: {code:?} after {sent} frames of 16 KB");
    assert_eq!(
        code.map(|goaway| goaway.code),
        Some(ENHANCE_YOUR_CALM),
        "expected GOAWAY(ENHANCE_YOUR_CALM) after {sent} frames"
    );
    assert!(
        sent < max_frames,
        "the gateway read all {max_frames} CONTINUATION frames"
    );
    assert_still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_header_list_is_rejected() {
    let gateway = Gateway::start(&config(upstream().await));
    let tcp = TcpStream::connect(gateway.proxy[0]).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut sender = sender.ready().await.unwrap();
    // 100 KiB of header values: past the default limit of 64 KiB (twice max_header_bytes).
    let request = http::Request::get(gateway.url("/echo/big"))
        .header("x-big", "b".repeat(100 * 1024))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    match response.await {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(error) => assert_eq!(
            error.reason(),
            Some(h2::Reason::REFUSED_STREAM),
            "{error:?}"
        ),
    }

    // A request within the limit on the same connection is served.
    let mut sender = sender.ready().await.unwrap();
    let request = http::Request::get(gateway.url("/echo/small"))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_limit_is_configurable() {
    let config = config(upstream().await).replace(
        "services:",
        "http2:\n  max_concurrent_streams: 7\n  keep_alive_interval: 1s\nservices:",
    );
    let gateway = Gateway::start(&config);
    let tcp = TcpStream::connect(gateway.proxy[0]).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut sender = sender.ready().await.unwrap();
    // The server's SETTINGS have surely arrived once a response has.
    let request = http::Request::get(gateway.url("/echo/x")).body(()).unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(sender.current_max_send_streams(), 7);
}
