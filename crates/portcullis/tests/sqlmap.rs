//! The sqlmap SQL injection scanner against a deliberately vulnerable app
//! (`tests/sqlmap/vulnerable_app.py`, SQLite behind an injectable `id` parameter). sqlmap finds
//! the injection when it talks to the app directly. Through the gateway with the `waf` policy
//! it finds none, with the built-in rules and with the OWASP CRS. The CRS case runs when
//! `PORTCULLIS_CRS_DIR` (by default `../shared/crs` relative to the repository root) has a
//! `rules` directory.
//!
//! sqlmap comes from `PORTCULLIS_TEST_SQLMAP`, `.venv/bin/sqlmap` (which `scripts/python-env.sh`
//! installs), or `PATH`; without it the test prints a `skipping:` line and passes. Each sqlmap
//! run is bounded: level 1, risk 1, `--time-sec 1`, and killed after [`SQLMAP_TIMEOUT`].

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, node_config};

const SQLMAP_TIMEOUT: Duration = Duration::from_secs(150);

/// The line sqlmap prints before the injection points it found.
const FOUND: &str = "sqlmap identified the following injection point(s)";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sqlmap() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PORTCULLIS_TEST_SQLMAP") {
        return Some(PathBuf::from(path));
    }
    let venv = repository().join(".venv/bin/sqlmap");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("sqlmap"))
            .find(|path| path.is_file())
    })
}

/// The vulnerable app, killed when dropped.
struct App {
    child: Child,
    port: u16,
}

impl App {
    fn start() -> App {
        let python = std::env::var_os("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|| "python3".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sqlmap/vulnerable_app.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {python:?} {}: {error}", script.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| {
                panic!("vulnerable_app.py printed {line:?}, not `listening on PORT`")
            });
        App { child, port }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs sqlmap against `url` and returns its standard output. Fails the test when sqlmap runs
/// longer than [`SQLMAP_TIMEOUT`].
fn run_sqlmap(sqlmap: &Path, url: &str, output_dir: &Path) -> String {
    let mut child = Command::new(sqlmap)
        .arg("-u")
        .arg(url)
        .args(["--batch", "--level", "1", "--risk", "1", "--time-sec", "1"])
        .args([
            "--timeout",
            "5",
            "--retries",
            "0",
            "--threads",
            "1",
            "-p",
            "id",
        ])
        .args(["--flush-session", "--disable-coloring", "--output-dir"])
        .arg(output_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", sqlmap.display()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > SQLMAP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sqlmap against {url} ran longer than {SQLMAP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = reader.join().unwrap();
    eprintln!(
        "sqlmap against {url} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    output
}

fn crs_rules() -> Option<PathBuf> {
    let dir = std::env::var_os("PORTCULLIS_CRS_DIR")
        .map_or_else(|| repository().join("../shared/crs"), PathBuf::from)
        .join("rules");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping the CRS case: no CRS rules at {} (set PORTCULLIS_CRS_DIR)",
            dir.display()
        );
        None
    }
}

#[test]
fn sqlmap_blocked_by_waf() {
    let Some(sqlmap) = sqlmap() else {
        eprintln!(
            "skipping: sqlmap not found (run scripts/python-env.sh, or set PORTCULLIS_TEST_SQLMAP)"
        );
        return;
    };
    let app = App::start();
    let work = tempfile::tempdir().unwrap();

    let direct = run_sqlmap(
        &sqlmap,
        &format!("http://127.0.0.1:{}/items?id=1", app.port),
        &work.path().join("direct"),
    );
    assert!(
        direct.contains(FOUND) && direct.contains("Parameter: id (GET)"),
        "sqlmap found no injection in the vulnerable app itself:\n{direct}"
    );

    let crs = crs_rules();
    let mut routes = format!(
        r#"
services:
  - name: app
    targets: [http://127.0.0.1:{port}]
routes:
  - name: builtin
    service: app
    paths: [/builtin]
    strip_prefix: true
    policies:
      - waf: {{}}
"#,
        port = app.port
    );
    if let Some(rules) = &crs {
        routes.push_str(&format!(
            r#"  - name: crs
    service: app
    paths: [/crs]
    strip_prefix: true
    policies:
      - waf: {{ rules_dir: "{}", paranoia: 1 }}
"#,
            rules.display()
        ));
    }
    let gateway = Gateway::start(&format!("{}{routes}", node_config()));

    let mut cases = vec!["builtin"];
    if crs.is_some() {
        cases.push("crs");
    }
    for case in cases {
        let url = gateway.url(&format!("/{case}/items?id=1"));
        let output = run_sqlmap(&sqlmap, &url, &work.path().join(case));
        assert!(
            !output.contains(FOUND),
            "{case}: sqlmap found an injection through the WAF:\n{output}"
        );
        let blocked = gateway
            .access_log()
            .iter()
            .filter(|line| line["route"] == case && line["rejected_by"] == "waf")
            .count();
        assert!(blocked > 0, "{case}: the WAF blocked no request");
        eprintln!("{case}: the WAF blocked {blocked} sqlmap requests");
    }
}
