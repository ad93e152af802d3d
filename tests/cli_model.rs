//! `grm model` as a user runs it, on the committed tiny fixtures.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../grm-engine/tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn grm(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_grm"))
        .args(args)
        .output()
        .expect("run grm");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn prompt(len: usize) -> String {
    std::iter::once(2)
        .chain((1..len).map(|i| 6 + (i * 37) % 250))
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn eight_greedy_samples_equal_one_and_the_prompt_blocks_are_stored_once() {
    let m = fixture("tiny-f32");
    let p = prompt(100);
    let (code, one, err) = grm(&[
        "model",
        "generate",
        "--model",
        &m,
        "--tokens",
        &p,
        "--max-new-tokens",
        "16",
        "--no-stop",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, eight, err) = grm(&[
        "model",
        "generate",
        "--model",
        &m,
        "--tokens",
        &p,
        "--max-new-tokens",
        "16",
        "--no-stop",
        "--samples",
        "8",
        "--temperature",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    let greedy = &one["samples"][0]["tokens"];
    assert_eq!(greedy.as_array().unwrap().len(), 16);
    let samples = eight["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 8);
    for s in samples {
        assert_eq!(&s["tokens"], greedy);
    }
    // 100 tokens in blocks of 16: 6 full prompt blocks, each stored once and shared by all 8.
    assert_eq!(eight["kv"]["prompt_full_blocks"], 6);
    assert_eq!(eight["kv"]["blocks_shared"], 6);
}

#[test]
fn logits_reward_and_tokenize() {
    let (code, j, err) = grm(&[
        "model",
        "logits",
        "--model",
        &fixture("tiny-f32"),
        "--tokens",
        "2,17,9",
        "--all-positions",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows = j["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].as_array().unwrap().len(), 262);
    let (code, j, err) = grm(&[
        "model",
        "reward",
        "--model",
        &fixture("tiny-seq-cls"),
        "--tokens",
        "2,17,9",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(j["reward"].as_f64().unwrap().is_finite());
    let out = Command::new(env!("CARGO_BIN_EXE_grm"))
        .args(["model", "tokenize", "--model", &fixture("tiny-f32")])
        .stdin(
            std::fs::File::open(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                .unwrap(),
        )
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["tokens"][0], 2);
}

#[test]
fn bad_input_is_named() {
    let m = fixture("tiny-f32");
    let (code, _, err) = grm(&["model", "logits", "--model", &m, "--tokens", "2,x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--tokens entry 2 is \"x\""), "{err}");
    let (code, _, err) = grm(&["model", "logits", "--model", &m, "--tokens", "2,262"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("token id 262 at position 1 is outside the vocabulary (size 262)"),
        "{err}"
    );
    let (code, _, err) = grm(&[
        "model",
        "logits",
        "--model",
        "/nonexistent/model",
        "--tokens",
        "2",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/model/config.json"), "{err}");
    let (code, _, err) = grm(&["model", "reward", "--model", &m, "--tokens", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a sequence-classification model"), "{err}");
}

#[test]
fn init_writes_a_model_that_runs() {
    let dir = std::env::temp_dir().join(format!("grm-cli-init-{}", std::process::id()));
    let d = dir.display().to_string();
    let (code, _, err) = grm(&[
        "model",
        "init",
        "--shape",
        "tiny",
        "--out",
        &d,
        "--dtype",
        "f16",
        "--seq-cls",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, j, err) = grm(&["model", "reward", "--model", &d, "--tokens", "2,40,41"]);
    assert_eq!(code, 0, "{err}");
    assert!(j["reward"].as_f64().unwrap().is_finite());
    let (code, _, err) = grm(&["model", "init", "--shape", "gemma-3", "--out", &d]);
    assert_eq!(code, 2);
    assert!(err.contains("--shape \"gemma-3\" is not known"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn device_flags_fail_with_a_clear_error_never_a_panic() {
    let m = fixture("tiny-judge");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "worker",
            "--model",
            &m,
            "--role",
            "grm",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_grm"))
            .args(&args)
            .output()
            .expect("run grm");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--device", "tpu"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--device \"tpu\": expected cpu, cuda or cuda:N"),
        "{err}"
    );
    let (code, err) = run(&["--device", "cuda:0", "--gpu-memory-fraction", "1.5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--gpu-memory-fraction 1.5"), "{err}");
    // No machine has 4096 GPUs: whether or not this one has a driver, the error names the
    // device and says why, and the process exits instead of panicking.
    let (code, err) = run(&["--device", "cuda:4096"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--device cuda:4096") && err.contains("CUDA"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
