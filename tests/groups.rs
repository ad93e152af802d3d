//! Trainers send one sample per call; the group barrier judges a GRPO group's members together.
//! Real routers, workers and etcd on 127.0.0.1 with the tiny trained judge (a response ending
//! in "good" scores 8, "bad" 3).

mod support;

use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::{Group, Message, Sampling, ScoreRequest, ScoreResponse};
use std::time::{Duration, Instant};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn member(id: &str, key: &str, size: u32, responses: &[&str]) -> ScoreRequest {
    ScoreRequest {
        id: id.into(),
        conversation: vec![Message {
            role: "user".into(),
            content: "the answer is".into(),
        }],
        responses: responses.iter().map(|s| s.to_string()).collect(),
        sampling: Some(Sampling {
            k: 2,
            ..Default::default()
        }),
        group: Some(Group {
            key: key.into(),
            size,
            wait_ms: 0,
        }),
        ..Default::default()
    }
}

/// Sends the members concurrently, each to the router `to[i % to.len()]`; answers in order.
async fn send(
    to: Vec<String>,
    members: Vec<ScoreRequest>,
) -> Vec<Result<ScoreResponse, tonic::Status>> {
    let mut tasks = Vec::new();
    for (i, m) in members.into_iter().enumerate() {
        let addr = to[i % to.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut c = RewardServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut r = tonic::Request::new(m);
            r.set_timeout(Duration::from_secs(120));
            c.score(r).await.map(|r| r.into_inner())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn means(r: &ScoreResponse) -> Vec<f64> {
    r.rewards.iter().map(|x| x.mean_score).collect()
}

#[test]
fn members_arriving_one_by_one_are_judged_as_one_group() {
    let _serial = serial();
    let dir = scratch("groups");
    let w = static_worker(&dir, "2048", &[]);
    let router = static_router(
        &dir,
        &w.grpc(),
        "127.0.0.1:0",
        &["--max-responses", "4", "--group-wait-ms", "1500"],
    );
    let rt = runtime();
    let addr = vec![router.grpc()];
    let texts = ["it is so good", "it is so bad", "so good", "one is bad"];

    // Four one-sample calls: one group of four, each answered with its own reward.
    let ms: Vec<ScoreRequest> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| member(&format!("m{i}"), "g1", 4, &[t]))
        .collect();
    let a = rt.block_on(send(addr.clone(), ms.clone()));
    for (r, t) in a.iter().zip(texts) {
        let r = r.as_ref().expect("answered");
        let g = r.group.as_ref().expect("a group result");
        assert_eq!(
            (g.size, g.members, g.responses, g.partial),
            (4, 4, 4, false),
            "{g:?}"
        );
        assert_eq!(r.rewards.len(), 1);
        let want = if t.ends_with("good") { 8.0 } else { 3.0 };
        assert_eq!(means(r), vec![want], "{t}");
    }
    // The same members in the opposite order (with the group's seed derived from its key and
    // responses): the same rewards, the same judgement of the whole group.
    let mut reversed = ms.clone();
    reversed.reverse();
    for m in &mut reversed {
        m.group.as_mut().unwrap().key = "g1-again".into();
    }
    let mut first = ms.clone();
    for m in &mut first {
        m.group.as_mut().unwrap().key = "g1-again".into();
    }
    let b = rt.block_on(send(addr.clone(), first));
    let c = rt.block_on(send(addr.clone(), reversed));
    let by_id = |v: &[Result<ScoreResponse, tonic::Status>], id: &str| {
        v.iter()
            .map(|r| r.as_ref().unwrap())
            .find(|r| r.id == id)
            .cloned()
            .unwrap()
    };
    for i in 0..4 {
        let id = format!("m{i}");
        let (x, y) = (by_id(&b, &id), by_id(&c, &id));
        assert_eq!(means(&x), means(&y));
        assert_eq!(
            x.group.as_ref().unwrap().mean_scores,
            y.group.as_ref().unwrap().mean_scores
        );
        assert_eq!(x.seed, y.seed);
    }

    // Identical responses (common in RL) are judged once; each caller still gets its reward.
    let dup: Vec<ScoreRequest> = (0..4)
        .map(|i| {
            member(
                &format!("d{i}"),
                "dup",
                4,
                &[if i < 3 { "same good" } else { "bad" }],
            )
        })
        .collect();
    for r in rt.block_on(send(addr.clone(), dup)) {
        let r = r.unwrap();
        assert_eq!(r.group.as_ref().unwrap().size, 2, "distinct responses");
        assert_eq!(r.rewards.len(), 1);
    }

    // A member may bring several responses (a rank's share); more distinct responses than
    // --max-responses (4) are judged in sub-groups.
    let big = vec![
        member("r0", "big", 6, &["a good", "b bad", "c good"]),
        member("r1", "big", 6, &["d bad", "e good", "f bad"]),
    ];
    for r in rt.block_on(send(addr.clone(), big)) {
        let r = r.unwrap();
        let g = r.group.as_ref().unwrap();
        assert_eq!((g.size, g.subgroups, g.members), (6, 2, 2), "{g:?}");
        assert_eq!(r.rewards.len(), 3);
        assert_eq!(g.mean_scores, vec![8.0, 3.0, 8.0, 3.0, 8.0, 3.0]);
    }

    // A group that never completes is judged when its wait ends, and says so.
    let part = rt.block_on(send(
        addr.clone(),
        vec![
            member("p0", "part", 4, &["x good"]),
            member("p1", "part", 4, &["y bad"]),
        ],
    ));
    for r in part {
        let g = r.unwrap().group.unwrap();
        assert!(g.partial && g.size == 2, "{g:?}");
    }

    // A lone member (verl's validation sends one sample per uid) is judged when its wait ends.
    let mut lone = member("lone", "lone", 4, &["z good"]);
    lone.group.as_mut().unwrap().wait_ms = 300;
    let r = rt
        .block_on(send(addr.clone(), vec![lone]))
        .pop()
        .unwrap()
        .unwrap();
    let g = r.group.unwrap();
    assert!(g.partial && g.size == 1 && g.members == 1, "{g:?}");
    assert_eq!(r.rewards[0].mean_score, 8.0);

    // A member whose conversation differs from its group's is refused; the rest are judged.
    let mut stranger = member("s1", "mixed", 3, &["z good"]);
    stranger.conversation[0].content = "another question".into();
    let mixed = rt.block_on(async {
        // The group's first member, then (once it waits) the stranger.
        let first = tokio::spawn(send(
            addr.clone(),
            vec![member("s0", "mixed", 3, &["q good", "r bad"])],
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stranger = send(addr.clone(), vec![stranger]).await;
        (
            first.await.unwrap().pop().unwrap(),
            stranger.into_iter().next().unwrap(),
        )
    });
    assert!(mixed.0.is_ok(), "{:?}", mixed.0);
    let s = mixed.1.as_ref().expect_err("a stranger");
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("conversation"), "{s:?}");

    // Bad group fields are refused by name.
    let mut bad = member("b", "", 4, &["x"]);
    let e = rt
        .block_on(send(addr.clone(), vec![bad.clone()]))
        .pop()
        .unwrap()
        .unwrap_err();
    assert!(e.message().contains("group.key"), "{e:?}");
    bad.group = Some(Group {
        key: "k".into(),
        size: 1000,
        wait_ms: 0,
    });
    let e = rt
        .block_on(send(addr.clone(), vec![bad]))
        .pop()
        .unwrap()
        .unwrap_err();
    assert!(
        e.message().contains("group.size is 1000; allowed 2..=64"),
        "{e:?}"
    );

    let (_, scrape) = http(&router.http(), "GET", "/metrics", b"");
    assert!(
        metric(&scrape, "grm_groups_total{outcome=\"complete\"}") >= 5.0,
        "{scrape}"
    );
    assert!(
        metric(&scrape, "grm_groups_total{outcome=\"partial\"}") >= 1.0,
        "{scrape}"
    );
    assert!(metric(&scrape, "grm_group_size_count") >= 6.0, "{scrape}");
}

#[test]
fn a_groups_members_reaching_different_routers_are_judged_together() {
    let _serial = serial();
    let dir = scratch("groups-routers");
    let etcd = Etcd::start(&dir);
    let url = etcd.client_url.clone();
    let _w = grm(
        &dir,
        "w",
        &[
            "worker",
            "--model",
            &fixture("tiny-judge"),
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &url,
            "--lease-ttl-s",
            "2",
            "--threads",
            "1",
            "--kv-blocks",
            "2048",
        ],
    );
    let routers: Vec<Proc> = (0..3)
        .map(|i| {
            grm(
                &dir,
                &format!("router{i}"),
                &[
                    "router",
                    "--listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "127.0.0.1:0",
                    "--etcd",
                    &url,
                    "--lease-ttl-s",
                    "2",
                    "--template",
                    short_template_static(),
                    "--max-new-tokens",
                    "32",
                ],
            )
        })
        .collect();
    wait_for(
        Duration::from_secs(20),
        "every router to see the worker",
        || {
            routers.iter().all(|r| {
                let (code, body) = http(&r.http(), "GET", "/health", b"");
                code == 200 && body.contains("\"grm_workers\":1")
            })
        },
    );
    // The routers see each other (registered as routers) before groups are spread over them.
    std::thread::sleep(Duration::from_secs(2));
    let addrs: Vec<String> = routers.iter().map(Proc::grpc).collect();
    let rt = runtime();
    for g in 0..4 {
        let ms: Vec<ScoreRequest> = (0..6)
            .map(|i| {
                member(
                    &format!("g{g}m{i}"),
                    &format!("group-{g}"),
                    6,
                    &[if i % 2 == 0 { "x good" } else { "y bad" }],
                )
            })
            .collect();
        // Member i goes to router i % 3: every group reaches all three routers.
        for r in rt.block_on(send(addrs.clone(), ms)) {
            let r = r.expect("answered");
            let grp = r.group.as_ref().unwrap();
            assert_eq!(
                grp.members, 6,
                "one group of six members, not one per router: {grp:?}"
            );
            assert!(!grp.partial);
        }
    }
    let forwarded: f64 = routers
        .iter()
        .map(|r| {
            metric(
                &http(&r.http(), "GET", "/metrics", b"").1,
                "grm_group_members_forwarded_total",
            )
        })
        .sum();
    assert!(
        forwarded >= 16.0,
        "members forwarded to their group's router: {forwarded}"
    );
}

#[test]
fn get_reward_groups_one_sample_calls_and_reads_the_policys_chat_markup() {
    let _serial = serial();
    let dir = scratch("get-reward-groups");
    let w = static_worker(&dir, "2048", &[]);
    let router = static_router(&dir, &w.grpc(), "127.0.0.1:0", &[]);
    let h = router.http();
    let gemma = "<bos><start_of_turn>user\nthe answer is<end_of_turn>\n<start_of_turn>model\n";
    let chatml = "<|im_start|>system\nBe fair.<|im_end|>\n<|im_start|>user\nthe answer is<|im_end|>\n<|im_start|>assistant\n";
    // OpenRLHF posts one sample per call; four calls at once form a group of four.
    let post = |prompt: &str, response: &str, params: &str| {
        let body = serde_json::json!({
            "query": [format!("{prompt}{response}")],
            "prompts": [prompt],
            "labels": [""],
        });
        let (code, text) = http(
            &h,
            "POST",
            &format!("/get_reward?{params}"),
            body.to_string().as_bytes(),
        );
        assert_eq!(code, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    for (prompt, end) in [(gemma, "<end_of_turn>"), (chatml, "<|im_end|>")] {
        let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
            let calls: Vec<_> = ["so good", "so bad", "it is good", "it is bad"]
                .iter()
                .map(|r| {
                    let response = format!("{r}{end}");
                    s.spawn(move || post(prompt, &response, "group_size=4&k=2&seed=5"))
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (a, good) in answers.iter().zip([true, false, true, false]) {
            assert_eq!(a["extra_logs"]["grm/group_size"][0], 4, "{a}");
            let reward = a["rewards"][0].as_f64().unwrap();
            let want = if good { 7.0 / 9.0 } else { 2.0 / 9.0 };
            assert!((reward - want).abs() < 1e-9, "{a}");
            // scores on the rewards' [0, 1] scale, for OpenRLHF's dynamic filtering.
            assert_eq!(a["scores"][0], a["rewards"][0]);
        }
    }
    // A templated prompt and the same plain text get the same judgement.
    let one = |prompt: &str, response: &str| {
        let body = serde_json::json!({
            "query": [format!("{prompt}{response}"), format!("{prompt}so bad")],
            "prompts": [prompt, prompt],
        });
        let (code, text) = http(
            &h,
            "POST",
            "/get_reward?k=4&seed=11&scores=mean",
            body.to_string().as_bytes(),
        );
        assert_eq!(code, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let plain = one("the answer is", "so good");
    let templated = one(gemma, "so good<end_of_turn><eos>");
    assert_eq!(
        plain["scores"], templated["scores"],
        "{plain} vs {templated}"
    );
    assert_eq!(plain["extra_logs"], templated["extra_logs"]);
    assert!(
        plain["scores"][0].as_f64().unwrap() > 1.0,
        "scores=mean: the 1..10 mean"
    );
}

#[test]
fn the_python_asyncio_client_scores_streams_and_joins_groups() {
    // grm_client.aio (and the blocking client's group=) against a live grm serve: a score, a
    // ScoreStream with one malformed request among good ones, a refusal, and two members of a
    // group of 4 from each client, judged together.
    let _serial = serial();
    let dir = scratch("aio");
    let s = serve_tiny(&dir, "serve", &[]);
    let v = python_client("aio_check.py", &[&s.grpc()]);
    assert_eq!(v["best"], 1, "{v}");
    let ids: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    assert_eq!(v["stream_ids"], serde_json::json!(ids), "{v}");
    assert!(
        v["stream_best"].as_array().unwrap().iter().all(|b| b == 0),
        "{v}"
    );
    assert_eq!(v["stream_errors"]["bad"], "INVALID_ARGUMENT", "{v}");
    assert_eq!(v["refused"][0], "INVALID_ARGUMENT", "{v}");
    for way in ["group_members", "group_blocking"] {
        let members = v[way].as_array().unwrap();
        assert_eq!(members.len(), 2, "{way}: {v}");
        for m in members {
            let g = &m["group"];
            assert_eq!(
                (&g["members"], &g["responses"], &g["partial"]),
                (
                    &serde_json::json!(2),
                    &serde_json::json!(4),
                    &serde_json::json!(false)
                ),
                "{way}: {v}"
            );
        }
    }
}

/// A group of 8 split 4 + 4: the first four come on a ScoreStream that breaks, and are sent
/// again (same ids) on a new one; then the other four arrive. The broken stream's members
/// left the group when it broke, the retried ones took their places: one judgement of all 8
/// responses, whole, and no second group.
#[test]
fn a_broken_and_retried_stream_rejoins_its_group_and_nothing_counts_twice() {
    use tokio_stream::StreamExt;
    let _serial = serial();
    let dir = scratch("groups-retried");
    let w = static_worker(&dir, "2048", &[]);
    // The tiny judge rates up to 4 responses at once: the group is judged in two halves.
    let router = static_router(&dir, &w.grpc(), "127.0.0.1:0", &["--max-responses", "4"]);
    let rt = runtime();
    let addr = router.grpc();
    const TEXTS: [&str; 8] = [
        "so good",
        "so bad",
        "it is good",
        "it is bad",
        "one good",
        "one bad",
        "all good",
        "all bad",
    ];
    let m = |i: usize| {
        let mut r = member(&format!("m{i}"), "split", 8, &[TEXTS[i]]);
        r.group.as_mut().unwrap().wait_ms = 30_000;
        r
    };
    let answers = rt.block_on(async {
        let connect = || async {
            RewardServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap()
        };
        // The first four on a stream that breaks once they wait in the group.
        let mut c = connect().await;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        for i in 0..4 {
            tx.send(m(i)).await.unwrap();
        }
        let call = tokio::spawn(async move {
            c.score_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|r| r.into_inner())
        });
        let mut forming = 0.0;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (_, scrape) = http(&router.http(), "GET", "/metrics", b"");
            forming = metric(&scrape, "grm_groups_forming");
            if forming >= 1.0 {
                break;
            }
        }
        assert_eq!(forming, 1.0, "the four are waiting");
        call.abort();
        drop(tx);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Retried on a new stream, the same four with the same ids.
        let mut c = connect().await;
        let retried = tokio_stream::iter((0..4).map(m));
        let mut stream = c.score_stream(retried).await.unwrap().into_inner();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Then the other four, one call each.
        let rest = tokio::spawn(send(vec![addr.clone()], (4..8).map(m).collect()));
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(stream.next().await.unwrap().unwrap());
        }
        out.extend(rest.await.unwrap().into_iter().map(Result::unwrap));
        out
    });
    assert_eq!(answers.len(), 8);
    for a in &answers {
        assert!(a.error.is_none(), "{a:?}");
        let g = a.group.as_ref().expect("a group result");
        assert_eq!(
            (g.size, g.responses, g.members, g.partial),
            (8, 8, 8, false),
            "{g:?}"
        );
        let text = TEXTS[a.id[1..].parse::<usize>().unwrap()];
        let want = if text.ends_with("good") { 8.0 } else { 3.0 };
        assert_eq!(means(a), vec![want], "{a:?}");
    }
    let (_, scrape) = http(&router.http(), "GET", "/metrics", b"");
    assert_eq!(
        metric(&scrape, "grm_groups_total{outcome=\"complete\"}"),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, "grm_groups_total{outcome=\"partial\"}"),
        0.0,
        "{scrape}"
    );
    assert_eq!(metric(&scrape, "grm_groups_forming"), 0.0, "{scrape}");
}

/// OpenRLHF keys a group by its prompt: prompts of any length (a system turn, few-shot
/// examples) form groups, two runs sharing a router keep theirs apart with `group_prefix`,
/// and an unlike member is refused at join by name while its group completes.
#[test]
fn get_reward_groups_long_prompts_and_keeps_runs_apart() {
    let _serial = serial();
    let dir = scratch("get-reward-long");
    let w = static_worker(&dir, "2048", &[]);
    let router = static_router(&dir, &w.grpc(), "127.0.0.1:0", &[]);
    let h = router.http();
    // A ChatML prompt with a system turn of 300 bytes (non-ASCII included): over the 256
    // bytes that the key limit used to refuse, and within the tiny judge's context.
    let system = "Tu es un assistant précis. ".repeat(11);
    let prompt = format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nthe answer is<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(prompt.len() > 256);
    let post = |response: &str, params: &str| {
        let body = serde_json::json!({
            "query": [format!("{prompt}{response}<|im_end|>")],
            "prompts": [prompt],
        });
        http(
            &h,
            "POST",
            &format!("/get_reward?{params}"),
            body.to_string().as_bytes(),
        )
    };
    let runs = std::thread::scope(|s| {
        let calls: Vec<_> = ["a", "b"]
            .iter()
            .flat_map(|run| {
                ["so good", "so bad"].map(|r| {
                    let params = format!(
                        "group_size=2&k=2&seed=5&group_prefix=run-{run}&group_wait_ms=20000"
                    );
                    let post = &post;
                    s.spawn(move || (run.to_string(), post(r, &params)))
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (run, (code, text)) in &runs {
        assert_eq!(*code, 200, "{run}: {text}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["extra_logs"]["grm/group_size"][0], 2, "{run}: {v}");
        assert_eq!(v["extra_logs"]["grm/unscored"][0], 0, "{run}: {v}");
    }
    let (_, scrape) = http(&h, "GET", "/metrics", b"");
    assert_eq!(
        metric(&scrape, "grm_groups_total{outcome=\"complete\"}"),
        2.0,
        "two runs, two groups: {scrape}"
    );
}

/// Callers are told apart by their token: one caller's flood of groups — abandoned calls, then
/// as many held groups as its cap allows — neither keeps another caller's groups from
/// forming nor lets it join them, even under the same key.
#[test]
fn one_callers_flood_of_groups_neither_blocks_nor_joins_anothers() {
    let _serial = serial();
    let dir = scratch("groups-callers");
    let (_w, router) = guarded_router(
        &dir,
        "2048",
        "# one token per caller\nalpha\nbeta\n",
        &["--max-groups-per-caller", "50"],
    );
    let (addr, h) = (router.grpc(), router.http());
    let forming = || metric(&http(&h, "GET", "/metrics", b"").1, "grm_groups_forming");
    let call = |token: &'static str, m: ScoreRequest| {
        let addr = addr.clone();
        async move {
            let mut c = RewardServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut r = tonic::Request::new(m);
            r.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            c.score(r).await.map(|r| r.into_inner())
        }
    };
    let long = |id: String, key: String| {
        let mut m = member(&id, &key, 2, &["so good"]);
        m.group.as_mut().unwrap().wait_ms = 600_000;
        m
    };
    let rt = runtime();
    // B alone first: the time its group of two takes when nobody floods the router.
    let group_of_b = |key: &'static str| {
        let call = &call;
        async move {
            let t = Instant::now();
            let mut b0 = member("b0", key, 2, &["it is good"]);
            let mut b1 = member("b1", key, 2, &["it is bad"]);
            for m in [&mut b0, &mut b1] {
                m.group.as_mut().unwrap().wait_ms = 600_000;
            }
            let (x, y) = tokio::join!(call("beta", b0), call("beta", b1));
            (x.unwrap(), y.unwrap(), t.elapsed())
        }
    };
    let (_, _, alone) = rt.block_on(group_of_b("b-alone"));
    rt.block_on(async {
        // A abandons 320 one-member groups, 40 at a time (within its cap of 50), each after
        // 200 ms: they leave with their calls, or the later batches would be refused (the
        // first time this ran beside a training job, a batch came before the router had seen
        // the last one go; each batch now waits for that).
        for batch in 0..8 {
            let abandoned: Vec<_> = (0..40)
                .map(|i| {
                    let c = call("alpha", long(format!("x{i}"), format!("x-{batch}-{i}")));
                    tokio::spawn(tokio::time::timeout(Duration::from_millis(200), c))
                })
                .collect();
            for a in abandoned {
                let r = a.await.unwrap();
                assert!(r.is_err(), "batch {batch}: abandoned, not answered: {r:?}");
            }
            // They leave with their calls: the next batch waits until the router has seen
            // them go (on a loaded machine that takes longer than the calls' return).
            for _ in 0..200 {
                if forming() == 0.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                forming(),
                0.0,
                "batch {batch}: abandoned groups still forming"
            );
        }
    });
    wait_for(Duration::from_secs(10), "the abandoned groups gone", || {
        forming() == 0.0
    });
    let (refused, b, flooded) = rt.block_on(async {
        // A holds as many groups as its cap allows; the next one is refused.
        let held: Vec<_> = (0..50)
            .map(|i| tokio::spawn(call("alpha", long(format!("a{i}"), format!("a-{i}")))))
            .collect();
        for _ in 0..200 {
            if forming() >= 50.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(forming(), 50.0);
        let refused = call("alpha", long("a50".into(), "a-50".into())).await;
        // B's group under one of A's keys: its own group, complete, never A's member.
        let (b0, b1, t) = group_of_b("a-0").await;
        for h in &held {
            h.abort();
        }
        (refused, (b0, b1), t)
    });
    let s = refused.expect_err("over A's cap");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("--max-groups-per-caller"), "{s:?}");
    for r in [&b.0, &b.1] {
        let g = r.group.as_ref().unwrap();
        assert_eq!((g.size, g.members, g.partial), (2, 2, false), "{g:?}");
    }
    eprintln!(
        "caller B's group of 2: {:.0} ms alone, {:.0} ms beside caller A's 50 held groups",
        alone.as_secs_f64() * 1e3,
        flooded.as_secs_f64() * 1e3
    );
    wait_for(Duration::from_secs(10), "A's held groups gone", || {
        forming() == 0.0
    });
    let scrape = http(&h, "GET", "/metrics", b"").1;
    assert_eq!(
        metric(
            &scrape,
            "grm_group_members_refused_total{reason=\"caller_groups\"}"
        ),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        metric(
            &scrape,
            "grm_group_members_refused_total{reason=\"groups\"}"
        ),
        0.0,
        "a series at zero from the start: {scrape}"
    );
}
