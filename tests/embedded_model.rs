//! The shipped GRM and meta RM (models/), served by `grm serve` as the README's main command
//! does: held-out pairs and groups of 8 (GRPO's default group size, sent whole) are judged
//! correctly with k = 8.

mod support;

use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::{Message, Sampling, ScoreRequest};
use serde_json::Value;
use support::*;

#[test]
fn the_embedded_models_judge_pairs_correctly() {
    judge_held_out("test-best-of-n.jsonl", 2);
}

#[test]
fn the_embedded_models_judge_groups_of_8_correctly() {
    judge_held_out("test-best-of-8.jsonl", 8);
}

/// Six held-out items of `n` responses from `file`, each scored with k = 8 (meta RM on) by a
/// `grm serve` on the embedded models: at least five must come back with the labelled best.
fn judge_held_out(file: &str, n: usize) {
    let _serial = serial();
    let models = repo().join("models");
    assert!(
        models.join("grm/config.json").exists() && models.join("meta-rm/config.json").exists(),
        "models/ must ship the GRM and the meta RM"
    );
    let dir = scratch(&format!("embedded-{n}"));
    let server = grm(
        &dir,
        "serve",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "",
            "--kv-blocks",
            "8192",
            "--max-batch-tokens",
            "2048",
        ],
    );
    let text = std::fs::read_to_string(models.join("eval").join(file)).unwrap();
    let items: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["responses"].as_array().unwrap().len() == n)
        .take(6)
        .collect();
    assert_eq!(items.len(), 6);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = RewardServiceClient::connect(format!("http://{}", server.grpc()))
            .await
            .unwrap();
        let mut right = 0;
        for (i, it) in items.iter().enumerate() {
            let req = ScoreRequest {
                id: format!("held-out-{n}-{i}"),
                conversation: vec![Message {
                    role: "user".into(),
                    content: it["query"].as_str().unwrap().into(),
                }],
                responses: it["responses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
                sampling: Some(Sampling {
                    k: 8,
                    seed: Some(i as u64),
                    ..Default::default()
                }),
                return_samples: true,
                ..Default::default()
            };
            let r = c.score(req).await.unwrap().into_inner();
            assert_eq!(r.k_meta, 4, "the meta RM takes part by default");
            assert_eq!(r.rewards.len(), n, "a reward for every response");
            assert!(r.valid_samples > 0, "{r:?}");
            assert!(
                r.samples
                    .iter()
                    .any(|s| s.text.starts_with("Specific Criteria:")
                        && s.text.contains("Analysis:")),
                "readable judgements"
            );
            if r.best == Some(it["best"].as_u64().unwrap() as u32) && !r.tie {
                right += 1;
            }
        }
        assert!(
            right >= 5,
            "only {right}/6 held-out items of {n} judged correctly"
        );
    });
}
