//! The trainers' own code against a live `grm serve` (the tiny trained judge: a response ending
//! in "good" scores 8, "bad" 3), at the versions pinned in scripts/setup-trainers.sh:
//! OpenRLHF 0.11.2's SingleTurnAgentExecutor posting one sample per call to /get_reward,
//! TRL 1.16.0's GRPOTrainer training on CPU with grm_client.trl (one process, and two under
//! torchrun with each group split across them), verl 0.9.1's RewardLoopWorker with
//! grm_client.verl's reward manager. Each script asserts what it saw and prints it as JSON;
//! here every group assertion must have run (none left waiting on the server).

mod support;

use serde_json::Value;
use std::process::Command;
use std::sync::OnceLock;
use support::*;

/// The trainers' venv, made (or checked) once per test binary.
fn trainers_python() -> String {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/setup-trainers.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/setup-trainers.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    repo()
        .join(".venv-trainers/bin/python")
        .display()
        .to_string()
}

fn run_script(script: &str, args: &[&str]) -> Value {
    let out = Command::new(trainers_python())
        .env("PYTHONPATH", repo().join("clients/python"))
        .env("HF_HUB_OFFLINE", "1")
        .env("VERL_USE_EXTERNAL_PLUGINS", "none")
        .env("TOKENIZERS_PARALLELISM", "false")
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{script}: {e}: {stdout}"))
}

/// `grm serve` of the tiny judge, gRPC and HTTP.
fn serve(dir: &std::path::Path) -> Proc {
    serve_tiny(
        dir,
        "serve",
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--max-new-tokens",
            "32",
            "--group-wait-ms",
            "3000",
        ],
    )
}

fn none_waiting(what: &str, v: &Value) {
    let waiting = v["waiting_on_server"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        waiting.is_empty(),
        "{what}: assertions left waiting: {waiting:?}"
    );
    assert!(v["checks"].as_u64().unwrap_or(0) > 0, "{what}: {v}");
}

#[test]
fn openrlhf_posts_one_sample_per_call_and_gets_groups_judged() {
    let _serial = serial();
    let dir = scratch("openrlhf");
    let s = serve(&dir);
    let v = run_script("openrlhf_check.py", &[&s.http()]);
    none_waiting("openrlhf", &v);
    // Gemma- and ChatML-templated prompts: each sample judged in its group of 4, "good"
    // responses above "bad" ones, on [0, 1].
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 8, "{v}");
    for s in samples {
        assert_eq!(
            s["extra_logs"]["grm/group_size"],
            serde_json::json!([4]),
            "{s}"
        );
    }
    let (_, scrape) = http(&s.http(), "GET", "/metrics", b"");
    assert!(
        metric(&scrape, "grm_groups_total{outcome=\"complete\"}") >= 2.0,
        "{scrape}"
    );
}

/// OpenRLHF's executor with prompts a real chat template made (a system turn of few-shot
/// examples: over 1 KiB and over 4 KiB, non-ASCII), 8 samples per prompt, one POST each:
/// every group is judged whole. The tiny judge's context is raised for these prompts (its
/// RoPE takes any position; what is asserted is the grouping, not its judgement).
#[test]
fn openrlhf_groups_of_8_with_long_system_prompts_are_judged_whole() {
    let _serial = serial();
    let dir = scratch("openrlhf-long");
    let model = dir.join("tiny-judge-16k");
    std::fs::create_dir_all(&model).unwrap();
    let src = std::path::PathBuf::from(fixture("tiny-judge"));
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), model.join(f)).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = 16384.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let template = short_template();
    let s = grm(
        &dir,
        "serve",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--model",
            model.to_str().unwrap(),
            "--template",
            &template,
            "--threads",
            "1",
            "--kv-blocks",
            "4096",
            "--max-new-tokens",
            "32",
            "--max-responses",
            "4",
        ],
    );
    let tokenizer = model.join("tokenizer.json");
    let v = run_script(
        "openrlhf_long_check.py",
        &[&s.http(), tokenizer.to_str().unwrap()],
    );
    none_waiting("openrlhf long prompts", &v);
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 16, "{v}");
    assert!(samples
        .iter()
        .any(|s| s["prompt_bytes"].as_u64().unwrap() > 4096));
    let (_, scrape) = http(&s.http(), "GET", "/metrics", b"");
    assert_eq!(
        metric(&scrape, "grm_groups_total{outcome=\"complete\"}"),
        2.0,
        "two prompts, two whole groups: {scrape}"
    );
    assert_eq!(
        metric(&scrape, "grm_groups_total{outcome=\"partial\"}"),
        0.0
    );
}

#[test]
fn trl_grpo_trains_on_cpu_with_the_grm_as_its_reward() {
    let _serial = serial();
    let dir = scratch("trl");
    let s = serve(&dir);
    let v = run_script("trl_check.py", &[&s.grpc()]);
    none_waiting("trl", &v);
    let split = run_script("trl_split_check.py", &[&s.grpc()]);
    none_waiting("trl under torchrun", &split);
}

#[test]
fn verls_reward_loop_scores_groups_by_uid() {
    let _serial = serial();
    let dir = scratch("verl");
    let s = serve(&dir);
    let v = run_script("verl_check.py", &[&s.grpc()]);
    none_waiting("verl", &v);
}

#[test]
fn the_trainer_adapters_group_as_the_trainers_lay_out_their_batches() {
    // No server: the grouping logic of grm_client.trl and .verl against fake clients.
    let v = run_script("trainer_grouping_check.py", &[]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn a_verl_generative_reward_function_judges_through_the_chat_api() {
    let _serial = serial();
    let dir = scratch("verl-genrm");
    let s = serve(&dir);
    let v = run_script("verl_genrm_check.py", &[&s.http()]);
    assert_eq!(v["checks"], 3, "{v}");
    let scores: Vec<f64> = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_f64())
        .collect();
    // The tiny judge rates a response ending in "good" above one ending in "bad".
    assert!(scores[0] > scores[1] && scores[2] > scores[3], "{v}");
}
