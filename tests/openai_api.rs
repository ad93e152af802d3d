//! The OpenAI-compatible API (`/v1/...` on the router's HTTP listener) driven by OpenAI's own
//! Python client, pinned in scripts/setup.sh (tests/python/openai_check.py), and `/v1/rewards`
//! against `Score` over gRPC on the same server.

mod support;

use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::{Message, Sampling, ScoreRequest};
use support::*;

fn serve(dir: &std::path::Path) -> Proc {
    serve_tiny(dir, "serve", &["--http-listen", "127.0.0.1:0"])
}

#[test]
fn openais_own_client_gets_what_it_expects_of_an_llm_server() {
    let _serial = serial();
    let dir = scratch("openai");
    let s = serve(&dir);
    let v = python_client("openai_check.py", &[&s.http(), "tiny-judge"]);
    assert!(v["checks"].as_u64().unwrap_or(0) >= 29, "{v}");
    let scrape = http(&s.http(), "GET", "/metrics", b"").1;
    assert!(
        metric(
            &scrape,
            "grm_openai_requests_total{endpoint=\"chat_completions\",code=\"200\"}"
        ) > 10.0,
        "{scrape}"
    );
    assert!(
        metric(
            &scrape,
            "grm_openai_requests_total{endpoint=\"chat_completions\",code=\"400\"}"
        ) >= 4.0
    );
    assert!(metric(&scrape, "grm_openai_tokens_total{kind=\"completion\"}") > 0.0);
}

#[test]
fn v1_rewards_answers_what_score_answers_and_the_api_is_behind_the_token() {
    let _serial = serial();
    let dir = scratch("openai-rewards");
    let s = serve(&dir);
    let conversation = vec![
        Message {
            role: "system".into(),
            content: "Judge.".into(),
        },
        Message {
            role: "user".into(),
            content: "the answer is".into(),
        },
    ];
    let req = ScoreRequest {
        id: "r1".into(),
        conversation,
        responses: vec!["it is so good".into(), "it is so bad".into()],
        sampling: Some(Sampling {
            k: 4,
            seed: Some(9),
            max_new_tokens: 32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let addr = s.grpc();
    let grpc = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = RewardServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        c.score(req).await.unwrap().into_inner()
    });
    let body = serde_json::json!({
        "id": "r1",
        "messages": [{"role": "system", "content": "Judge."}, {"role": "user", "content": "the answer is"}],
        "responses": ["it is so good", "it is so bad"],
        "k": 4,
        "seed": 9,
        "max_new_tokens": 32,
        "return_samples": true,
    });
    let (code, text) = http(
        &s.http(),
        "POST",
        "/v1/rewards",
        body.to_string().as_bytes(),
    );
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rewards: Vec<u64> = v["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reward"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = grpc.rewards.iter().map(|r| u64::from(r.reward)).collect();
    assert_eq!(rewards, expected, "{text}");
    assert_eq!(v["seed"], 9);
    assert_eq!(v["samples"].as_array().unwrap().len(), 4);
    assert!(rewards[0] > rewards[1], "{text}");
    // A bad field is named.
    let (code, text) = http(
        &s.http(),
        "POST",
        "/v1/rewards",
        br#"{"query": "q", "responses": "x"}"#,
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("\"param\":\"responses\""), "{text}");

    // Behind --auth-token-file, every /v1 route needs the token (refused on its head).
    let (_w, router) = guarded_router(&dir, "512", "team-a\n", &[]);
    for (method, path) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/rewards"),
    ] {
        let (code, _) = http(&router.http(), method, path, b"{}");
        assert_eq!(code, 401, "{path}");
    }
}
