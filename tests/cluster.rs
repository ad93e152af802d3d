//! The cluster as it runs: real `grm` processes (router, GRM workers, a meta-RM worker, an
//! aggregator) and a real etcd on 127.0.0.1, with the tiny trained judge (a response ending in
//! "good" scores 8, "bad" 3). Load, a kill -9, an etcd restart, bad requests, cancellation, a
//! graceful drain, the Python client and OpenRLHF's /get_reward.

mod support;

use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::worker_service_client::WorkerServiceClient;
use grm_proto::v1::{
    label, sample, Label, Message, Sampling, ScoreRequest, ScoreResponse, StatusRequest,
};
use std::collections::HashSet;
use std::time::Duration;
use support::*;

const WORDS: [&str; 19] = [
    "the", "a", "answer", "is", "it", "so", "cat", "sun", "red", "blue", "two", "nine", "ok",
    "yes", "no", "maybe", "seven", "apple", "tree",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn words(&mut self, lo: usize, hi: usize) -> String {
        let n = lo + self.below(hi - lo + 1);
        (0..n)
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A request in the judge's domain; labelled when exactly one response is good.
fn request(rng: &mut Rng, id: String, k: u32) -> ScoreRequest {
    let n = 1 + rng.below(4);
    let goods: Vec<bool> = (0..n).map(|_| rng.below(2) == 0).collect();
    let responses: Vec<String> = goods
        .iter()
        .map(|&g| format!("{} {}", rng.words(1, 4), if g { "good" } else { "bad" }))
        .collect();
    let label = (n >= 2 && goods.iter().filter(|&&g| g).count() == 1).then(|| Label {
        kind: Some(label::Kind::Best(
            goods.iter().position(|&g| g).unwrap() as u32
        )),
    });
    ScoreRequest {
        id,
        conversation: vec![Message {
            role: "user".into(),
            content: format!("{}?", rng.words(2, 5)),
        }],
        responses,
        sampling: Some(Sampling {
            k,
            seed: Some(rng.next()),
            max_new_tokens: 32,
            ..Default::default()
        }),
        label,
        return_samples: true,
        ..Default::default()
    }
}

/// Every answer must add up: k samples by index, scores mapped back through each sample's
/// order, rewards equal to the kept samples' sums. Returns whether the vote is correct
/// (None without a label).
fn check(req: &ScoreRequest, r: &ScoreResponse) -> Option<bool> {
    let k = req.sampling.as_ref().unwrap().k as usize;
    let n = req.responses.len();
    assert_eq!(r.id, req.id);
    assert_eq!(
        r.samples.len(),
        k,
        "{}: {} samples for k = {k}",
        r.id,
        r.samples.len()
    );
    let idx: HashSet<u32> = r.samples.iter().map(|s| s.index).collect();
    assert_eq!(
        idx,
        (0..k as u32).collect::<HashSet<_>>(),
        "{}: sample indices",
        r.id
    );
    let (mut sums, mut kept, mut invalid) = (vec![0u32; n], 0u32, 0u32);
    for s in &r.samples {
        let mut o = s.order.clone();
        o.sort_unstable();
        assert_eq!(o, (0..n as u32).collect::<Vec<_>>());
        match s.outcome.as_ref().expect("an outcome") {
            sample::Outcome::Scores(sc) => {
                assert_eq!(sc.shown.len(), n);
                for (pos, &orig) in s.order.iter().enumerate() {
                    assert_eq!(
                        sc.original[orig as usize], sc.shown[pos],
                        "{}: mapping back",
                        r.id
                    );
                }
                if s.kept {
                    kept += 1;
                    for (sum, &v) in sums.iter_mut().zip(&sc.original) {
                        *sum += v;
                    }
                }
            }
            sample::Outcome::Invalid(_) => {
                assert!(!s.kept);
                invalid += 1;
            }
        }
    }
    assert_eq!(
        (r.valid_samples, r.invalid_samples),
        (kept, invalid),
        "{}",
        r.id
    );
    for (i, (rr, &sum)) in r.rewards.iter().zip(&sums).enumerate() {
        assert_eq!(rr.reward, sum, "{}: reward {i}", r.id);
        assert_eq!(rr.votes, kept);
    }
    if r.k_meta > 0 {
        assert!(kept <= r.k_meta);
    } else {
        assert_eq!((kept + invalid) as usize, k);
    }
    match (&req.label, r.best) {
        (Some(l), Some(best)) => match l.kind {
            Some(label::Kind::Best(b)) => Some(best == b),
            _ => None,
        },
        (Some(_), None) => Some(false),
        _ => None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(addr: &str) -> RewardServiceClient<tonic::transport::Channel> {
    RewardServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Sends the requests concurrently; returns each answer (or status) in order.
async fn send_all(
    addr: &str,
    reqs: Vec<ScoreRequest>,
) -> Vec<Result<ScoreResponse, tonic::Status>> {
    let c = client(addr).await;
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut req = tonic::Request::new(r);
                req.set_timeout(Duration::from_secs(300));
                c.score(req).await.map(|r| r.into_inner())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn health(router: &Proc, field: &str) -> i64 {
    let (code, body) = http(&router.http(), "GET", "/health", b"");
    if code != 200 {
        return 0;
    }
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v[field].as_i64())
        .unwrap_or(0)
}

fn health_workers(router: &Proc) -> i64 {
    health(router, "grm_workers")
}

fn worker(dir: &std::path::Path, name: &str, model: &str, etcd: &str) -> Proc {
    grm(
        dir,
        name,
        &[
            "worker",
            "--model",
            &fixture(model),
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            etcd,
            "--lease-ttl-s",
            "2",
            "--threads",
            "1",
            "--kv-blocks",
            "4096",
            "--block-size",
            "16",
        ],
    )
}

fn router(dir: &std::path::Path, etcd: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "router",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--etcd",
        etcd,
        "--template",
        &short_template_static(),
        "--chunk-samples",
        "2",
        "--affinity-slack",
        "1",
        "--max-new-tokens",
        "32",
        // Generous: a loaded 2-core CI machine must not look like a stalled worker.
        "--stall-timeout-s",
        "30",
    ];
    args.extend_from_slice(extra);
    grm(dir, "router", &args)
}

#[test]
fn a_cluster_serves_load_spreads_large_requests_and_survives_a_kill() {
    let _serial = serial();
    let dir = scratch("cluster");
    let etcd = Etcd::start(&dir);
    let url = etcd.client_url.clone();
    let mut w1 = worker(&dir, "w1", "tiny-judge", &url);
    let _w2 = worker(&dir, "w2", "tiny-judge", &url);
    let _meta = worker(&dir, "meta", "tiny-judge-meta", &url);
    let agg = grm(
        &dir,
        "aggregator",
        &[
            "aggregator",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &url,
            "--template",
            &short_template(),
        ],
    );
    let router = router(&dir, &url, &[]);
    wait_for(
        Duration::from_secs(20),
        "the router to see every member",
        || {
            health_workers(&router) == 2
                && health(&router, "meta_workers") == 1
                && health(&router, "aggregators") == 1
        },
    );
    let rt = runtime();
    let addr = router.grpc();
    let mut rng = Rng(0x5eed);
    // The router saw the meta RM, so the first request is meta-filtered: k_meta defaults to
    // k/2, whatever the aggregator's own view of etcd had caught up with.
    let probe = rt
        .block_on(send_all(
            &addr,
            vec![request(&mut Rng(1), "probe".into(), 2)],
        ))
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(probe.k_meta, 1, "{probe:?}");
    // The spread below is that of an idle cluster: the router trusts a worker's own report of
    // its load for 3 s (pool::REPORT_FRESH), and a report taken while the probe ran can count
    // more work than the router then takes off, so the probe's report must age out first.
    std::thread::sleep(Duration::from_millis(3500));

    // On an idle cluster, a request of k = 8 is cut into chunks of 2 spread over both workers.
    for i in 0..3 {
        let req = request(&mut rng, format!("spread-{i}"), 8);
        let r = rt
            .block_on(send_all(&addr, vec![req.clone()]))
            .pop()
            .unwrap()
            .unwrap();
        check(&req, &r);
        let workers: HashSet<&str> = r.samples.iter().map(|s| s.worker.as_str()).collect();
        assert_eq!(
            workers.len(),
            2,
            "k = 8 should use both workers: {workers:?}"
        );
        assert!(
            r.k_meta > 0,
            "the meta RM is in the cluster, so k_meta defaults to k/2"
        );
    }

    // 200 concurrent requests, all answered and consistent; the votes follow the judge's rule.
    let reqs: Vec<ScoreRequest> = (0..200)
        .map(|i| request(&mut rng, format!("load-{i}"), [1, 2, 4, 8][i % 4]))
        .collect();
    let answers = rt.block_on(send_all(&addr, reqs.clone()));
    let (mut labelled, mut right) = (0, 0);
    for (req, a) in reqs.iter().zip(&answers) {
        let r = a
            .as_ref()
            .unwrap_or_else(|s| panic!("{} failed: {s:?}", req.id));
        if let Some(ok) = check(req, r) {
            labelled += 1;
            right += usize::from(ok);
        }
    }
    eprintln!("votes that pick the good response: {right}/{labelled}");
    assert!(labelled > 50);
    assert!(
        right * 10 >= labelled * 9,
        "only {right}/{labelled} votes pick the good response"
    );
    assert!(
        agg.log_text().contains("aggregated"),
        "the remote aggregator took part"
    );

    // kill -9 of a worker in the middle of the load: every request still completes, with
    // exactly k judgements each.
    let reqs: Vec<ScoreRequest> = (0..100)
        .map(|i| request(&mut rng, format!("kill-{i}"), [2, 4, 8][i % 3]))
        .collect();
    let answers = rt.block_on(async {
        let pending = tokio::spawn({
            let (addr, reqs) = (addr.clone(), reqs.clone());
            async move { send_all(&addr, reqs).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        w1.kill9();
        pending.await.unwrap()
    });
    for (req, a) in reqs.iter().zip(&answers) {
        let r = a
            .as_ref()
            .unwrap_or_else(|s| panic!("{} failed after the kill: {s:?}", req.id));
        check(req, r);
    }
    assert!(
        router.log_text().contains("sending it elsewhere"),
        "the kill should have forced a retry"
    );
    wait_for(
        Duration::from_secs(20),
        "the dead worker's lease to expire",
        || health_workers(&router) == 1,
    );

    // The Python client against the live cluster.
    let v = python_client("client_check.py", &[&addr]);
    assert_eq!(v["best"], 1, "{v}");
    assert_eq!(v["samples"], 4);
    assert_eq!(
        v["stream_ids"],
        serde_json::json!((0..10).map(|i| format!("s{i}")).collect::<Vec<_>>())
    );
    assert!(
        v["stream_best"].as_array().unwrap().iter().all(|b| b == 0),
        "{v}"
    );
    assert_eq!(v["refused"][0], "INVALID_ARGUMENT");

    // OpenRLHF's /get_reward: prompts + responses, rewards in [0, 1].
    let body = serde_json::json!({
        "query": ["cat sun?apple good", "cat sun?tree bad", "red?yes good"],
        "prompts": ["cat sun?", "cat sun?", "red?"],
        "labels": ["", "", ""],
    });
    let (code, text) = http(
        &router.http(),
        "POST",
        "/get_reward?k=4&seed=3",
        body.to_string().as_bytes(),
    );
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rewards: Vec<f64> = v["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(rewards.len(), 3);
    assert!(rewards.iter().all(|r| (0.0..=1.0).contains(r)));
    assert!(rewards[0] > rewards[1], "good beats bad: {v}");
}

#[test]
fn serving_goes_on_while_etcd_restarts_and_workers_re_register() {
    let _serial = serial();
    let dir = scratch("etcd-restart");
    let mut etcd = Etcd::start(&dir);
    let url = etcd.client_url.clone();
    let _w1 = worker(&dir, "w1", "tiny-judge", &url);
    let _w2 = worker(&dir, "w2", "tiny-judge", &url);
    let router = router(&dir, &url, &[]);
    wait_for(Duration::from_secs(20), "two workers", || {
        health_workers(&router) == 2
    });
    let rt = runtime();
    let mut rng = Rng(77);
    let addr = router.grpc();

    etcd.kill();
    let reqs: Vec<ScoreRequest> = (0..40)
        .map(|i| request(&mut rng, format!("down-{i}"), 4))
        .collect();
    for (req, a) in reqs.iter().zip(rt.block_on(send_all(&addr, reqs.clone()))) {
        check(
            req,
            &a.unwrap_or_else(|s| panic!("{} failed while etcd was down: {s:?}", req.id)),
        );
    }
    assert_eq!(
        health_workers(&router),
        2,
        "the last known membership stays"
    );

    etcd.restart();
    // A worker that joins after the restart is seen: the router's watch came back.
    let _w3 = worker(&dir, "w3", "tiny-judge", &url);
    wait_for(
        Duration::from_secs(30),
        "three workers after the restart",
        || health_workers(&router) == 3,
    );
    // The first two re-registered: their keys are back under fresh leases.
    std::thread::sleep(Duration::from_secs(4)); // past the old leases' TTL
    assert_eq!(
        health_workers(&router),
        3,
        "workers re-registered after the restart"
    );
    let reqs: Vec<ScoreRequest> = (0..40)
        .map(|i| request(&mut rng, format!("up-{i}"), 4))
        .collect();
    for (req, a) in reqs.iter().zip(rt.block_on(send_all(&addr, reqs.clone()))) {
        check(req, &a.unwrap());
    }
}

#[test]
fn bad_requests_are_refused_by_field_and_overload_is_shed() {
    let _serial = serial();
    let dir = scratch("bad");
    let etcd = Etcd::start(&dir);
    let url = etcd.client_url.clone();
    let _w = worker(&dir, "w", "tiny-judge", &url);
    let router = router(
        &dir,
        &url,
        &["--max-inflight", "3", "--max-request-bytes", "100000"],
    );
    wait_for(Duration::from_secs(20), "a worker", || {
        health_workers(&router) == 1
    });
    let rt = runtime();
    let addr = router.grpc();
    let mut rng = Rng(9);
    let base = request(&mut rng, "bad".into(), 2);
    let mut cases: Vec<(ScoreRequest, &str)> = Vec::new();
    let mut r = base.clone();
    r.responses.clear();
    r.label = None;
    cases.push((r, "responses is empty"));
    let mut r = base.clone();
    r.sampling.as_mut().unwrap().k = 0;
    cases.push((r, "sampling.k is 0; allowed 1..=64"));
    let mut r = base.clone();
    r.sampling.as_mut().unwrap().k = 65;
    cases.push((r, "sampling.k is 65; allowed 1..=64"));
    let mut r = base.clone();
    r.sampling.as_mut().unwrap().k_meta = Some(3);
    cases.push((r, "sampling.k_meta is 3; allowed 1..=k (2)"));
    let mut r = base.clone();
    r.responses[0] = "word ".repeat(150);
    cases.push((r, "over the model's context of 512 tokens"));
    for (req, want) in cases {
        let got = rt.block_on(send_all(&addr, vec![req])).pop().unwrap();
        let s = got.expect_err(want);
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{want}: {s:?}");
        assert!(
            s.message().contains(want),
            "{:?} should say {want:?}",
            s.message()
        );
    }
    // A message over --max-request-bytes is refused before it is read, naming the limit.
    let mut r = base.clone();
    r.responses[0] = "x".repeat(150_000);
    let s = rt
        .block_on(send_all(&addr, vec![r]))
        .pop()
        .unwrap()
        .expect_err("too large");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message()
            .contains("the limit is 100000 bytes (--max-request-bytes)"),
        "{s:?}"
    );
    // Text that spells a special token is never refused: it is read as plain text, several
    // tokens long, not as the one token (which would end the judging prompt).
    let mut plain = base.clone();
    plain.responses = vec!["ok good".into(), "ok bad".into()];
    plain.label = None;
    plain.sampling.as_mut().unwrap().k = 1;
    let mut spelled = plain.clone();
    spelled.responses[0] = "ok good<end_of_turn><unk>".into();
    let got = rt.block_on(send_all(&addr, vec![plain, spelled]));
    let tokens: Vec<u64> = got
        .iter()
        .map(|a| {
            a.as_ref()
                .expect("scored, not refused")
                .usage
                .as_ref()
                .unwrap()
                .prompt_tokens
        })
        .collect();
    assert!(
        tokens[1] > tokens[0] + 2,
        "<end_of_turn><unk> should be read as plain text: {tokens:?}"
    );
    // k_meta < k needs a meta RM, and this cluster has none: refused before any generation.
    let mut r = base.clone();
    r.sampling.as_mut().unwrap().k_meta = Some(1);
    let s = rt
        .block_on(send_all(&addr, vec![r]))
        .pop()
        .unwrap()
        .expect_err("no meta RM");
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("needs a meta RM"), "{s:?}");

    // Hinted sampling reaches the worker: the hinted prompt is longer by the hint.
    let mut plain = base.clone();
    plain.responses = vec!["a good".into(), "a bad".into()];
    plain.label = Some(Label {
        kind: Some(label::Kind::Best(0)),
    });
    plain.sampling.as_mut().unwrap().k = 1;
    let mut hinted = plain.clone();
    hinted.hinted = true;
    let got = rt.block_on(send_all(&addr, vec![plain, hinted]));
    let tokens: Vec<u64> = got
        .iter()
        .map(|a| {
            a.as_ref()
                .expect("scored")
                .usage
                .as_ref()
                .unwrap()
                .prompt_tokens
        })
        .collect();
    assert!(tokens[1] > tokens[0], "hinted prompt tokens {tokens:?}");

    // Invalid UTF-8 inside a JSON body: 400, naming the field.
    let (code, body) = http(
        &router.http(),
        "POST",
        "/get_reward",
        b"{\"query\": [\"ok\", \"\xff\xfe\"], \"prompts\": [\"\", \"\"]}",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("query[1]"), "{body}");
    let (code, body) = http(&router.http(), "POST", "/get_reward", b"{\"prompts\": []}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("query"), "{body}");

    // Past --max-inflight (3), new requests are shed with RESOURCE_EXHAUSTED.
    let reqs: Vec<ScoreRequest> = (0..24)
        .map(|i| request(&mut rng, format!("flood-{i}"), 8))
        .collect();
    let answers = rt.block_on(send_all(&addr, reqs));
    let shed = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == tonic::Code::ResourceExhausted))
        .count();
    let served = answers.iter().filter(|a| a.is_ok()).count();
    eprintln!("shed {shed}, served {served}");
    assert!(shed > 0 && served > 0, "shed {shed}, served {served}");
    let s = answers.iter().find_map(|a| a.as_ref().err()).unwrap();
    assert!(s.message().contains("--max-inflight"), "{}", s.message());
}

#[test]
fn cancelled_requests_free_every_block_on_the_workers() {
    let _serial = serial();
    let dir = scratch("cancel");
    // A random-weight model writes long judgements: plenty in flight to cancel.
    let w = grm(
        &dir,
        "w",
        &[
            "worker",
            "--model",
            &fixture("tiny-f32"),
            "--listen",
            "127.0.0.1:0",
            "--kv-blocks",
            "3000",
            "--block-size",
            "8",
        ],
    );
    let router = grm(
        &dir,
        "router",
        &[
            "router",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "",
            "--workers",
            &w.grpc(),
            "--template",
            &short_template(),
            "--max-new-tokens",
            "400",
        ],
    );
    let rt = runtime();
    let mut rng = Rng(4242);
    rt.block_on(async {
        let mut status = WorkerServiceClient::connect(format!("http://{}", w.grpc()))
            .await
            .unwrap();
        let idle = status.status(StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(idle.blocks_used, 0);
        let c = client(&router.grpc()).await;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let mut req = request(&mut rng, format!("c{i}"), 4);
            req.sampling.as_mut().unwrap().max_new_tokens = 400;
            req.sampling.as_mut().unwrap().temperature = Some(1.0);
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut r = tonic::Request::new(req);
                // The client gives up mid-flight: the call is cancelled.
                r.set_timeout(Duration::from_millis(700 + 10 * i));
                c.score(r).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = status.status(StatusRequest {}).await.unwrap().into_inner();
        assert!(
            busy.blocks_used > 0 && busy.running + busy.waiting > 0,
            "nothing in flight to cancel: {busy:?}"
        );
        let mut cancelled = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                cancelled += 1;
            }
        }
        assert!(cancelled >= 90, "only {cancelled} of 100 were cancelled");
        let end = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let s = status.status(StatusRequest {}).await.unwrap().into_inner();
            if s.blocks_used == 0 && s.running == 0 && s.waiting == 0 {
                assert_eq!(s.blocks_available, s.blocks_total, "{s:?}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "blocks not returned after cancellation: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn sigterm_drains_a_worker_without_losing_requests() {
    let _serial = serial();
    let dir = scratch("drain");
    let etcd = Etcd::start(&dir);
    let url = etcd.client_url.clone();
    let _w1 = worker(&dir, "w1", "tiny-judge", &url);
    let mut w2 = worker(&dir, "w2", "tiny-judge", &url);
    let router = router(&dir, &url, &[]);
    wait_for(Duration::from_secs(20), "two workers", || {
        health_workers(&router) == 2
    });
    let rt = runtime();
    let mut rng = Rng(31337);
    let addr = router.grpc();
    let reqs: Vec<ScoreRequest> = (0..60)
        .map(|i| request(&mut rng, format!("d{i}"), 8))
        .collect();
    let answers = rt.block_on(async {
        let pending = tokio::spawn({
            let (addr, reqs) = (addr.clone(), reqs.clone());
            async move { send_all(&addr, reqs).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        w2.term();
        pending.await.unwrap()
    });
    for (req, a) in reqs.iter().zip(&answers) {
        check(
            req,
            a.as_ref()
                .unwrap_or_else(|s| panic!("{} failed during the drain: {s:?}", req.id)),
        );
    }
    assert_eq!(
        w2.wait_exit(Duration::from_secs(30)),
        Some(0),
        "the drained worker exits cleanly:\n{}",
        w2.log_text()
    );
    assert!(
        w2.log_text().contains("deregistered from etcd"),
        "{}",
        w2.log_text()
    );
    wait_for(
        Duration::from_secs(10),
        "the router to drop the drained worker",
        || health_workers(&router) == 1,
    );
}

#[test]
fn metrics_on_the_router_and_a_worker_move_with_the_load() {
    let _serial = serial();
    let dir = scratch("metrics");
    let w = static_worker(&dir, "1024", &["--metrics-listen", "127.0.0.1:0"]);
    let worker_metrics = w.ready["metrics"].as_str().unwrap().to_string();
    let router = static_router(&dir, &w.grpc(), "127.0.0.1:0", &[]);
    let scrape = |addr: &str| {
        let (code, body) = http(addr, "GET", "/metrics", b"");
        assert_eq!(code, 200, "{body}");
        body
    };
    let before = scrape(&router.http());
    assert_eq!(
        metric(&before, "grm_score_requests_total{code=\"OK\"}"),
        0.0
    );
    assert_eq!(
        metric(&before, "grm_workers_live{role=\"grm\"}"),
        1.0,
        "{before}"
    );

    let rt = runtime();
    let mut rng = Rng(5);
    let reqs: Vec<ScoreRequest> = (0..10)
        .map(|i| request(&mut rng, format!("m{i}"), 4))
        .collect();
    for a in rt.block_on(send_all(&router.grpc(), reqs)) {
        a.expect("scored");
    }
    let mut bad = request(&mut rng, "bad".into(), 4);
    bad.sampling.as_mut().unwrap().k = 0;
    rt.block_on(send_all(&router.grpc(), vec![bad]))
        .pop()
        .unwrap()
        .expect_err("k = 0");

    let r = scrape(&router.http());
    assert_eq!(
        metric(&r, "grm_score_requests_total{code=\"OK\"}"),
        10.0,
        "{r}"
    );
    assert_eq!(
        metric(&r, "grm_score_requests_total{code=\"INVALID_ARGUMENT\"}"),
        1.0,
        "{r}"
    );
    assert_eq!(
        metric(&r, "grm_score_request_duration_seconds_count"),
        11.0,
        "{r}"
    );
    assert_eq!(
        metric(&r, "grm_score_request_duration_seconds_bucket{le=\"+Inf\"}"),
        11.0
    );
    assert_eq!(metric(&r, "grm_score_requests_in_flight"), 0.0);
    // Ten requests of k = 4, no meta RM: every judgement voted or was invalid.
    let judged =
        metric(&r, "grm_judgements_voted_total") + metric(&r, "grm_judgements_invalid_total");
    assert_eq!(judged, 40.0, "{r}");
    let generated = metric(&r, "grm_generated_tokens_total");
    assert!(generated >= 40.0, "{r}");

    // The worker generated the tokens the router was told of, plus at most one stop token per
    // judgement (the judgements' texts leave it out), from a pool of 1024 blocks, and looked
    // its prompts up in the prefix cache.
    let wm = scrape(&worker_metrics);
    let stops = metric(&wm, "grm_engine_generated_tokens_total{role=\"grm\"}") - generated;
    assert!((0.0..=40.0).contains(&stops), "{stops}: {wm}");
    assert_eq!(
        metric(&wm, "grm_kv_blocks{role=\"grm\",state=\"total\"}"),
        1024.0,
        "{wm}"
    );
    assert!(
        metric(&wm, "grm_prefix_cache_lookups_total{role=\"grm\"}") > 0.0,
        "{wm}"
    );
    assert!(
        metric(&wm, "grm_engine_steps_total{role=\"grm\"}") > 0.0,
        "{wm}"
    );
}

#[test]
fn a_bearer_token_guards_the_public_api_and_only_it() {
    let _serial = serial();
    let dir = scratch("auth");
    // A guarded public API needs guarded internal services: the cluster token on every node.
    let (_w, router) = guarded_router(&dir, "512", "tok-123\n", &[]);
    assert!(
        !router.log_text().contains("tok-123"),
        "the token must never be logged"
    );
    let rt = runtime();
    let req = request(&mut Rng(3), "auth".into(), 2);
    let call = |token: Option<&str>| {
        let (addr, req) = (router.grpc(), req.clone());
        rt.block_on(async move {
            let mut c = client(&addr).await;
            let mut r = tonic::Request::new(req);
            if let Some(t) = token {
                r.metadata_mut().insert("authorization", t.parse().unwrap());
            }
            c.score(r).await
        })
    };
    for wrong in [
        None,
        Some("Bearer tok-12"),
        Some("Bearer tok-1234"),
        Some("tok-123"),
    ] {
        let s = call(wrong).expect_err("refused");
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{wrong:?}: {s:?}");
    }
    call(Some("Bearer tok-123")).expect("the right token is served");

    // HTTP: /get_reward needs the token; /health and /metrics stay open.
    let body = br#"{"query": ["q? a good"], "prompts": ["q?"]}"#;
    let (code, text) = http(&router.http(), "POST", "/get_reward", body);
    assert_eq!(code, 401, "{text}");
    assert_eq!(http(&router.http(), "GET", "/health", b"").0, 200);
    let (code, metrics) = http(&router.http(), "GET", "/metrics", b"");
    assert_eq!(code, 200);
    assert!(metrics.contains("grm_score_requests_total"), "{metrics}");

    // The command-line clients send it from a file or the environment.
    let grm_cmd = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_grm"));
        c.env("GRM_LOG", "warn");
        c
    };
    let score = |extra: &[&str], env: Option<&str>| {
        let mut c = grm_cmd();
        c.args([
            "score",
            "--addr",
            &router.grpc(),
            "--query",
            "q?",
            "--response",
            "a good",
            "--response",
            "b bad",
            "--k",
            "2",
            "--json",
        ]);
        c.args(extra);
        if let Some(t) = env {
            c.env("GRM_TOKEN", t);
        }
        c.output().unwrap()
    };
    let token_file = dir.join("tokens");
    let tf = token_file.to_str().unwrap();
    assert!(score(&["--token-file", tf], None).status.success());
    assert!(score(&[], Some("tok-123")).status.success());
    // The Python client too.
    let g = router.grpc();
    assert_eq!(
        python_client("secure_check.py", &[&g, "--token", "tok-123"])["best"],
        0
    );
    assert_eq!(
        python_client("secure_check.py", &[&g])["error"],
        "UNAUTHENTICATED"
    );
    let denied = score(&[], None);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("bearer token"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
}

/// A CA written to `dir/<name>-ca.pem`, with what it needs to sign.
fn make_ca(
    dir: &std::path::Path,
    name: &str,
) -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&path, p.self_signed(&key).unwrap().pem()).unwrap();
    (p, key, path.display().to_string())
}

/// A node certificate for 127.0.0.1 and localhost signed by a CA: (cert file, key file).
fn make_leaf(
    dir: &std::path::Path,
    name: &str,
    ca: &(rcgen::CertificateParams, rcgen::KeyPair, String),
) -> (String, String) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p
        .signed_by(&key, &Issuer::from_params(&ca.0, &ca.1))
        .unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[test]
fn tls_everywhere_with_mutual_tls_between_nodes() {
    let _serial = serial();
    let dir = scratch("tls");
    let ca = make_ca(&dir, "cluster");
    let (cert, key) = make_leaf(&dir, "node", &ca);
    let rogue_ca = make_ca(&dir, "rogue");
    let (rogue_cert, rogue_key) = make_leaf(&dir, "rogue", &rogue_ca);
    // The worker requires client certificates of the cluster's CA; the router serves TLS and
    // calls the worker with its own certificate.
    let w = static_worker(
        &dir,
        "512",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca.2,
            "--tls-client-auth",
        ],
    );
    let router = static_router(
        &dir,
        &w.grpc(),
        "",
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca.2],
    );
    let score = |tls: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_grm"));
        c.env("GRM_LOG", "warn").args([
            "score",
            "--addr",
            &router.grpc(),
            "--query",
            "q?",
            "--response",
            "a good",
            "--response",
            "b bad",
            "--k",
            "2",
            "--json",
        ]);
        c.args(tls).output().unwrap()
    };
    // A TLS client that trusts the cluster's CA is served (through the router's mTLS call).
    let ok = score(&["--tls-ca", &ca.2]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["best"], 0, "{v}");
    // The Python client over TLS.
    let g = router.grpc();
    assert_eq!(
        python_client("secure_check.py", &[&g, "--ca", &ca.2])["best"],
        0
    );
    // Plaintext is refused, and so is a client that trusts another CA.
    assert!(!score(&[]).status.success());
    assert!(!score(&["--tls-ca", &rogue_ca.2]).status.success());

    // The worker itself: a client certificate of the cluster's CA is needed.
    let rt = runtime();
    let status = |identity: Option<(&str, &str)>| {
        let (addr, ca_pem) = (w.grpc(), std::fs::read(&ca.2).unwrap());
        let identity = identity.map(|(c, k)| {
            tonic::transport::Identity::from_pem(
                std::fs::read(c).unwrap(),
                std::fs::read(k).unwrap(),
            )
        });
        rt.block_on(async move {
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
            if let Some(id) = identity {
                tls = tls.identity(id);
            }
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await;
            match ch {
                Ok(ch) => WorkerServiceClient::new(ch)
                    .status(StatusRequest {})
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
    };
    assert!(
        status(Some((&cert, &key))),
        "the cluster's certificate is accepted"
    );
    assert!(
        !status(Some((&rogue_cert, &rogue_key))),
        "a certificate of another CA is refused"
    );
    assert!(!status(None), "no client certificate is refused");
}

/// An OTLP trace collector in the test: the spans each process exports, by service name.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::Mutex<Vec<(String, otlp::Span)>>>);

mod otlp {
    pub use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    pub use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    pub use opentelemetry_proto::tonic::common::v1::any_value::Value;
    pub use opentelemetry_proto::tonic::trace::v1::Span;
}

#[tonic::async_trait]
impl otlp::TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<otlp::ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<otlp::ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    otlp::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for sp in ss.spans {
                    got.push((service.clone(), sp));
                }
            }
        }
        Ok(tonic::Response::new(otlp::ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[test]
fn one_trace_per_request_across_router_workers_and_aggregator_and_its_metrics() {
    let _serial = serial();
    let dir = scratch("traces");
    let rt = runtime();
    let collector = Collector::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(otlp::TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let w = grm_env(
        &dir,
        "worker",
        &[
            "worker",
            "--model",
            &fixture("tiny-judge"),
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--kv-blocks",
            "512",
        ],
        &env,
    );
    let m = grm_env(
        &dir,
        "meta",
        &[
            "worker",
            "--model",
            &fixture("tiny-judge-meta"),
            "--role",
            "meta-rm",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--kv-blocks",
            "512",
        ],
        &env,
    );
    let a = grm_env(
        &dir,
        "aggregator",
        &[
            "aggregator",
            "--listen",
            "127.0.0.1:0",
            "--template",
            short_template_static(),
            "--meta-workers",
            &m.grpc(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &env,
    );
    let router = grm_env(
        &dir,
        "router",
        &[
            "router",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "",
            "--workers",
            &w.grpc(),
            "--meta-workers",
            &m.grpc(),
            "--aggregators",
            &a.grpc(),
            "--template",
            short_template_static(),
            "--max-new-tokens",
            "32",
            "--chunk-samples",
            "2",
            "--log-format",
            "json",
        ],
        &env,
    );

    // The client's own trace: the router continues it.
    let (client_trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut req = request(&mut Rng(9), "traced".into(), 4);
    req.sampling.as_mut().unwrap().k_meta = Some(2);
    let answer = rt.block_on(async {
        let mut c = client(&router.grpc()).await;
        let mut r = tonic::Request::new(req);
        r.metadata_mut().insert(
            "traceparent",
            format!("00-{client_trace}-{client_span}-01")
                .parse()
                .unwrap(),
        );
        c.score(r).await
    });
    let answer = answer.expect("scored").into_inner();
    assert_eq!(answer.id, "traced");

    // Every process exports within a few hundred milliseconds; wait for the last span.
    let want = |spans: &[(String, otlp::Span)], name: &str| {
        spans.iter().filter(|(_, s)| s.name == name).count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = collector.0.lock().unwrap().clone();
        let complete = want(&spans, "grm.rpc.Score") == 1
            && want(&spans, "grm.chunk") >= 2
            && want(&spans, "grm.worker.generate") >= 2
            && want(&spans, "grm.rpc.Aggregate") == 1
            && want(&spans, "grm.meta_rm") >= 1
            && want(&spans, "grm.worker.score_texts") >= 1;
        if complete || std::time::Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let names: Vec<String> = spans
        .iter()
        .map(|(svc, s)| format!("{svc}/{}", s.name))
        .collect();
    eprintln!("spans received: {names:?}");
    let one = |svc: &str, name: &str| -> &otlp::Span {
        let found: Vec<_> = spans
            .iter()
            .filter(|(v, s)| v == svc && s.name == name)
            .collect();
        assert_eq!(found.len(), 1, "{svc}/{name} once, in {names:?}");
        &found[0].1
    };
    let all = |svc: &str, name: &str| -> Vec<&otlp::Span> {
        spans
            .iter()
            .filter(|(v, s)| v == svc && s.name == name)
            .map(|(_, s)| s)
            .collect()
    };
    // One trace: the client's.
    for (svc, s) in &spans {
        assert_eq!(
            hex(&s.trace_id),
            client_trace,
            "{svc}/{} is in another trace",
            s.name
        );
    }
    let rpc = one("grm-router", "grm.rpc.Score");
    assert_eq!(
        hex(&rpc.parent_span_id),
        client_span,
        "the router continues the client's span"
    );
    let score = one("grm-router", "grm.score");
    assert_eq!(score.parent_span_id, rpc.span_id);
    // A span per chunk (k = 4 in chunks of 2), each the parent of the worker's span for it.
    let chunks = all("grm-router", "grm.chunk");
    assert!(chunks.len() >= 2, "{names:?}");
    for c in &chunks {
        assert_eq!(
            c.parent_span_id, score.span_id,
            "a chunk's parent is the request"
        );
    }
    let generated = all("grm-worker", "grm.worker.generate");
    assert!(generated.len() >= 2, "{names:?}");
    for g in &generated {
        assert!(
            chunks.iter().any(|c| c.span_id == g.parent_span_id),
            "a worker's span is a child of a router chunk span"
        );
    }
    // The aggregator: its call is a child of the request, and each meta-RM call a child of it,
    // parent of the meta-RM worker's span.
    let agg_rpc = one("grm-aggregator", "grm.rpc.Aggregate");
    assert_eq!(agg_rpc.parent_span_id, score.span_id);
    let agg = one("grm-aggregator", "grm.aggregate");
    assert_eq!(agg.parent_span_id, agg_rpc.span_id);
    let meta_calls = all("grm-aggregator", "grm.meta_rm");
    assert!(!meta_calls.is_empty(), "{names:?}");
    for c in &meta_calls {
        assert_eq!(c.parent_span_id, agg.span_id);
    }
    for s in all("grm-worker", "grm.worker.score_texts") {
        assert!(meta_calls.iter().any(|c| c.span_id == s.parent_span_id));
    }

    // The aggregator's own metrics counted the call and its meta-RM scoring.
    let (code, scrape) = http(a.ready["metrics"].as_str().unwrap(), "GET", "/metrics", b"");
    assert_eq!(code, 200, "{scrape}");
    assert_eq!(
        metric(&scrape, "grm_aggregate_requests_total{code=\"OK\"}"),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, "grm_aggregate_duration_seconds_count"),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, "grm_meta_rm_calls_total{outcome=\"ok\"}"),
        meta_calls.len() as f64,
        "{scrape}"
    );
    assert!(
        metric(&scrape, "grm_meta_rm_scored_judgements_total") >= 1.0,
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, "grm_workers_live{role=\"meta-rm\"}"),
        1.0,
        "{scrape}"
    );

    // Asked for OpenMetrics, the latency histogram links the request to its trace (exemplar).
    let metrics_addr = a.ready["metrics"].as_str().unwrap().to_string();
    let mut conn = std::net::TcpStream::connect(&metrics_addr).unwrap();
    std::io::Write::write_all(
        &mut conn,
        format!("GET /metrics HTTP/1.1\r\nHost: {metrics_addr}\r\nAccept: application/openmetrics-text; version=1.0.0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut om = String::new();
    std::io::Read::read_to_string(&mut conn, &mut om).unwrap();
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(
        om.lines()
            .any(|l| l.starts_with("grm_aggregate_duration_seconds_bucket")
                && l.contains(&format!("# {{trace_id=\"{client_trace}\"}}"))),
        "no exemplar with the client's trace:\n{om}"
    );

    // JSON logs: the router's line for the request carries its id and the trace id.
    drop(router);
    let log = std::fs::read_to_string(dir.join("router.log")).unwrap();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "scored")
        .unwrap_or_else(|| panic!("no JSON 'scored' line in the router's log:\n{log}"));
    assert_eq!(line["span"]["request_id"], "traced", "{line}");
    assert_eq!(line["span"]["trace_id"], client_trace, "{line}");
}

#[test]
fn membership_in_an_etcd_that_requires_mutual_tls() {
    let _serial = serial();
    let dir = scratch("etcd-tls");
    let ca = make_ca(&dir, "cluster");
    let (cert, key) = make_leaf(&dir, "node", &ca);
    let etcd = Etcd::start_mutual_tls(&dir, &cert, &key, &ca.2);
    assert!(etcd.client_url.starts_with("https://"));
    let tls = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-ca",
        ca.2.as_str(),
    ];
    // Without the CA, an https etcd is refused up front, by name.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grm"))
        .args([
            "worker",
            "--model",
            &fixture("tiny-judge"),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--etcd", &etcd.client_url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is https: give --tls-ca"), "{err}");

    // With it, a worker registers and a router finds it and serves through it.
    let model = fixture("tiny-judge");
    let mut wargs = vec![
        "worker",
        "--model",
        &model,
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        &etcd.client_url,
        "--threads",
        "1",
        "--kv-blocks",
        "512",
    ];
    wargs.extend_from_slice(&tls);
    let _w = grm(&dir, "worker", &wargs);
    let router = router(&dir, &etcd.client_url, &tls);
    wait_for(
        Duration::from_secs(30),
        "the worker in the router's view",
        || health_workers(&router) == 1,
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grm"))
        .env("GRM_LOG", "warn")
        .args(["score", "--addr", &router.grpc(), "--tls-ca", &ca.2])
        .args([
            "--query",
            "q?",
            "--response",
            "a good",
            "--response",
            "b bad",
        ])
        .args(["--k", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["best"], 0, "{v}");
}

/// GET (or POST a JSON body to) an https URL trusting `ca`, by Python's standard library;
/// returns (status, body), status 0 when the connection or handshake failed.
fn https(url: &str, ca: &str, body: Option<&str>) -> (u16, String) {
    let script = r#"
import json, ssl, sys, urllib.request
url, ca, body = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
req = urllib.request.Request(url, data=body.encode() if body else None,
                             headers={"content-type": "application/json"})
try:
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except Exception as e:
    print(0); print(repr(e))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, url, ca, body.unwrap_or("")])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, rest) = text.split_once('\n').unwrap_or((&text, ""));
    (code.trim().parse().unwrap_or(0), rest.to_string())
}

#[test]
fn http_listeners_serve_https_with_the_node_certificate() {
    let _serial = serial();
    let dir = scratch("https");
    let ca = make_ca(&dir, "cluster");
    let (cert, key) = make_leaf(&dir, "node", &ca);
    let tls = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-ca",
        ca.2.as_str(),
        "--http-tls",
    ];
    let mut wargs = vec!["--metrics-listen", "127.0.0.1:0"];
    wargs.extend_from_slice(&tls);
    let w = static_worker(&dir, "512", &wargs);
    let router = static_router(&dir, &w.grpc(), "127.0.0.1:0", &tls);
    // Health, metrics and OpenRLHF's endpoint over https.
    let (code, body) = https(&format!("https://{}/health", router.http()), &ca.2, None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = https(
        &format!("https://{}/metrics", w.ready["metrics"].as_str().unwrap()),
        &ca.2,
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("grm_kv_blocks"), "{body}");
    let reward = r#"{"query": ["q? a good", "q? b bad"], "prompts": ["q?", "q?"]}"#;
    let (code, body) = https(
        &format!("https://{}/get_reward", router.http()),
        &ca.2,
        Some(reward),
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let r = v["rewards"].as_array().unwrap();
    assert!(r[0].as_f64() > r[1].as_f64(), "{v}");
    // Plain HTTP gets no answer, and neither does a client trusting another CA.
    let (code, _) = http(&router.http(), "GET", "/health", b"");
    assert_ne!(code, 200);
    let rogue = make_ca(&dir, "rogue");
    let (code, _) = https(&format!("https://{}/health", router.http()), &rogue.2, None);
    assert_eq!(code, 0);
    // --http-tls without a certificate is refused by name.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grm"))
        .args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            &w.grpc(),
            "--http-tls",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--http-tls needs --tls-cert and --tls-key"),
        "{err}"
    );
}
