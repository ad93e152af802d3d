//! `grm label`, `grm eval` and `grm spct` as users run them, in-process on the tiny judge
//! (a response ending in "good" scores 8, "bad" 3) with small files made here.

mod support;

use grm_judge::{is_correct, shuffle::to_original, Label};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn grm_run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_grm"))
        .args(args)
        .env("GRM_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn in_process(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--model".into(),
        fixture("tiny-judge"),
        "--template".into(),
        short_template(),
        "--threads".into(),
        "1".into(),
        "--kv-blocks".into(),
        "2048".into(),
        "--max-new-tokens".into(),
        "32".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn write_lines(path: &Path, lines: &[Value]) {
    let mut f = std::fs::File::create(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// A Parquet file of string columns, one row per JSON object.
fn write_parquet(path: &Path, rows: &[Value]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let cols = ["id", "prompt", "chosen", "rejected", "subset"];
    let schema = format!(
        "message item {{ {} }}",
        cols.iter()
            .map(|c| format!("required binary {c} (UTF8);"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(&schema).unwrap());
    let mut w = SerializedFileWriter::new(
        std::fs::File::create(path).unwrap(),
        schema,
        std::sync::Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut rg = w.next_row_group().unwrap();
    for c in cols {
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = rows
            .iter()
            .map(|r| ByteArray::from(r[c].as_str().unwrap()))
            .collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

#[test]
fn labeling_resumes_after_a_kill_with_exactly_one_line_per_id() {
    let _serial = serial();
    let dir = scratch("label");
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    let mut lines: Vec<String> = (0..400)
        .map(|i| json!({ "id": format!("item-{i}"), "query": format!("q{i}?"), "responses": [format!("a{i} good"), format!("b{i} bad")] }).to_string())
        .collect();
    lines.insert(57, "{\"id\": \"broken\", \"responses\": ".into()); // malformed: line 58
    lines.insert(100, "not json at all".into()); // line 101
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let o = output.display().to_string();
    let i = input.display().to_string();
    let mut args: Vec<String> = vec![
        "label".into(),
        "--input".into(),
        i.clone(),
        "--output".into(),
        o.clone(),
        "--k".into(),
        "2".into(),
        "--concurrency".into(),
        "8".into(),
    ];
    args.extend(in_process(&[]));

    // First run: killed (SIGKILL) once some answers are written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_grm"))
        .args(&args)
        .env("GRM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), "some labels", || {
        std::fs::read_to_string(&output)
            .map(|t| t.lines().count() >= 40)
            .unwrap_or(false)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = std::fs::read_to_string(&output).unwrap().lines().count();
    assert!(
        partial < 400,
        "the kill came too late to test anything ({partial} lines)"
    );
    // As if the kill had cut a line in half.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&output)
        .unwrap()
        .write_all(b"{\"id\":\"item-399\",\"rewa")
        .unwrap();

    let (code, _, err) = grm_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cutting a half-written last line"), "{err}");
    let out = read_lines(&output);
    let ids: Vec<&str> = out.iter().map(|v| v["id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 400, "one line per item");
    assert_eq!(unique.len(), 400, "no id twice");
    assert_eq!(
        unique,
        (0..400)
            .map(|i| format!("item-{i}"))
            .collect::<HashSet<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
    // The judge's rule holds: "good" (response 0) wins every item.
    assert!(out.iter().all(|v| v["best"] == 0), "{}", out[0]);
    let errors = read_lines(&dir.join("out.jsonl.errors.jsonl"));
    let bad: HashSet<u64> = errors.iter().filter_map(|e| e["line"].as_u64()).collect();
    assert!(bad.contains(&58) && bad.contains(&101), "{errors:?}");
    assert!(err.contains("\"skipped_already_done\""), "{err}");
}

#[test]
fn labeling_retries_what_a_busy_router_refuses() {
    let _serial = serial();
    let dir = scratch("label-retry");
    // A router that takes one request at a time, and three items sent at once: without
    // retries two of them would end in the errors file as RESOURCE_EXHAUSTED.
    let server = serve_tiny(&dir, "serve", &["--max-inflight", "1"]);
    let input = dir.join("items.jsonl");
    let items: Vec<Value> = (0..3)
        .map(|i| {
            json!({ "id": format!("r{i}"), "query": "which?", "responses": ["a good", "b bad"],
                         "sampling": { "k": 16, "max_new_tokens": 32 } })
        })
        .collect();
    write_lines(&input, &items);
    let out = dir.join("out.jsonl");
    let (code, _, err) = grm_run(&[
        "label",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--addr",
        &server.grpc(),
        "--concurrency",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    let summary = &err[err.rfind("\n{\n").map_or(0, |i| i + 1)..];
    let summary: Value = serde_json::from_str(summary).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert!(summary["retried"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let ids: HashSet<String> = read_lines(&out)
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let errors = std::fs::read_to_string(format!("{}.errors.jsonl", out.display())).unwrap();
    assert!(errors.is_empty(), "{errors}");
}

#[test]
fn a_stopping_router_ends_a_labeling_stream_cleanly_and_a_rerun_finishes_it() {
    let _serial = serial();
    let dir = scratch("label-stop");
    let mut server = serve_tiny(&dir, "serve", &[]);
    let input = dir.join("items.jsonl");
    let items: Vec<Value> = (0..400)
        .map(|i| {
            json!({ "id": format!("s{i}"), "query": "which?", "responses": ["a good", "b bad"],
                         "sampling": { "k": 8, "max_new_tokens": 32 } })
        })
        .collect();
    write_lines(&input, &items);
    let out = dir.join("out.jsonl");
    let args = [
        "label",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--addr",
        &server.grpc(),
        "--concurrency",
        "4",
    ];
    let label = Command::new(env!("CARGO_BIN_EXE_grm"))
        .args(args)
        .env("GRM_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), "some labels", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() >= 10)
    });
    // SIGTERM: the router answers what it took, ends the stream and exits.
    server.term();
    assert_eq!(
        server.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        server.log_text()
    );
    let done = label.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    let written = read_lines(&out).len();
    assert!(written < 400, "the stop came too late to test anything");
    assert!(
        !done.status.success() && err.contains("unfinished; rerun"),
        "{err}"
    );
    // Nothing lost: a rerun against a new server finishes exactly the rest.
    let server = serve_tiny(&dir, "serve2", &[]);
    let addr = server.grpc();
    let mut args = args;
    args[6] = &addr;
    let (code, _, err) = grm_run(&args);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<String> = read_lines(&out)
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 400);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 400);
}

#[test]
fn eval_numbers_equal_the_hand_computed_accuracies() {
    let _serial = serial();
    let dir = scratch("eval");
    // Pairs: a correct label, a wrong label, a tie (both good), a correct label.
    // By hand: subset a = (1 + 0) / 2 = 0.5; subset b = (0.5 + 1) / 2 = 0.75; overall 0.625,
    // the same for greedy, every k, voting and meta-RM (the judge is deterministic here).
    let pairs = dir.join("pairs.jsonl");
    write_lines(
        &pairs,
        &[
            json!({"id": "p1", "prompt": "cat?", "chosen": "yes good", "rejected": "no bad", "subset": "a"}),
            json!({"id": "p2", "prompt": "sun?", "chosen": "it bad", "rejected": "so good", "subset": "a"}),
            json!({"id": "p3", "prompt": "red?", "chosen": "two good", "rejected": "nine good", "subset": "b"}),
            json!({"id": "p4", "prompt": "blue?", "chosen": "apple good", "rejected": "tree bad", "subset": "b"}),
        ],
    );
    let report = dir.join("report.json");
    let plot = dir.join("plot.svg");
    let mut args = vec![
        "eval".to_string(),
        "--input".into(),
        pairs.display().to_string(),
        "--k-max".into(),
        "4".into(),
        "--ks".into(),
        "1,2,4".into(),
        "--temperature".into(),
        "0.5".into(),
        "--out".into(),
        report.display().to_string(),
        "--plot".into(),
        plot.display().to_string(),
        "--meta-model".into(),
        fixture("tiny-judge-meta"),
    ];
    args.extend(in_process(&[]));
    let (code, _, err) = grm_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let o = &r["overall"];
    assert_eq!(o["greedy"], 0.625);
    for key in ["voting", "meta_rm"] {
        let vals: Vec<f64> = o[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].as_f64().unwrap())
            .collect();
        assert_eq!(vals, vec![0.625; 3], "{key}: {o}");
    }
    assert_eq!(r["subsets"]["a"]["voting"][2]["value"], 0.5);
    assert_eq!(r["subsets"]["b"]["voting"][2]["value"], 0.75);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("voting@k") && svg.contains("meta-RM@k"));

    // The same pairs as Parquet with RewardBench's columns give the same numbers.
    let pq = dir.join("pairs.parquet");
    write_parquet(&pq, &read_lines(&pairs));
    let mut args = vec![
        "eval".to_string(),
        "--input".into(),
        pq.display().to_string(),
        "--k-max".into(),
        "2".into(),
        "--ks".into(),
        "1,2".into(),
        "--out".into(),
        report.display().to_string(),
    ];
    args.extend(in_process(&[]));
    let (code, _, err) = grm_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["overall"]["voting"][1]["value"], 0.625, "{r}");

    // Single responses with a correctness label: ROC-AUC of the mean score. Scores are 8
    // (good) or 3 (bad); positives score 8 and 3, negatives 3 and 8: pairs (8>3, 8=8 → ½,
    // 3=3 → ½, 3<8) give 2/4 = 0.5. Best-of-N mixes in as another format.
    let single = dir.join("single.jsonl");
    write_lines(
        &single,
        &[
            json!({"prompt": "a?", "response": "x good", "correct": true}),
            json!({"prompt": "b?", "response": "y bad", "correct": false}),
            json!({"prompt": "c?", "response": "z good", "correct": false}),
            json!({"prompt": "d?", "response": "w bad", "correct": true}),
        ],
    );
    let mut args = vec![
        "eval".to_string(),
        "--input".into(),
        single.display().to_string(),
        "--k-max".into(),
        "2".into(),
        "--ks".into(),
        "1,2".into(),
        "--out".into(),
        report.display().to_string(),
    ];
    args.extend(in_process(&[]));
    let (code, _, err) = grm_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["overall"]["metric"], "roc_auc");
    assert_eq!(r["overall"]["greedy"], 0.5);
    assert_eq!(r["overall"]["voting"][1]["value"], 0.5);

    let bon = dir.join("bon.jsonl");
    write_lines(
        &bon,
        &[
            json!({"prompt": "a?", "chosen": "x good", "rejected": ["y bad", "z bad", "w bad"]}),
            json!({"query": "b?", "responses": ["p bad", "q bad", "r good"], "best": 2}),
            json!({"query": "c?", "responses": ["p good", "q bad"], "best": 1}),
        ],
    );
    let mut args = vec![
        "eval".to_string(),
        "--input".into(),
        bon.display().to_string(),
        "--k-max".into(),
        "2".into(),
        "--ks".into(),
        "1,2".into(),
        "--out".into(),
        report.display().to_string(),
    ];
    args.extend(in_process(&[]));
    let (code, _, err) = grm_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // Two right, one wrong label: 2/3.
    assert!(
        (r["overall"]["voting"][1]["value"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12,
        "{r}"
    );
}

fn correct(line: &Value, label: usize) -> bool {
    let text = line["completion"]
        .as_str()
        .or(line["text"].as_str())
        .unwrap();
    let order: Vec<usize> = line["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let body = text
        .rsplit("<start_of_turn>model\n")
        .next()
        .unwrap()
        .trim_end_matches("<end_of_turn>\n")
        .trim_end_matches("<end_of_turn>");
    match grm_judge::extract_scores(body, order.len()) {
        Ok(shown) => is_correct(Some(&to_original(&order, &shown)), &Label::Best(label)).unwrap(),
        Err(_) => false,
    }
}

#[test]
fn spct_rejective_sampling_keeps_only_correct_judgements_of_items_not_too_easy() {
    let _serial = serial();
    let dir = scratch("spct");
    let input = dir.join("labelled.jsonl");
    let items: Vec<Value> = (0..24)
        .map(|i| {
            let n = 2 + i % 2;
            let g = i % n;
            let responses: Vec<String> = (0..n).map(|j| format!("r{i}{j} {}", if j == g { "good" } else { "bad" })).collect();
            json!({ "id": format!("l{i}"), "query": format!("q{i}?"), "responses": responses, "label": { "best": g } })
        })
        .collect();
    write_lines(&input, &items);
    let label_of = |id: &str| {
        items.iter().find(|v| v["id"] == id).unwrap()["label"]["best"]
            .as_u64()
            .unwrap() as usize
    };
    let out = dir.join("sft.jsonl");
    // A high temperature makes the judge err now and then: some items mix right and wrong.
    let mut args = vec![
        "spct".to_string(),
        "rft".into(),
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--n-rft".into(),
        "4".into(),
        "--temperature".into(),
        "1.6".into(),
    ];
    args.extend(in_process(&[]));
    let (code, _, err) = grm_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    let pairs = read_lines(&out);
    assert_eq!(pairs.len() as u64, summary["pairs"].as_u64().unwrap());
    assert!(
        !pairs.is_empty() && summary["items_all_correct_dropped"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let kept_ids: HashSet<&str> = pairs.iter().map(|p| p["id"].as_str().unwrap()).collect();
    for p in &pairs {
        assert!(
            correct(p, label_of(p["id"].as_str().unwrap())),
            "an incorrect judgement was kept: {p}"
        );
        assert!(p["prompt"]
            .as_str()
            .unwrap()
            .starts_with("<bos><start_of_turn>user\nJudge the responses."));
        assert!(
            !p["prompt"].as_str().unwrap().contains("Best:"),
            "the SFT prompt carries no hint"
        );
        // An item kept has fewer correct judgements than drawn: all-correct items are dropped.
        assert!(pairs.iter().filter(|q| q["id"] == p["id"]).count() < 4);
    }
    assert_eq!(
        kept_ids.len() as u64,
        summary["items_kept"].as_u64().unwrap()
    );

    // Hinted: one judgement per item, kept when correct.
    let mut args = vec![
        "spct".to_string(),
        "rft".into(),
        "--hinted".into(),
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--temperature".into(),
        "1.0".into(),
    ];
    args.extend(in_process(&[]));
    let (code, _, err) = grm_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    for p in read_lines(&out) {
        assert_eq!(p["hinted"], true);
        assert!(correct(&p, label_of(p["id"].as_str().unwrap())));
    }

    // Meta-RM data: every judgement, labelled by the SPCT rule.
    let meta = dir.join("meta.jsonl");
    let mut args = vec![
        "spct".to_string(),
        "meta-data".into(),
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        meta.display().to_string(),
        "--k".into(),
        "3".into(),
        "--temperature".into(),
        "1.6".into(),
    ];
    args.extend(in_process(&[]));
    let (code, _, err) = grm_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let rows = read_lines(&meta);
    assert_eq!(rows.len(), 24 * 3);
    let positives = rows.iter().filter(|r| r["label"] == 1).count();
    assert!(positives > 0 && positives < rows.len());
    for r in &rows {
        assert_eq!(
            r["label"] == 1,
            correct(r, label_of(r["id"].as_str().unwrap())),
            "{r}"
        );
    }
}
