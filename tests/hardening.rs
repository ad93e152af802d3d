//! What broke under faults, floods and forged members, each reproduced against real processes
//! on 127.0.0.1 (the tiny trained judge: a response ending in "good" scores 8, "bad" 3) and
//! shown fixed: an unpaced flood on one ScoreStream, slow and half-open HTTP clients, messages
//! that are not protobuf or far too large, an idle stream during a graceful stop.

mod support;

use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::{Message, Sampling, ScoreRequest};
use std::io::{Read, Write};
use std::net::TcpStream;
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
        let r = rt
            .block_on(answers.message())
            .unwrap()
            .expect("an answer");
        got.push(r);
    }
    let refused: Vec<_> = got.iter().filter(|r| r.error.is_some()).collect();
    assert_eq!(refused.len(), 1, "{got:?}");
    let e = refused[0].error.as_ref().unwrap();
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
    assert!(e.message.contains("already in flight"), "{}", e.message);
    assert!(got.iter().any(|r| r.error.is_none() && r.rewards.len() == 2));

    // The stream stays open and silent; a SIGTERM must still stop the router promptly.
    router.term();
    let code = router.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "the router did not stop with an idle stream open");
    // The client sees its stream end cleanly.
    let end = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), answers.message()).await
    });
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
    assert!(took < Duration::from_secs(15), "partial headers held {took:?}: {out}");
    let (out, took) = exchange(&http_addr, b"", Duration::from_secs(30));
    assert!(took < Duration::from_secs(15), "an idle connection held {took:?}: {out}");
    let (out, _) = exchange(
        &http_addr,
        b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        Duration::from_secs(30),
    );
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("application/json") && out.contains("\"error\""), "{out}");

    // Every error of /get_reward is JSON: a body over the limit, a bad query string.
    let (out, _) = exchange(
        &http_addr,
        b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("\"error\"") && out.contains("--http-max-body-mib"), "{out}");
    let (code, body) = http(&http_addr, "POST", "/get_reward?k=lots", b"{}");
    assert_eq!(code, 400);
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(v["error"].as_str().unwrap().contains("query string"), "{body}");

    // The memory those connections took comes back.
    wait_for(Duration::from_secs(20), "the router's memory to come back", || {
        rss_mib(pid) <= before + 24
    });
}

#[test]
fn messages_that_are_not_protobuf_or_far_too_large_are_the_callers_error() {
    let _serial = serial();
    let dir = scratch("bad-messages");
    let w = static_worker(&dir, "1024", &[]);
    let router = static_router(&dir, &w.grpc(), "", &[]);
    let out = python_client("bad_messages.py", &[&router.grpc()]);
    assert_eq!(out["not_utf8"][0], "INVALID_ARGUMENT", "{out}");
    assert!(out["not_utf8"][1].as_str().unwrap().contains("UTF-8"), "{out}");
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
