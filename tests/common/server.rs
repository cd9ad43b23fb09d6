//! Helpers for the tests that drive `glint serve` (tests/serve*.rs), included with
//! `#[path = "common/server.rs"] mod server;` next to `mod common;` and `#[path = "common/cli.rs"] mod cli;`:
//! start the binary on 127.0.0.1 with an ephemeral port (`--port 0`; the port is read from its
//! "listening on" line), a raw HTTP/1.1 client over std's TcpStream (status, headers, body,
//! chunked bodies, server-sent events), and a clean stop (SIGTERM, bounded wait).

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `glint serve`. Dropping it kills the process (a test that stops it checks the exit).
pub struct Server {
    child: Child,
    /// 127.0.0.1:PORT
    pub addr: String,
    ready: Mutex<mpsc::Receiver<String>>,
    /// Every stderr line so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start `glint serve --port 0 ARGS` and return once it listens (the model may still load).
    pub fn spawn(args: &[&str], env: &[(&str, &std::path::Path)]) -> Server {
        let mut c = crate::cli::glint();
        c.args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("starting glint serve");
        let (addr_tx, addr_rx) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = addr_tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (ready_tx, ready) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("ready at http://") {
                    let _ = ready_tx.send(line);
                }
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "glint serve printed no 'listening on' line: {:?}",
                    stderr.lock().unwrap()
                );
            }
        };
        Server {
            child,
            addr,
            ready: Mutex::new(ready),
            stderr,
        }
    }

    /// Start and wait until the model is loaded (the "ready at" line on stdout).
    pub fn start(args: &[&str], env: &[(&str, &std::path::Path)]) -> Server {
        let s = Self::spawn(args, env);
        s.wait_ready(Duration::from_secs(600));
        s
    }

    /// The "ready at" line, within `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> String {
        match self.ready.lock().unwrap().recv_timeout(timeout) {
            Ok(line) => line,
            Err(_) => panic!(
                "glint serve did not get ready in {timeout:?}: {:?}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, in KiB (Linux /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// SIGTERM, and the exit status (within `timeout`, else the process is killed and this panics).
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(ok.success());
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("glint serve did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        request(&self.addr, "GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        request(
            &self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// A counter or gauge from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        self.metric_with(name, None)
    }

    /// [`Server::metric`] with an API key.
    pub fn metric_with(&self, name: &str, key: Option<&str>) -> f64 {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let r = request(&self.addr, "GET", "/metrics", &headers, b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("glint_{name} ")))
            .unwrap_or_else(|| panic!("no glint_{name} in /metrics"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid`, in KiB (Linux /proc; None elsewhere or once it has exited).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The `data:` payloads of a server-sent event body, in order.
    pub fn events(&self) -> Vec<String> {
        sse_data(&self.text())
    }
}

/// The `data:` payloads of server-sent events (comments and other fields left out).
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| {
            let lines: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect()
}

/// Send one request (Connection: close) and read the whole answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = send(addr, method, path, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the answer");
    parse_response(&raw)
}

/// Send a request and return the open connection, for reading a stream as it comes.
pub fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connecting to glint serve");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

pub fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

/// The payload of a `Transfer-Encoding: chunked` body (as much as is complete).
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("a chunk size");
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// Wait until `f` holds, polling every 50 ms for at most `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run the OpenAI-client checks of tests/serve_openai.py against `base` (…/v1) and return its
/// stdout; its failure fails the test. None (with a message) when the `openai` package is missing
/// outside CI (scripts/setup.sh installs it).
pub fn openai_checks(
    base: &str,
    model: &str,
    checks: &str,
    api_key: &str,
    tokens: usize,
) -> Option<String> {
    let have = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        let msg = "the Python 'openai' package is missing: python3 -m pip install openai (scripts/setup.sh)";
        if crate::cli::in_ci() {
            panic!("CI=true: {msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let script = crate::common::fixture("../serve_openai.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([base, model, checks, api_key])
        .env("SERVE_TOKENS", tokens.to_string())
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tests/serve_openai.py {checks} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}
