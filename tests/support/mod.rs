//! Starting real processes for the cross-process tests: `grm` roles and a real etcd, on
//! 127.0.0.1, each stopped when its handle drops.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Cross-process tests share two cores: run them one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn fixture(name: &str) -> String {
    repo()
        .join("crates/grm-engine/tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

pub fn short_template() -> String {
    repo()
        .join("tests/data/short-template.toml")
        .display()
        .to_string()
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("grm-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes a scratch directory when dropped (declare it right after the directory, so that it
/// goes last, after the processes using it).
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running process; killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub ready: Value,
    pub log: PathBuf,
}

impl Proc {
    pub fn grpc(&self) -> String {
        self.ready["grpc"]
            .as_str()
            .expect("a gRPC address")
            .to_string()
    }

    pub fn http(&self) -> String {
        self.ready["http"]
            .as_str()
            .expect("an HTTP address")
            .to_string()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: a graceful stop.
    pub fn term(&self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
    }

    /// Waits for the process to exit, returning its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `grm <args>` and waits for its ready line.
pub fn grm(dir: &Path, name: &str, args: &[&str]) -> Proc {
    grm_env(dir, name, args, &[])
}

/// [`grm`] with extra environment variables.
pub fn grm_env(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_grm"))
        .args(args)
        .env("GRM_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start grm");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_default();
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!(
            "{name} did not start ({line:?}); its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    Proc {
        name: name.into(),
        child,
        ready,
        log,
    }
}

/// A real etcd on loopback ports.
pub struct Etcd {
    pub proc: Option<Child>,
    pub client_url: String,
    peer_url: String,
    data: PathBuf,
    log: PathBuf,
    /// Certificate, key and CA files when clients must come over mutual TLS.
    tls: Option<[String; 3]>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd_binary() -> String {
    for c in ["etcd", "/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return c.into();
        }
    }
    panic!("etcd is not installed: run `bash scripts/setup.sh` (Debian's etcd-server)");
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        Self::start_with(dir, None)
    }

    /// An etcd serving clients over TLS with this certificate, and only clients with a
    /// certificate of this CA (`--client-cert-auth`).
    pub fn start_mutual_tls(dir: &Path, cert: &str, key: &str, ca: &str) -> Etcd {
        Self::start_with(dir, Some([cert.into(), key.into(), ca.into()]))
    }

    fn start_with(dir: &Path, tls: Option<[String; 3]>) -> Etcd {
        let (c, p) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut e = Etcd {
            proc: None,
            client_url: format!("{scheme}://127.0.0.1:{c}"),
            peer_url: format!("http://127.0.0.1:{p}"),
            data: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
            tls,
        };
        e.restart();
        e
    }

    /// Starts (again) on the same ports and data.
    pub fn restart(&mut self) {
        let tls_args: Vec<String> = match &self.tls {
            Some([cert, key, ca]) => vec![
                "--cert-file".into(),
                cert.clone(),
                "--key-file".into(),
                key.clone(),
                "--trusted-ca-file".into(),
                ca.clone(),
                "--client-cert-auth".into(),
            ],
            None => Vec::new(),
        };
        let child = Command::new(etcd_binary())
            .args(&tls_args)
            .args([
                "--name",
                "default",
                "--data-dir",
                &self.data.display().to_string(),
                "--listen-client-urls",
                &self.client_url,
                "--advertise-client-urls",
                &self.client_url,
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
                "--initial-cluster",
                &format!("default={}", self.peer_url),
            ])
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .spawn()
            .expect("start etcd");
        self.proc = Some(child);
        let addr = self
            .client_url
            .split_once("://")
            .map_or(self.client_url.as_str(), |(_, a)| a)
            .to_string();
        wait_for(Duration::from_secs(20), "etcd to listen", || {
            TcpStream::connect(&addr).is_ok()
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.proc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it holds, or panics after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// A minimal HTTP/1.1 exchange: returns (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, body.to_string());
    }
    // Chunked: hex size, CRLF, data, CRLF, ..., a zero size.
    let (mut out, mut rest) = (String::new(), body);
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    (status, out)
}

pub fn short_template_static() -> &'static str {
    Box::leak(short_template().into_boxed_str())
}

/// Runs `tests/python/<script>` with the test venv's Python and the working tree's client;
/// returns its JSON line.
pub fn python_client(script: &str, args: &[&str]) -> serde_json::Value {
    let py = repo().join(".venv-test/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `bash scripts/setup.sh`",
        py.display()
    );
    let out = std::process::Command::new(&py)
        .env("PYTHONPATH", repo().join("clients/python"))
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A tiny-judge worker on one thread with `kv_blocks` KV blocks, outside etcd.
pub fn static_worker(dir: &std::path::Path, kv_blocks: &str, extra: &[&str]) -> Proc {
    let model = fixture("tiny-judge");
    let mut args = vec![
        "worker",
        "--model",
        &model,
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--kv-blocks",
        kv_blocks,
    ];
    args.extend_from_slice(extra);
    grm(dir, "worker", &args)
}

/// A router over one static worker (no etcd), with the short template and 32 new tokens.
pub fn static_router(dir: &std::path::Path, worker: &str, http: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "router",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        http,
        "--workers",
        worker,
        "--template",
        short_template_static(),
        "--max-new-tokens",
        "32",
    ];
    args.extend_from_slice(extra);
    grm(dir, "router", &args)
}

/// A worker and a router over it whose public API takes `tokens` (the --auth-token-file's
/// text, one token a line) and whose internal calls carry a cluster token: (worker, router).
pub fn guarded_router(dir: &Path, kv_blocks: &str, tokens: &str, extra: &[&str]) -> (Proc, Proc) {
    let (token_file, cluster_file) = (dir.join("tokens"), dir.join("cluster-token"));
    std::fs::write(&token_file, tokens).unwrap();
    std::fs::write(&cluster_file, "internal-456\n").unwrap();
    let cluster = cluster_file.to_str().unwrap();
    let w = static_worker(dir, kv_blocks, &["--cluster-token-file", cluster]);
    let mut args = vec![
        "--auth-token-file",
        token_file.to_str().unwrap(),
        "--cluster-token-file",
        cluster,
    ];
    args.extend_from_slice(extra);
    let router = static_router(dir, &w.grpc(), "127.0.0.1:0", &args);
    (w, router)
}

/// One sample's value in a Prometheus text scrape (0 when the series is absent).
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `grm serve` of the tiny judge (gRPC only unless `extra` gives --http-listen), with `extra`
/// flags (later flags of the same name are not allowed: give what is not here).
pub fn serve_tiny(dir: &Path, name: &str, extra: &[&str]) -> Proc {
    let (model, template) = (fixture("tiny-judge"), short_template());
    let has_http = extra.contains(&"--http-listen");
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--model",
        &model,
        "--template",
        &template,
        "--threads",
        "1",
        "--kv-blocks",
        "2048",
    ];
    if !has_http {
        args.extend(["--http-listen", ""]);
    }
    args.extend_from_slice(extra);
    grm(dir, name, &args)
}

/// A meta-RM worker of the tiny judge's meta RM on one thread, outside etcd, with `extra` flags.
pub fn meta_worker(dir: &Path, extra: &[&str]) -> Proc {
    let model = fixture("tiny-judge-meta");
    let mut args = vec![
        "worker",
        "--model",
        &model,
        "--role",
        "meta-rm",
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--kv-blocks",
        "512",
    ];
    args.extend_from_slice(extra);
    grm(dir, "meta", &args)
}
