//! What broke under faults, floods and forged members, each reproduced against real processes
//! on 127.0.0.1 (the tiny trained judge: a response ending in "good" scores 8, "bad" 3) and
//! shown fixed: an unpaced flood on one ScoreStream, slow and half-open HTTP clients, messages
//! that are not protobuf or far too large, an idle stream during a graceful stop.

mod support;

use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::{Message, Sampling, ScoreRequest};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request(id: &str, k: u32) -> ScoreRequest {
    ScoreRequest {
        id: id.into(),
        conversation: vec![Message {
            role: "user".into(),
            content: "the answer is".into(),
        }],
        responses: vec!["it is so good".into(), "it is so bad".into()],
        sampling: Some(Sampling {
            k,
            seed: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Lets this test process open thousands of sockets.
fn raise_fd_limit() {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn a_hundred_thousand_unpaced_requests_on_one_score_stream_are_all_answered() {
    let _serial = serial();
    let dir = scratch("flood");
    let w = static_worker(&dir, "1024", &[]);
    let router = static_router(&dir, &w.grpc(), "", &[]);
    // The Python client with pacing off writes as fast as it can: before the router read
    // ahead, h2 dropped the connection (GOAWAY too_many_data_frames) past ~2,500 requests.
    let out = python_client("stream_flood.py", &[&router.grpc(), "100000", "none"]);
    assert_eq!(out["answered"], 100000, "{out}");
    assert_eq!(out["errors"], 0, "{out}");
    // Paced (the client's default window) works the same.
    let out = python_client("stream_flood.py", &[&router.grpc(), "2000"]);
    assert_eq!(out["answered"], 2000, "{out}");
}

#[test]
fn an_idle_score_stream_does_not_hold_up_a_graceful_stop_and_duplicate_ids_are_refused() {
    let _serial = serial();
    let dir = scratch("idle-stream");
    let w = static_worker(&dir, "1024", &[]);
    let mut router = static_router(&dir, &w.grpc(), "", &[]);
    let rt = runtime();
    let addr = router.grpc();
    let (tx, rx) = tokio::sync::mpsc::channel::<ScoreRequest>(8);
    let mut answers = rt.block_on(async {
        let mut c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        c.score_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner()
    });
    // Two requests with one id, back to back: the second is refused in band, by id.
    rt.block_on(async {
        tx.send(request("same", 4)).await.unwrap();
        tx.send(request("same", 4)).await.unwrap();
    });
    let mut got = Vec::new();
    for _ in 0..2 {
        let r = rt.block_on(answers.message()).unwrap().expect("an answer");
        got.push(r);
    }
    let refused: Vec<_> = got.iter().filter(|r| r.error.is_some()).collect();
    assert_eq!(refused.len(), 1, "{got:?}");
    let e = refused[0].error.as_ref().unwrap();
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
    assert!(e.message.contains("already in flight"), "{}", e.message);
    assert!(got
        .iter()
        .any(|r| r.error.is_none() && r.rewards.len() == 2));

    // The stream stays open and silent; a SIGTERM must still stop the router promptly.
    router.term();
    let code = router.wait_exit(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(0),
        "the router did not stop with an idle stream open"
    );
    // The client sees its stream end cleanly.
    let end = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), answers.message()).await });
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
    drop(tx);
}

/// Sends raw bytes on a fresh connection; returns what came back before the server closed it
/// or `limit` passed.
fn exchange(addr: &str, bytes: &[u8], limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[test]
fn slow_and_half_open_http_clients_neither_hold_the_listener_nor_its_memory() {
    let _serial = serial();
    raise_fd_limit();
    let dir = scratch("slowloris");
    let w = static_worker(&dir, "1024", &[]);
    let router = static_router(
        &dir,
        &w.grpc(),
        "127.0.0.1:0",
        &[
            "--http-header-timeout-s",
            "2",
            "--http-body-timeout-s",
            "2",
            "--http-idle-timeout-s",
            "3",
            "--http-max-connections",
            "512",
        ],
    );
    let http_addr = router.http();
    let pid = router.pid();
    let before = rss_mib(pid);

    // Thousands of connections that never finish: partial headers, a body shorter than its
    // Content-Length, nothing at all.
    let mut held = Vec::new();
    for i in 0..3000 {
        let mut s = TcpStream::connect(&http_addr).unwrap();
        let _ = match i % 3 {
            0 => s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n"),
            1 => s.write_all(
                b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"q",
            ),
            _ => Ok(()),
        };
        held.push(s);
    }
    // The listener still answers: the longest-idle connections make room.
    let (code, body) = http(&http_addr, "GET", "/health", b"");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(
        &http_addr,
        "POST",
        "/get_reward?k=1",
        br#"{"query": ["the answer is it is so good"], "prompts": ["the answer is"]}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rewards"].as_array().map(Vec::len), Some(1), "{body}");
    drop(held);

    // Partial headers are cut after the header timeout; an idle connection after the idle
    // timeout; a body that stops short gets 408, in JSON.
    let (out, took) = exchange(
        &http_addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(30),
    );
    assert!(
        took < Duration::from_secs(15),
        "partial headers held {took:?}: {out}"
    );
    let (out, took) = exchange(&http_addr, b"", Duration::from_secs(30));
    assert!(
        took < Duration::from_secs(15),
        "an idle connection held {took:?}: {out}"
    );
    let (out, _) = exchange(
        &http_addr,
        b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        Duration::from_secs(30),
    );
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        out.contains("application/json") && out.contains("\"error\""),
        "{out}"
    );

    // Every error of /get_reward is JSON: a body over the limit, a bad query string.
    let (out, _) = exchange(
        &http_addr,
        b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(
        out.contains("\"error\"") && out.contains("--http-max-body-mib"),
        "{out}"
    );
    let (code, body) = http(&http_addr, "POST", "/get_reward?k=lots", b"{}");
    assert_eq!(code, 400);
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(
        v["error"].as_str().unwrap().contains("query string"),
        "{body}"
    );

    // The memory those connections took comes back.
    wait_for(
        Duration::from_secs(20),
        "the router's memory to come back",
        || rss_mib(pid) <= before + 24,
    );
}

/// Open descriptors of a process.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// With tokens, a request is refused on its head, before a byte of its body is read, and the
/// connection is closed; connections over the cap that have not finished a request are closed
/// at once, not when their header timeout runs out.
#[test]
fn unauthenticated_bodies_are_refused_on_their_head_and_the_connection_cap_holds() {
    let _serial = serial();
    raise_fd_limit();
    let dir = scratch("auth-first");
    let (_w, router) = guarded_router(
        &dir,
        "1024",
        "public-1\n",
        &[
            "--http-header-timeout-s",
            "10",
            "--http-max-connections",
            "256",
        ],
    );
    let http_addr = router.http();
    let pid = router.pid();
    let before = rss_mib(pid);
    // 20 POSTs of a declared 64 MiB without a token, each sending 1 MiB and waiting: every
    // one is answered 401 on its head and closed.
    let head = b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 67108864\r\n\r\n";
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&http_addr).unwrap();
            s.write_all(head).unwrap();
            let _ = s.write_all(&vec![b' '; 1 << 20]);
            s
        })
        .collect();
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 401"), "POST {i}: {out}");
        assert!(out.contains("bearer token"), "{out}");
    }
    assert!(
        rss_mib(pid) <= before + 16,
        "the router read the bodies: {} MiB, {before} MiB before",
        rss_mib(pid)
    );
    drop(conns);
    // With the token, the same route answers.
    let body = br#"{"query": ["the answer is it is so good"], "prompts": ["the answer is"]}"#;
    let (out, _) = exchange(
        &http_addr,
        &[
            format!(
                "POST /get_reward?k=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer public-1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            body,
        ]
        .concat(),
        Duration::from_secs(30),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // 3,000 connections trickling their headers: the cap holds while they do.
    let base = open_fds(pid);
    let mut held = Vec::new();
    let mut most = 0;
    for i in 0..3000 {
        let mut s = TcpStream::connect(&http_addr).unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
        held.push(s);
        if i % 250 == 249 {
            std::thread::sleep(Duration::from_millis(100));
            most = most.max(open_fds(pid));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    most = most.max(open_fds(pid));
    assert!(
        most <= base + 256 + 32,
        "{most} descriptors open against a cap of 256 connections ({base} before)"
    );
    let (code, body) = http(&http_addr, "GET", "/health", b"");
    assert_eq!(code, 200, "{body}");
    drop(held);
}

#[test]
fn messages_that_are_not_protobuf_or_far_too_large_are_the_callers_error() {
    let _serial = serial();
    let dir = scratch("bad-messages");
    let w = static_worker(&dir, "1024", &[]);
    let router = static_router(&dir, &w.grpc(), "", &[]);
    let out = python_client("bad_messages.py", &[&router.grpc()]);
    assert_eq!(out["not_utf8"][0], "INVALID_ARGUMENT", "{out}");
    assert!(
        out["not_utf8"][1].as_str().unwrap().contains("UTF-8"),
        "{out}"
    );
    assert_eq!(out["corrupt"][0], "INVALID_ARGUMENT", "{out}");
    assert_eq!(out["too_large"][0], "RESOURCE_EXHAUSTED", "{out}");
    assert!(
        out["too_large"][1]
            .as_str()
            .unwrap()
            .contains("the limit is 4194304 bytes (--max-request-bytes)"),
        "{out}"
    );
}

/// A random-weight model of 112M parameters (`grm model init --shape small-100m`) in `dir`.
fn small_model(dir: &std::path::Path) -> String {
    let model = dir.join("small-100m");
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_grm"))
        .args([
            "model",
            "init",
            "--shape",
            "small-100m",
            "--out",
            model.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    model.display().to_string()
}

/// A tiny-judge worker registered in etcd, with `extra` flags.
fn etcd_worker(dir: &std::path::Path, name: &str, model: &str, etcd: &str, extra: &[&str]) -> Proc {
    let model = fixture(model);
    let mut args = vec![
        "worker",
        "--model",
        &model,
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        etcd,
        "--lease-ttl-s",
        "2",
        "--threads",
        "1",
        "--kv-blocks",
        "1024",
    ];
    args.extend_from_slice(extra);
    grm(dir, name, &args)
}

fn health_field(router: &Proc, field: &str) -> i64 {
    let (code, body) = http(&router.http(), "GET", "/health", b"");
    if code != 200 {
        return 0;
    }
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v[field].as_i64())
        .unwrap_or(0)
}

fn bearer<T>(req: &mut tonic::Request<T>, token: &str) {
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
}

#[test]
fn internal_services_need_the_clusters_proof_and_a_forged_or_replaced_member_gets_nothing() {
    use grm_proto::v1::aggregator_service_client::AggregatorServiceClient;
    use grm_proto::v1::worker_service_client::WorkerServiceClient;
    use grm_proto::v1::{AggregateRequest, GenerateRequest, ScoreTextsRequest, StatusRequest};
    let _serial = serial();
    let dir = scratch("forged");
    let etcd = Etcd::start(&dir);
    let url = etcd.client_url.clone();
    let (public, cluster) = (dir.join("public-token"), dir.join("cluster-token"));
    std::fs::write(&public, "public-1\n").unwrap();
    std::fs::write(&cluster, "cluster-2\n").unwrap();
    let ct = cluster.to_str().unwrap();

    // A router that guards its public API but would call its members without credentials
    // refuses to start, naming what to give.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grm"))
        .args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "",
            "--etcd",
            &url,
        ])
        .args(["--auth-token-file", public.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cluster-token-file") && err.contains("mutual TLS"),
        "{err}"
    );

    let w = etcd_worker(&dir, "w", "tiny-judge", &url, &["--cluster-token-file", ct]);
    let m = etcd_worker(
        &dir,
        "meta",
        "tiny-judge-meta",
        &url,
        &["--role", "meta-rm", "--cluster-token-file", ct],
    );
    let a = grm(
        &dir,
        "aggregator",
        &[
            "aggregator",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &url,
            "--lease-ttl-s",
            "2",
            "--template",
            short_template_static(),
            "--cluster-token-file",
            ct,
        ],
    );
    // The forger: a worker that answers anyone, written into the (plaintext) etcd without
    // the cluster token, so its registration is unsigned.
    let fake = etcd_worker(
        &dir,
        "fake",
        "tiny-judge",
        &url,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let router = grm(
        &dir,
        "router",
        &[
            "router",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--etcd",
            &url,
            "--template",
            short_template_static(),
            "--max-new-tokens",
            "32",
            "--chunk-samples",
            "1",
            "--auth-token-file",
            public.to_str().unwrap(),
            "--cluster-token-file",
            ct,
        ],
    );
    wait_for(Duration::from_secs(20), "the signed members", || {
        health_field(&router, "grm_workers") == 1
            && health_field(&router, "meta_workers") == 1
            && health_field(&router, "aggregators") == 1
    });
    // The forger's unsigned registration is refused, and said so (the router may count the
    // signed members before it reads the forger's entry: a fresh-clone CI run once did).
    wait_for(
        Duration::from_secs(20),
        "the unsigned member refused",
        || {
            router
                .log_text()
                .contains("not signed with the cluster token")
        },
    );

    let rt = runtime();
    let addr = router.grpc();
    let answers = rt.block_on(async {
        let mut c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut out = Vec::new();
        for i in 0..6 {
            let mut r = request(&format!("r{i}"), 4);
            r.return_samples = true;
            let mut req = tonic::Request::new(r);
            bearer(&mut req, "public-1");
            out.push(c.score(req).await.unwrap().into_inner());
        }
        out
    });
    let fake_addr = fake.grpc();
    for a in &answers {
        assert_eq!(a.samples.len(), 4);
        for s in &a.samples {
            assert_eq!(s.worker, w.grpc(), "a sample came from {}", s.worker);
        }
        assert_eq!(a.k_meta, 2, "the signed meta RM filtered");
    }
    let (_, scrape) = http(
        fake.ready["metrics"].as_str().unwrap(),
        "GET",
        "/metrics",
        b"",
    );
    assert!(
        metric(&scrape, "grm_engine_generated_tokens_total{role=\"grm\"}") == 0.0,
        "the forged member {fake_addr} generated tokens:\n{scrape}"
    );

    // Every internal service refuses a caller without the cluster's proof, and serves one with
    // it. The token itself is no credential (it never travels), and a proof is good once, for
    // its own method.
    let keys = grm_cluster::cluster_keys::ClusterKeys::parse("cluster-2", "test").unwrap();
    let prove = |req: &mut tonic::metadata::MetadataMap, method: &str| {
        req.insert(
            grm_cluster::cluster_keys::PROOF_HEADER,
            keys.prove_call(method, "").parse().unwrap(),
        );
    };
    rt.block_on(async {
        let mut wc = WorkerServiceClient::connect(format!("http://{}", w.grpc()))
            .await
            .unwrap();
        let gen = GenerateRequest {
            prompt: "<bos>hello".into(),
            sample_indices: vec![0],
            seeds: vec![1],
            max_new_tokens: 4,
            ..Default::default()
        };
        let s = wc.generate(gen.clone()).await.expect_err("no proof");
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        for token in ["public-1", "cluster-2"] {
            let mut wrong = tonic::Request::new(gen.clone());
            bearer(&mut wrong, token);
            let s = wc
                .generate(wrong)
                .await
                .expect_err("a bearer token is no proof");
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{token}");
        }
        let mut mc = WorkerServiceClient::connect(format!("http://{}", m.grpc()))
            .await
            .unwrap();
        let texts = ScoreTextsRequest {
            texts: vec!["<bos>x".into()],
            ..Default::default()
        };
        let s = mc.score_texts(texts.clone()).await.expect_err("no proof");
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        let score_texts = "/grm.v1.WorkerService/ScoreTexts";
        let mut ok = tonic::Request::new(texts.clone());
        prove(ok.metadata_mut(), score_texts);
        let replay = ok.metadata().clone();
        mc.score_texts(ok).await.expect("with a proof");
        let mut again = tonic::Request::new(texts.clone());
        *again.metadata_mut() = replay;
        let s = mc
            .score_texts(again)
            .await
            .expect_err("a proof is good once");
        assert!(s.message().contains("replay"), "{s:?}");
        let mut other = tonic::Request::new(texts);
        prove(other.metadata_mut(), "/grm.v1.WorkerService/Status");
        let s = mc
            .score_texts(other)
            .await
            .expect_err("a proof is for its method");
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        let mut ac = AggregatorServiceClient::connect(format!("http://{}", a.grpc()))
            .await
            .unwrap();
        let s = ac
            .aggregate(AggregateRequest::default())
            .await
            .expect_err("no proof");
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        let mut st = tonic::Request::new(StatusRequest {});
        prove(st.metadata_mut(), "/grm.v1.WorkerService/Status");
        wc.status(st).await.expect("status with a proof");
    });

    // A signed worker dies; its registration outlives it (a 30 s lease). /health counts the
    // members that answer, not those listed. Then a stranger listens at its address: what it
    // is sent holds no secret, and no live member takes the proofs it got.
    let mut w2 = grm(
        &dir,
        "w2",
        &[
            "worker",
            "--model",
            &fixture("tiny-judge"),
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &url,
            "--lease-ttl-s",
            "30",
            "--threads",
            "1",
            "--kv-blocks",
            "1024",
            "--cluster-token-file",
            ct,
        ],
    );
    let dead_addr = w2.grpc();
    wait_for(Duration::from_secs(20), "two answering workers", || {
        health_field(&router, "grm_workers") == 2
    });
    w2.kill9();
    wait_for(
        Duration::from_secs(10),
        "the dead worker no longer counted",
        || health_field(&router, "grm_workers") == 1,
    );
    let seen: Arc<Mutex<Vec<(String, tonic::metadata::MetadataMap)>>> = Arc::default();
    let stranger = Stranger(Arc::clone(&seen));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&dead_addr))
        .expect("the dead worker's address is free");
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(grm_proto::v1::worker_service_server::WorkerServiceServer::new(stranger))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    wait_for(
        Duration::from_secs(10),
        "calls reaching the stranger",
        || seen.lock().unwrap().len() >= 2,
    );
    rt.block_on(async {
        let mut c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        for i in 0..3 {
            let mut req = tonic::Request::new(request(&format!("s{i}"), 4));
            bearer(&mut req, "public-1");
            c.score(req).await.expect("served by the live worker");
        }
    });
    let calls = seen.lock().unwrap().clone();
    assert!(!calls.is_empty());
    rt.block_on(async {
        let mut wc = WorkerServiceClient::connect(format!("http://{}", w.grpc()))
            .await
            .unwrap();
        for (method, meta) in &calls {
            for kv in meta.iter() {
                if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                    let v = v.to_str().unwrap_or_default();
                    assert!(!v.contains("cluster-2"), "{method}: the secret in `{k}`");
                }
            }
            let proof = meta
                .get(grm_cluster::cluster_keys::PROOF_HEADER)
                .unwrap_or_else(|| panic!("{method}: no proof"))
                .clone();
            // The same proof, the same method, at the live worker, within the window.
            let mut st = tonic::Request::new(StatusRequest {});
            st.metadata_mut()
                .insert(grm_cluster::cluster_keys::PROOF_HEADER, proof.clone());
            if method == "Status" {
                let s = wc
                    .status(st)
                    .await
                    .expect_err("a proof made for the dead member");
                assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
                assert!(s.message().contains("made for the member"), "{s:?}");
            }
        }
    });
    assert!(
        calls.iter().any(|(m, _)| m == "Status"),
        "the load poll reached it"
    );

    // grm serve with a guarded public API: its in-process workers' ports are guarded too.
    let meta_model = fixture("tiny-judge-meta");
    let serve = serve_tiny(
        &dir,
        "serve",
        &[
            "--meta-model",
            &meta_model,
            "--auth-token-file",
            public.to_str().unwrap(),
        ],
    );
    let internal: Vec<String> = serve.ready["internal"]
        .as_array()
        .expect("the in-process workers' addresses")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(internal.len(), 2);
    rt.block_on(async {
        for addr in &internal {
            let mut c = WorkerServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let s = c.status(StatusRequest {}).await.expect_err("no token");
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{addr}");
        }
    });
}

#[test]
fn a_dead_meta_rm_costs_the_filter_not_the_answer() {
    let _serial = serial();
    let dir = scratch("meta-dead");
    let w = static_worker(&dir, "1024", &[]);
    let mut m = meta_worker(&dir, &[]);
    let router = static_router(
        &dir,
        &w.grpc(),
        "127.0.0.1:0",
        &["--meta-workers", &m.grpc()],
    );
    let rt = runtime();
    let addr = router.grpc();
    let score = |id: &str| {
        let addr = addr.clone();
        let r = request(id, 4);
        rt.block_on(async move {
            let mut c = RewardServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            c.score(r).await.map(|r| r.into_inner())
        })
    };
    let before = score("alive").expect("scored");
    assert_eq!(before.k_meta, 2);
    assert!(before.meta_fallback.is_empty());
    // The meta RM dies; its address stays in the list (a lease that has not expired yet).
    m.kill9();
    for i in 0..3 {
        let r = score(&format!("dead-{i}")).expect("the judgements are voted without the meta RM");
        assert_eq!(r.k_meta, 0, "{r:?}");
        assert!(
            r.meta_fallback.contains("meta RM could not score"),
            "{}",
            r.meta_fallback
        );
        assert_eq!(r.rewards[0].votes, r.valid_samples);
        assert!(r.valid_samples >= 1);
        assert_eq!(r.best, Some(0), "the judgements still vote: \"good\" wins");
    }
    let (_, scrape) = http(&router.http(), "GET", "/metrics", b"");
    assert_eq!(metric(&scrape, "grm_meta_fallbacks_total"), 3.0, "{scrape}");
}

/// Whether a request is meta-filtered is the router's call: an aggregator knows its members
/// before it announces itself, and one whose membership lacks the meta RM that the router saw
/// says why it voted without it, never silently.
#[test]
fn an_aggregator_never_votes_without_the_meta_rm_the_router_saw_and_says_why() {
    use grm_proto::v1::aggregator_service_client::AggregatorServiceClient;
    use grm_proto::v1::{AggregateRequest, Judgement};
    let _serial = serial();
    let dir = scratch("meta-view");
    let rt = runtime();

    // An aggregator started after the meta RM registered: its first request, sent the
    // moment it is ready, is meta-filtered (it used to list etcd after announcing itself).
    let etcd = Etcd::start(&dir);
    let url = etcd.client_url.clone();
    let m = etcd_worker(
        &dir,
        "meta",
        "tiny-judge-meta",
        &url,
        &["--role", "meta-rm"],
    );
    wait_for(Duration::from_secs(20), "the meta RM in etcd", || {
        m.log_text().contains("registered in etcd")
    });
    let judgement = |i: u32, order: [u32; 2]| Judgement {
        index: i,
        text: "Analysis: one is good.\nScores: \\boxed{8, 3}".into(),
        order: order.to_vec(),
        ..Default::default()
    };
    let aggregate = AggregateRequest {
        request: Some(request("fresh", 4)),
        judgements: vec![
            judgement(0, [0, 1]),
            judgement(1, [1, 0]),
            judgement(2, [0, 1]),
            judgement(3, [1, 0]),
        ],
        seed: 3,
        ..Default::default()
    };
    for round in 0..3 {
        let a = grm(
            &dir,
            &format!("aggregator-{round}"),
            &[
                "aggregator",
                "--listen",
                "127.0.0.1:0",
                "--etcd",
                &url,
                "--template",
                short_template_static(),
            ],
        );
        let r = rt.block_on(async {
            let mut c = AggregatorServiceClient::connect(format!("http://{}", a.grpc()))
                .await
                .unwrap();
            c.aggregate(aggregate.clone()).await.unwrap().into_inner()
        });
        assert_eq!(r.k_meta, 2, "round {round}: {r:?}");
        assert!(r.meta_fallback.is_empty(), "{}", r.meta_fallback);
    }

    // A router that sees a meta RM, over an aggregator that does not: the router pins
    // k_meta, and the aggregator, after waiting for one, says why it voted without it.
    let w = static_worker(&dir, "1024", &[]);
    let blind = grm(
        &dir,
        "blind-aggregator",
        &[
            "aggregator",
            "--listen",
            "127.0.0.1:0",
            "--template",
            short_template_static(),
        ],
    );
    let router = static_router(
        &dir,
        &w.grpc(),
        "127.0.0.1:0",
        &["--meta-workers", &m.grpc(), "--aggregators", &blind.grpc()],
    );
    let addr = router.grpc();
    let r = rt.block_on(async move {
        let mut c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        c.score(request("blind", 4)).await.unwrap().into_inner()
    });
    assert_eq!(r.k_meta, 0, "{r:?}");
    assert!(
        r.meta_fallback
            .contains("no meta-RM worker was in this aggregator's membership"),
        "the fallback is said: {:?}",
        r.meta_fallback
    );
    assert!(r.valid_samples >= 1);
    assert_eq!(r.rewards[0].votes, r.valid_samples);
}

#[test]
fn a_slow_worker_sending_progress_is_never_declared_stalled() {
    let _serial = serial();
    let dir = scratch("slow");
    // A 214 MiB model: removed when the test ends, whatever its outcome.
    let _cleanup = RemoveOnDrop(dir.clone());
    // A random-weight 112M model on one thread writes a long judgement (it never stops by
    // itself): tens of seconds with no sample finished, many times the stall limit.
    let model = small_model(&dir);
    let w = grm(
        &dir,
        "slow",
        &[
            "worker",
            "--model",
            &model,
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--kv-blocks",
            "512",
        ],
    );
    let router = static_router(&dir, &w.grpc(), "", &["--stall-timeout-s", "2"]);
    let rt = runtime();
    let addr = router.grpc();
    let start = Instant::now();
    let r = rt
        .block_on(async move {
            let mut c = RewardServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut r = request("slow", 1);
            r.sampling.as_mut().unwrap().max_new_tokens = 1200;
            c.score(r).await.map(|r| r.into_inner())
        })
        .expect("a slow worker's judgement is waited for");
    let took = start.elapsed();
    eprintln!("one judgement of 1200 tokens took {took:?} with a 2 s stall limit");
    let usage = r.usage.unwrap();
    assert_eq!(usage.generated_tokens, 1200, "generated once, not retried");
    assert!(
        !router.log_text().contains("chunk failed on a worker"),
        "the slow worker was declared stalled:\n{}",
        router.log_text()
    );
}

#[test]
fn a_silent_worker_is_replaced_in_time_for_the_deadline() {
    let _serial = serial();
    let dir = scratch("silent");
    let w1 = static_worker(&dir, "1024", &[]);
    let w2 = static_worker(&dir, "1024", &[]);
    let both = format!("{},{}", w1.grpc(), w2.grpc());
    let router = static_router(&dir, &both, "", &["--chunk-samples", "1"]);
    // w1 accepts connections and never answers: stopped, not dead.
    unsafe {
        libc::kill(w1.pid(), libc::SIGSTOP);
    }
    let rt = runtime();
    let addr = router.grpc();
    let answers = rt.block_on(async move {
        let c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let mut c = c.clone();
                tokio::spawn(async move {
                    let mut r = request(&format!("q{i}"), 2);
                    r.conversation[0].content = format!("question {i} the answer is");
                    r.return_samples = true;
                    let mut req = tonic::Request::new(r);
                    // Before progress, the 120 s stall limit outlived this deadline.
                    req.set_timeout(Duration::from_secs(30));
                    c.score(req).await.map(|r| r.into_inner())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    unsafe {
        libc::kill(w1.pid(), libc::SIGCONT);
    }
    for a in &answers {
        let a = a
            .as_ref()
            .expect("answered by the other worker before the deadline");
        assert!(a.samples.iter().all(|s| s.worker == w2.grpc()));
    }
    let log = router.log_text();
    assert!(
        log.contains("chunk failed on a worker")
            && (log.contains("not even progress") || log.contains("no answer within")),
        "no chunk was ever placed on the stopped worker:\n{log}"
    );
}

#[test]
fn the_etcd_watch_holds_for_a_minute() {
    let _serial = serial();
    let dir = scratch("watch");
    let etcd = Etcd::start(&dir);
    let url = etcd.client_url.clone();
    let _w = etcd_worker(&dir, "w1", "tiny-judge", &url, &[]);
    let router = grm(
        &dir,
        "router",
        &[
            "router",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--etcd",
            &url,
        ],
    );
    wait_for(Duration::from_secs(20), "the first worker", || {
        health_field(&router, "grm_workers") == 1
    });
    std::thread::sleep(Duration::from_secs(62));
    let log = router.log_text();
    assert!(
        !log.contains("etcd watch lost"),
        "the watch dropped:\n{log}"
    );
    // And it still sees changes.
    let _w2 = etcd_worker(&dir, "w2", "tiny-judge", &url, &[]);
    wait_for(Duration::from_secs(10), "the second worker", || {
        health_field(&router, "grm_workers") == 2
    });
}

#[test]
fn a_kv_pool_too_small_sends_the_chunk_to_a_larger_one_first() {
    let _serial = serial();
    let dir = scratch("kv-small");
    // 4 blocks of 16 tokens: no prompt of the short template fits.
    let small = static_worker(&dir, "4", &["--block-size", "16"]);
    let large = static_worker(&dir, "1024", &[]);
    let both = format!("{},{}", small.grpc(), large.grpc());
    let router = static_router(&dir, &both, "", &["--chunk-samples", "1"]);
    let rt = runtime();
    let addr = router.grpc();
    let answers = rt.block_on(async {
        let mut c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut out = Vec::new();
        for i in 0..6 {
            let mut r = request(&format!("k{i}"), 2);
            r.conversation[0].content = format!("question {i} the answer is");
            r.return_samples = true;
            out.push(c.score(r).await.map(|r| r.into_inner()));
        }
        out
    });
    for a in answers {
        let a = a.expect("served by the larger pool");
        assert!(a.samples.iter().all(|s| s.worker == large.grpc()));
    }
    // Where no worker's pool is large enough, the request is the caller's to shorten.
    let only_small = static_router(&dir, &small.grpc(), "", &[]);
    let addr = only_small.grpc();
    let s = rt
        .block_on(async {
            let mut c = RewardServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            c.score(request("too-big", 1)).await
        })
        .expect_err("no pool fits");
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("more KV cache than any GRM worker"),
        "{s:?}"
    );
}

#[test]
fn a_burst_of_calls_is_admitted_against_the_queue_as_it_is_now() {
    use grm_proto::v1::worker_service_client::WorkerServiceClient;
    use grm_proto::v1::GenerateRequest;
    let _serial = serial();
    let dir = scratch("burst");
    // --max-queued-tokens 1: a call is taken only while no other prompt waits. Before, the
    // check read the engine's last published step, so a burst all passed.
    let w = static_worker(&dir, "2048", &["--max-queued-tokens", "1"]);
    let rt = runtime();
    let addr = w.grpc();
    let results = rt.block_on(async move {
        let c = WorkerServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let prompt = format!("<bos>{}", "the answer is so good ".repeat(20));
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let (mut c, prompt) = (c.clone(), prompt.clone());
                tokio::spawn(async move {
                    c.generate(GenerateRequest {
                        prompt,
                        sample_indices: vec![0],
                        seeds: vec![i],
                        max_new_tokens: 8,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in calls {
            out.push(t.await.unwrap());
        }
        out
    });
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == tonic::Code::ResourceExhausted))
        .count();
    assert!(results.iter().any(|r| r.is_ok()), "{results:?}");
    assert!(
        refused > 0,
        "a burst all passed the queue limit: {results:?}"
    );
    let e = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(e.message().contains("--max-queued-tokens"), "{e:?}");
}

#[test]
fn models_are_named_and_kv_defaults_are_modest() {
    let _serial = serial();
    let dir = scratch("names");
    let w = static_worker(&dir, "1024", &[]);
    let router = static_router(&dir, &w.grpc(), "", &[]);
    let rt = runtime();
    let addr = router.grpc();
    let (wrong, right) = rt.block_on(async move {
        let mut c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut r = request("gpt", 1);
        r.model = "gpt-9".into();
        let wrong = c.score(r).await;
        let mut r = request("ok", 1);
        r.model = "tiny-judge".into();
        (wrong, c.score(r).await)
    });
    let s = wrong.expect_err("an unknown model, with no --model-name on the router");
    assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");
    assert!(s.message().contains("tiny-judge"), "{s:?}");
    assert_eq!(
        right.expect("its own name").into_inner().model,
        "tiny-judge"
    );

    // A worker left to its defaults takes a KV pool of at most 64 full contexts, not a
    // quarter of the machine, and says so.
    let plain = grm(
        &dir,
        "plain",
        &[
            "worker",
            "--model",
            &fixture("tiny-judge"),
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
        ],
    );
    let blocks = plain.ready["kv_blocks"].as_u64().unwrap();
    // tiny-judge: a context of 512 tokens, blocks of 16.
    assert!(blocks <= 64 * 512 / 16, "{blocks} blocks");
    assert!(plain.log_text().contains("KV cache budget"));
    // grm serve splits one budget between its GRM and its meta RM.
    let serve = grm(
        &dir,
        "serve",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "",
            "--model",
            &fixture("tiny-judge"),
            "--meta-model",
            &fixture("tiny-judge-meta"),
            "--threads",
            "1",
            "--kv-memory-mib",
            "64",
        ],
    );
    let engines = serve.ready["engines"].as_array().unwrap();
    let total: u64 = engines.iter().map(|e| e["kv_mib"].as_u64().unwrap()).sum();
    assert!(total <= 64, "{engines:?}");
    assert!(engines[0]["kv_mib"].as_u64().unwrap() > engines[1]["kv_mib"].as_u64().unwrap());
}

#[test]
fn two_routers_sharing_two_workers_keep_them_balanced() {
    let _serial = serial();
    let dir = scratch("two-routers");
    // A 214 MiB model: removed when the test ends, whatever its outcome.
    let _cleanup = RemoveOnDrop(dir.clone());
    // A random-weight 112M model on one thread writes its judgements to the full length: each
    // request keeps a worker busy for a second or two.
    let model = small_model(&dir);
    let worker = |name: &str| {
        grm(
            &dir,
            name,
            &[
                "worker",
                "--model",
                &model,
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
                "--kv-blocks",
                "512",
            ],
        )
    };
    let (w1, w2) = (worker("w1"), worker("w2"));
    let both = format!("{},{}", w1.grpc(), w2.grpc());
    let routers: Vec<Proc> = (0..2)
        .map(|i| {
            grm(
                &dir,
                &format!("router{i}"),
                &[
                    "router",
                    "--listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "",
                    "--workers",
                    &both,
                    "--template",
                    short_template_static(),
                    "--max-new-tokens",
                    "48",
                    "--affinity-slack",
                    "0",
                ],
            )
        })
        .collect();
    // Each router sends one request at a time, all about the same query: on its own, each
    // would always choose the same (affinity) worker, idle in its own view.
    let rt = runtime();
    let per_worker = rt.block_on(async {
        let tasks: Vec<_> = routers
            .iter()
            .map(|r| {
                let addr = r.grpc();
                tokio::spawn(async move {
                    let mut c = RewardServiceClient::connect(format!("http://{addr}"))
                        .await
                        .unwrap();
                    let mut workers = Vec::new();
                    for i in 0..10 {
                        // One sample, one chunk: on its own, a router places it on the
                        // affinity worker whenever it has nothing else in flight.
                        let mut r = request(&format!("q{i}"), 1);
                        r.return_samples = true;
                        let a = c.score(r).await.unwrap().into_inner();
                        workers.extend(a.samples.into_iter().map(|s| s.worker));
                    }
                    workers
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let on_w1 = per_worker.iter().filter(|w| **w == w1.grpc()).count();
    let on_w2 = per_worker.len() - on_w1;
    eprintln!("samples: {on_w1} on w1, {on_w2} on w2");
    // Each router sees the other's work in the workers' reports and spills to the idle one.
    assert!(
        on_w1.min(on_w2) * 4 >= per_worker.len(),
        "unbalanced: {on_w1} on w1, {on_w2} on w2"
    );
}

#[test]
fn queue_time_is_the_time_spent_waiting_for_the_engine() {
    let _serial = serial();
    let dir = scratch("queue-ms");
    // A 214 MiB model: removed when the test ends, whatever its outcome.
    let _cleanup = RemoveOnDrop(dir.clone());
    // A 112M random model on one thread, one sequence at a time: a second request waits for
    // the first to finish.
    let model = small_model(&dir);
    let w = grm(
        &dir,
        "w",
        &[
            "worker",
            "--model",
            &model,
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--kv-blocks",
            "512",
            "--max-seqs",
            "1",
        ],
    );
    let router = static_router(&dir, &w.grpc(), "", &[]);
    let rt = runtime();
    let addr = router.grpc();
    let (first, second) = rt.block_on(async move {
        let c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let long = |id: &str| {
            let mut r = request(id, 1);
            r.responses.truncate(1);
            r.sampling.as_mut().unwrap().max_new_tokens = 48;
            r
        };
        // The connections are made before anything is timed.
        let mut warm = long("warm-up");
        warm.sampling.as_mut().unwrap().max_new_tokens = 1;
        c.clone().score(warm).await.unwrap();
        let mut c1 = c.clone();
        let a = tokio::spawn(async move { c1.score(long("first")).await.unwrap().into_inner() });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut c2 = c.clone();
        let b = tokio::spawn(async move { c2.score(long("second")).await.unwrap().into_inner() });
        (a.await.unwrap(), b.await.unwrap())
    });
    let (t1, t2) = (first.timings.unwrap(), second.timings.unwrap());
    eprintln!(
        "first: queue {} ms of {} ms; second: queue {} ms of {} ms",
        t1.queue_ms, t1.generate_ms, t2.queue_ms, t2.generate_ms
    );
    // The first started at once: its queueing is a small part of its time (before, the field
    // measured the time to the end of the prefill). The second waited for the first.
    assert!(t1.queue_ms < t1.generate_ms / 4.0, "{t1:?}");
    assert!(t2.queue_ms > t1.queue_ms + t1.generate_ms / 4.0, "{t2:?}");
}

/// One request over --max-request-bytes on a ScoreStream is answered in band; the requests
/// around it are answered and the stream goes on.
#[test]
fn an_oversized_request_on_a_score_stream_is_answered_in_band_and_the_stream_goes_on() {
    use tokio_stream::StreamExt;
    let _serial = serial();
    let dir = scratch("stream-oversized");
    let w = static_worker(&dir, "1024", &[]);
    let router = static_router(&dir, &w.grpc(), "", &[]);
    let addr = router.grpc();
    let answers = runtime().block_on(async move {
        let mut c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut big = request("big", 2);
        big.responses[0] = "x".repeat(10 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(request("before", 2)).await.unwrap();
        tx.send(big).await.unwrap();
        let mut answers = c
            .score_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(answers.next().await.unwrap().unwrap());
        }
        // The stream goes on: a request sent after both is answered too.
        tx.send(request("after", 2)).await.unwrap();
        got.push(answers.next().await.unwrap().unwrap());
        drop(tx);
        assert!(answers.next().await.is_none(), "the stream ends cleanly");
        got
    });
    let by_id = |id: &str| answers.iter().find(|a| a.id == id).unwrap();
    let big = by_id("big");
    let e = big.error.as_ref().expect("an in-band error");
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}");
    assert!(e.message.contains("--max-request-bytes"), "{e:?}");
    for id in ["before", "after"] {
        let a = by_id(id);
        assert!(a.error.is_none(), "{a:?}");
        assert_eq!(a.rewards.len(), 2, "{a:?}");
    }
}

/// A server at a dead member's address: it records what each call carries and answers none.
#[derive(Clone)]
struct Stranger(Arc<Mutex<Vec<(String, tonic::metadata::MetadataMap)>>>);

impl Stranger {
    fn record<T>(&self, method: &str, req: &tonic::Request<T>) -> tonic::Status {
        self.0
            .lock()
            .unwrap()
            .push((method.to_string(), req.metadata().clone()));
        tonic::Status::unavailable("a stranger")
    }
}

#[tonic::async_trait]
impl grm_proto::v1::worker_service_server::WorkerService for Stranger {
    type GenerateStream = tokio_stream::Empty<Result<grm_proto::v1::GenerateEvent, tonic::Status>>;
    async fn generate(
        &self,
        req: tonic::Request<grm_proto::v1::GenerateRequest>,
    ) -> Result<tonic::Response<Self::GenerateStream>, tonic::Status> {
        Err(self.record("Generate", &req))
    }
    async fn score_texts(
        &self,
        req: tonic::Request<grm_proto::v1::ScoreTextsRequest>,
    ) -> Result<tonic::Response<grm_proto::v1::ScoreTextsResponse>, tonic::Status> {
        Err(self.record("ScoreTexts", &req))
    }
    async fn status(
        &self,
        req: tonic::Request<grm_proto::v1::StatusRequest>,
    ) -> Result<tonic::Response<grm_proto::v1::WorkerStatus>, tonic::Status> {
        Err(self.record("Status", &req))
    }
}

/// A copy of a fixture model under `dir/<copy>/<name>` (so its served name stays `name`).
fn model_copy(dir: &std::path::Path, copy: &str, name: &str) -> std::path::PathBuf {
    let to = dir.join(copy).join(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to
}

#[test]
fn weights_changed_under_a_worker_stop_its_engine_and_never_give_garbage() {
    let _serial = serial();
    let dir = scratch("weights-changed");
    let worker_on = |model: &std::path::Path| {
        let m = model.to_str().unwrap().to_string();
        grm(
            &dir,
            "worker",
            &[
                "worker",
                "--model",
                &m,
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
                "--kv-blocks",
                "1024",
            ],
        )
    };
    let (a_model, b_model) = (
        model_copy(&dir, "a", "tiny-judge"),
        model_copy(&dir, "b", "tiny-judge"),
    );
    let (mut a, mut b) = (worker_on(&a_model), worker_on(&b_model));
    let both = format!("{},{}", a.grpc(), b.grpc());
    let router = static_router(&dir, &both, "", &["--chunk-samples", "1"]);
    let rt = runtime();
    let addr = router.grpc();
    let score = |rt: &tokio::runtime::Runtime, id: String| {
        rt.block_on(async {
            let mut c = RewardServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut r = request(&id, 4);
            r.return_samples = true;
            c.score(r).await.map(|r| r.into_inner())
        })
    };
    let before = score(&rt, "before".into()).expect("both workers serve");
    assert!(
        before.rewards[0].mean_score > before.rewards[1].mean_score && before.rewards[0].votes == 4,
        "{:?}",
        before.rewards
    );
    let workers: std::collections::HashSet<_> =
        before.samples.iter().map(|s| s.worker.clone()).collect();
    assert_eq!(workers.len(), 2, "the chunks spread over both workers");

    // Cut short while mapped: was a SIGBUS that ended the process.
    std::fs::File::options()
        .write(true)
        .open(a_model.join("model.safetensors"))
        .unwrap()
        .set_len(0)
        .unwrap();
    for i in 0..4 {
        let r = score(&rt, format!("cut-{i}")).expect("the other worker serves");
        assert_eq!(r.rewards, before.rewards, "request {i}: never garbage");
        assert!(
            r.samples.iter().all(|s| s.worker == b.grpc()),
            "request {i}"
        );
    }
    assert_eq!(
        a.wait_exit(Duration::from_secs(20)),
        Some(70),
        "an exit with an error (not killed by SIGBUS): {}",
        a.log_text()
    );
    assert!(a.log_text().contains("cut short"), "{}", a.log_text());

    // Written over in place, same size, same header, other numbers: was garbage answers.
    let path = b_model.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[header..].fill(0);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let after = score(&rt, "overwritten".into());
    match after {
        Ok(r) => panic!("an answer from changed weights: {r:?}"),
        Err(s) => assert!(
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ),
            "{s:?}"
        ),
    }
    assert_eq!(
        b.wait_exit(Duration::from_secs(20)),
        Some(70),
        "{}",
        b.log_text()
    );
    assert!(
        b.log_text().contains("written since load"),
        "{}",
        b.log_text()
    );
}
