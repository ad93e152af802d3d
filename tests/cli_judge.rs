//! `grm judge` as a user runs it: a real process, text on stdin, JSON on stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn grm(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_grm"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start grm");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn parse(n: &str, text: &[u8]) -> (i32, serde_json::Value) {
    let out = grm(&["judge", "parse", "--responses", n], text);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap(), json)
}

#[test]
fn parse_prints_the_scores() {
    let out = grm(
        &["judge", "parse", "--responses", "2"],
        b"Specific Criteria: x\nAnalysis: y\nScores: \\boxed{7, 3}\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\"scores\":[7,3]}\n"
    );
}

#[test]
fn parse_reports_each_invalid_reason_with_exit_1() {
    for (text, code) in [
        (&b"Scores: \\boxed{7, 3, 1}"[..], "wrong_count"),
        (b"Scores: \\boxed{0, 3}", "out_of_range"),
        (b"Scores: \\boxed{7, 11}", "out_of_range"),
        (b"Scores: 7, 3", "no_box"),
        (
            b"Scores: \\boxed{7, 3}\nOn reflection \\boxed{7, x}",
            "not_integer",
        ),
    ] {
        let (status, json) = parse("2", text);
        assert_eq!(status, 1, "{json}");
        let reason = json["invalid"].as_str().unwrap();
        assert!(
            reason.starts_with(code),
            "{reason} should start with {code}"
        );
    }
}

#[test]
fn parse_survives_arbitrary_bytes() {
    let mut seed = 0x1234_5678_u64;
    for len in [0usize, 1, 7, 64, 300] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect();
        let (status, json) = parse("3", &bytes);
        assert!(status == 0 || status == 1, "exit {status}");
        assert!(json.get("scores").is_some() || json.get("invalid").is_some());
    }
    let (status, json) = parse("1", b"\xff\xfe Scores: \\boxed{4} \xc3");
    assert_eq!((status, json), (0, serde_json::json!({"scores": [4]})));
}

#[test]
fn prompt_shows_the_samples_order() {
    let req = br#"{"query": "Which is larger, 3 or 5?", "responses": ["3", "5"], "sampling": {"seed": 7}}"#;
    let mut seen = std::collections::HashSet::new();
    for sample in 0..8 {
        let out = grm(
            &["judge", "prompt", "--sample", &sample.to_string(), "--json"],
            req,
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let order: Vec<u64> = json["order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let prompt = json["prompt"].as_str().unwrap();
        let first = ["3", "5"][order[0] as usize];
        assert!(
            prompt.contains(&format!("[The Begin of Response 1]\n{first}\n")),
            "{prompt}"
        );
        seen.insert(order);
    }
    assert_eq!(
        seen.len(),
        2,
        "8 samples of 2 responses should show both orders"
    );
    // Without --json the bare prompt text is printed, chat template included.
    let out = grm(&["judge", "prompt", "--no-shuffle"], req);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("<bos><start_of_turn>user\nYou are a skilled little expert"));
    assert!(text.contains("[The Begin of Response 1]\n3\n"));
}

#[test]
fn prompt_jsonl_renders_every_sample_as_the_single_form_does() {
    let reqs = concat!(
        r#"{"id": "a", "query": "2+2?", "responses": ["4", "5", "3"], "sampling": {"k": 3, "seed": 11}}"#,
        "\n\n",
        r#"{"id": "b", "query": "1+1?", "responses": ["2", "3"], "judgements": ["J0"]}"#,
        "\n"
    );
    let out = grm(&["judge", "prompt", "--jsonl", "--meta"], reqs.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["sample"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("a".into(), 0),
            ("a".into(), 1),
            ("a".into(), 2),
            ("b".into(), 0)
        ]
    );
    // Each row is exactly what the one-sample form prints for that sample.
    let single = br#"{"query": "2+2?", "responses": ["4", "5", "3"], "sampling": {"seed": 11}}"#;
    for r in &rows[..3] {
        let s = r["sample"].to_string();
        let one = grm(&["judge", "prompt", "--json", "--sample", &s], single);
        let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
        assert_eq!((&r["prompt"], &r["order"]), (&one["prompt"], &one["order"]));
    }
    // --meta renders a request's judgement in the template's meta form.
    let meta = rows[3]["meta"].as_str().unwrap();
    assert!(meta.contains("J0") && meta.contains("1+1?"), "{meta}");
    assert!(rows[0].get("meta").is_none());
    // A bad line is refused with its line number.
    let out = grm(
        &["judge", "prompt", "--jsonl"],
        b"{\"query\": \"q\", \"responses\": []}\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin line 1"));
}

#[test]
fn prompt_rejects_bad_requests_by_field() {
    let out = grm(&["judge", "prompt"], br#"{"query": "q", "responses": []}"#);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("responses is empty"));
    let out = grm(
        &["judge", "prompt", "--hint", "5"],
        br#"{"query": "q", "responses": ["a", "b"]}"#,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hint is 5"));
}

/// The tiny judge fixture was trained (scripts/fixtures/make_tiny_judge.py) on prompts that
/// Python builds by hand; they must be exactly what the short test template renders.
#[test]
fn the_short_test_template_matches_the_tiny_judges_training_prompts() {
    let template =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/short-template.toml");
    let t = template.display().to_string();
    let out = grm(
        &["judge", "prompt", "--no-shuffle", "--template", &t],
        br#"{"query": "red sun?", "responses": ["tree bad", "apple good"]}"#,
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "<bos><start_of_turn>user\nJudge the responses.\nCorrect.\nQ: red sun?\n[1] tree bad\n[2] apple good\nScores: \\boxed{x, x}<end_of_turn>\n<start_of_turn>model\n"
    );
    let out = grm(
        &["judge", "prompt", "--template", &t],
        br#"{"query": "q?", "responses": ["a good"]}"#,
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "<bos><start_of_turn>user\nJudge the responses.\nCorrect.\nQ: q?\n[1] a good\nScores: \\boxed{x}<end_of_turn>\n<start_of_turn>model\n"
    );
}
