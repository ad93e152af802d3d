//! One request's k prompts as a prefix tree, across processes: with n responses each sample
//! sees its own order, so a request has up to n! distinct prompts sharing a long header. The
//! router sends them to a worker together and the worker computes every shared prefix once:
//! the prompt tokens computed equal the distinct tokens of the prompts' trie (measured on the
//! worker, and in the answer's usage), in one chunk or in the router's default chunks (which
//! share what they have in common on the worker), and the judgements are those of samples sent
//! one by one.

mod support;

use serde_json::Value;
use std::collections::HashSet;
use std::process::Command;
use support::*;

fn grm_json(args: &[&str], stdin: &str) -> Value {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_grm"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "grm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out.stdout).into()))
}

/// The distinct tokens of the request's k prompts: the nodes of their trie, from the prompts
/// `grm judge prompt` renders and `grm model tokenize` reads (the worker's own tokenizer).
/// The token ids of the request's k prompts, as `grm judge prompt` renders them.
fn prompt_ids(request: &str, k: usize) -> Vec<Vec<u64>> {
    let template = short_template();
    let model = fixture("tiny-judge");
    (0..k)
        .map(|s| {
            let text = grm_json(
                &[
                    "judge",
                    "prompt",
                    "--template",
                    &template,
                    "--sample",
                    &s.to_string(),
                ],
                request,
            );
            let text = text.as_str().expect("the prompt's text").to_string();
            grm_json(&["model", "tokenize", "--model", &model], &text)["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect()
        })
        .collect()
}

fn trie_nodes(request: &str, k: usize) -> usize {
    let mut nodes: HashSet<Vec<u64>> = HashSet::new();
    for ids in prompt_ids(request, k) {
        for i in 1..=ids.len() {
            nodes.insert(ids[..i].to_vec());
        }
    }
    nodes.len()
}

/// The request's distinct prompts (its samples' distinct orders).
fn distinct_orders(request: &str, k: usize) -> usize {
    prompt_ids(request, k)
        .into_iter()
        .collect::<HashSet<_>>()
        .len()
}

fn score(addr: &str, request: &str) -> Value {
    let v: Value = serde_json::from_str(request).unwrap();
    let mut args = vec![
        "score".to_string(),
        "--addr".into(),
        addr.into(),
        "--json".into(),
    ];
    args.push("--query".into());
    args.push(v["query"].as_str().unwrap().into());
    for r in v["responses"].as_array().unwrap() {
        args.push("--response".into());
        args.push(r.as_str().unwrap().into());
    }
    for (flag, key) in [("--k", "k"), ("--seed", "seed")] {
        args.push(flag.into());
        args.push(v["sampling"][key].to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    grm_json(&args, "")
}

fn computed(worker_metrics: &str) -> f64 {
    metric(
        &http(worker_metrics, "GET", "/metrics", b"").1,
        "grm_engine_prompt_tokens_computed_total{role=\"grm\"}",
    )
}

#[test]
fn a_requests_prompts_are_computed_as_one_tree() {
    let _serial = serial();
    let dir = scratch("prefix-tree");
    let w = static_worker(
        &dir,
        "4096",
        &["--metrics-listen", "127.0.0.1:0", "--no-prefix-cache"],
    );
    let metrics = w.ready["metrics"].as_str().unwrap().to_string();
    // One chunk per request (the tree), the default chunks (up to 8 samples, all on this
    // worker at once: they share across requests), and one per sample (the tree's prompts
    // one by one).
    let tree = static_router(&dir, &w.grpc(), "", &["--chunk-samples", "64"]);
    let chunked = static_router(&dir, &w.grpc(), "", &[]);
    let single = static_router(&dir, &w.grpc(), "", &["--chunk-samples", "1"]);
    let responses = [
        "it is so good",
        "it is so bad",
        "the answer is good",
        "not bad",
    ];
    // n = 1..4, block-aligned and unaligned branch points alike (the responses' lengths vary).
    for (n, k) in [(1usize, 4usize), (2, 8), (3, 16), (4, 32)] {
        let request = serde_json::json!({
            "query": "the answer is",
            "responses": &responses[..n],
            "sampling": {"k": k, "seed": 3 + n},
        })
        .to_string();
        let ideal = trie_nodes(&request, k);
        let before = computed(&metrics);
        let a = score(&tree.grpc(), &request);
        let on_worker = computed(&metrics) - before;
        let usage = &a["usage"];
        let in_usage = usage["prompt_tokens"].as_u64().unwrap()
            - usage["cached_prompt_tokens"].as_u64().unwrap_or(0);
        assert_eq!(
            on_worker as usize, ideal,
            "n = {n}, k = {k}: computed on the worker vs the trie"
        );
        assert_eq!(
            in_usage as usize, ideal,
            "n = {n}, k = {k}: computed per the answer's usage"
        );
        // In the default chunks, each on its own engine request, the same positions are
        // computed, and the same judgements given.
        let before = computed(&metrics);
        let c = score(&chunked.grpc(), &request);
        let on_worker = computed(&metrics) - before;
        let usage = &c["usage"];
        let in_usage = usage["prompt_tokens"].as_u64().unwrap()
            - usage["cached_prompt_tokens"].as_u64().unwrap_or(0);
        assert_eq!(
            (on_worker as usize, in_usage as usize),
            (ideal, ideal),
            "n = {n}, k = {k}: computed in the default chunks (on the worker, in the usage) vs the trie"
        );
        // The same samples sent one by one judge the same, and share as much: a prompt sent
        // again costs its last position (its logits). Sharing needs the chunks on the worker
        // together: one that arrives after the others' samples have ended (a loaded machine
        // spreads the arrivals; the worker keeps no prefix cache here) computes its prompt
        // again. So each of up to three tries must never compute less than that, and one must
        // compute exactly that.
        let want = ideal + k - distinct_orders(&request, k);
        let mut tries = Vec::new();
        let b = loop {
            let before = computed(&metrics);
            let b = score(&single.grpc(), &request);
            let one_by_one = (computed(&metrics) - before) as usize;
            assert!(
                one_by_one >= want,
                "n = {n}, k = {k}: {one_by_one} positions computed one by one, fewer than {want}"
            );
            tries.push(one_by_one);
            if one_by_one == want || tries.len() == 3 {
                break b;
            }
        };
        eprintln!("n = {n}, k = {k}: one by one, {tries:?} positions (want {want})");
        let texts = |v: &Value| -> Vec<String> {
            v["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["text"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            texts(&a),
            texts(&b),
            "n = {n}: the judgements changed with sharing"
        );
        assert_eq!(
            texts(&a),
            texts(&c),
            "n = {n}: the judgements changed in chunks"
        );
        let distinct: HashSet<String> = b["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["order"].to_string())
            .collect();
        assert_eq!(
            distinct.len(),
            distinct_orders(&request, k),
            "n = {n}: the orders"
        );
        assert_eq!(
            tries.last().copied(),
            Some(want),
            "n = {n}, k = {k}: computed for samples sent one by one, in {} tries",
            tries.len()
        );
    }
}
