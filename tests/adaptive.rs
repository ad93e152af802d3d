//! Adaptive k across processes: a router samples a request's judgements in waves and stops
//! once the rule holds; the answer says how many were drawn, the best response is the one
//! all k would have voted for, and nothing is left on the workers.

mod support;

use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::worker_service_client::WorkerServiceClient;
use grm_proto::v1::{Adaptive, Message, Sampling, ScoreRequest, ScoreResponse, StatusRequest};
use std::time::Duration;
use support::*;

fn request(id: &str, k: u32, responses: &[&str], adaptive: Option<(&str, f32)>) -> ScoreRequest {
    ScoreRequest {
        id: id.into(),
        conversation: vec![Message {
            role: "user".into(),
            content: "the answer is".into(),
        }],
        responses: responses.iter().map(|s| s.to_string()).collect(),
        sampling: Some(Sampling {
            k,
            seed: Some(11),
            adaptive: adaptive.map(|(rule, confidence)| Adaptive {
                rule: rule.into(),
                confidence,
                first_wave: 4,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn adaptive_sampling_stops_early_keeps_the_best_and_frees_everything() {
    let _serial = serial();
    let dir = scratch("adaptive");
    let w = static_worker(&dir, "4096", &[]);
    let router = static_router(&dir, &w.grpc(), "127.0.0.1:0", &["--chunk-samples", "2"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = router.grpc();
    let pair = ["it is so good", "it is so bad"];
    let score = |r: ScoreRequest| -> ScoreResponse {
        let addr = addr.clone();
        rt.block_on(async move {
            let mut c = RewardServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            c.score(r).await.unwrap().into_inner()
        })
    };
    let fixed = score(request("fixed", 32, &pair, None));
    assert_eq!(fixed.samples_used, 32);
    // Exact: the judge gives 8 and 3, a gap of 5 per judgement against 9 for each one to
    // come, so the best is settled after 21 of 32 (an invalid judgement or two push it on).
    let exact = score(request("exact", 32, &pair, Some(("exact", 0.0))));
    assert!(
        exact.samples_used < 32 && exact.samples_used >= 21,
        "{}",
        exact.samples_used
    );
    assert_eq!(exact.best, fixed.best);
    assert_eq!(exact.rewards[0].votes, exact.valid_samples);
    // The rule weighs samples in index order, so which finished first does not matter: the
    // same seed stops at the same sample with the same rewards, run after run.
    for i in 0..3 {
        let again = score(request(
            &format!("exact-{i}"),
            32,
            &pair,
            Some(("exact", 0.0)),
        ));
        assert_eq!(
            (again.samples_used, &again.rewards),
            (exact.samples_used, &exact.rewards),
            "run {i}"
        );
    }
    // Confident: agreeing judgements settle it after a wave or two.
    let confident = score(request("confident", 32, &pair, Some(("confident", 0.95))));
    assert!(confident.samples_used <= 12, "{}", confident.samples_used);
    assert_eq!(confident.best, fixed.best);
    // n = 1 (rating): the exact rule runs to k; the confident one stops on the mean's spread.
    let one = ["it is so good"];
    assert_eq!(
        score(request("r1", 16, &one, Some(("exact", 0.0)))).samples_used,
        16
    );
    let r = score(request("r2", 16, &one, Some(("confident", 0.9))));
    assert!(
        r.samples_used < 16 && r.rewards[0].mean_score == 8.0,
        "{r:?}"
    );
    // Bad settings are refused by name.
    let e = rt
        .block_on(async {
            let mut c = RewardServiceClient::connect(format!("http://{}", router.grpc()))
                .await
                .unwrap();
            c.score(request("bad", 8, &pair, Some(("maybe", 0.0))))
                .await
        })
        .unwrap_err();
    assert!(e.message().contains("sampling.adaptive.rule"), "{e:?}");

    let (_, scrape) = http(&router.http(), "GET", "/metrics", b"");
    assert!(
        metric(&scrape, "grm_judgements_saved_total") >= 20.0,
        "{scrape}"
    );
    assert!(
        metric(&scrape, "grm_adaptive_requests_total{stopped=\"early\"}") >= 3.0,
        "{scrape}"
    );
    // Nothing is left running or holding blocks on the worker.
    let status = rt.block_on(async {
        let mut c = WorkerServiceClient::connect(format!("http://{}", w.grpc()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.status(StatusRequest {}).await.unwrap().into_inner()
    });
    assert_eq!(
        (status.running, status.waiting, status.blocks_used),
        (0, 0, 0),
        "{status:?}"
    );
}
