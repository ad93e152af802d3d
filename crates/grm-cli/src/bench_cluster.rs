//! `grm bench cluster`: a router and 1..W worker processes on this machine, a fixed workload
//! sent over gRPC with bounded concurrency; requests/s, latency percentiles, and the router's
//! own time per request (its total minus generation and meta-RM time).

use crate::bench_cmd::{machine, ClusterArgs};
use anyhow::{bail, Context, Result};
use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::{Message, Sampling, ScoreRequest};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `grm <args>` and returns it with its ready line.
fn start(args: &[String]) -> Result<(Proc, Value)> {
    let exe = std::env::current_exe().context("finding the grm binary")?;
    let mut child = Command::new(exe)
        .args(args)
        .env("GRM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a grm process")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let ready: Value =
        serde_json::from_str(&line).with_context(|| format!("{} did not start", args[0]))?;
    Ok((Proc(child), ready))
}

fn workload(n: usize, responses: usize, k: u32, max_new_tokens: u32) -> Vec<ScoreRequest> {
    const WORDS: [&str; 12] = [
        "the", "answer", "is", "seven", "because", "two", "plus", "five", "makes", "it", "good",
        "bad",
    ];
    (0..n)
        .map(|i| {
            let w = |j: usize, len: usize| {
                (0..len)
                    .map(|t| WORDS[(i * 7 + j * 3 + t * 5) % WORDS.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            ScoreRequest {
                id: format!("bench-{i}"),
                conversation: vec![Message {
                    role: "user".into(),
                    content: format!("{}?", w(0, 4)),
                }],
                responses: (0..responses).map(|j| w(j + 1, 3 + j)).collect(),
                sampling: Some(Sampling {
                    k,
                    seed: Some(i as u64),
                    max_new_tokens,
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn run(a: ClusterArgs) -> Result<()> {
    let model = match a
        .model
        .clone()
        .or_else(|| crate::serve_cmd::embedded_models().0)
    {
        Some(m) => m,
        None => bail!("give --model (no embedded model is shipped in models/grm)"),
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &w in &a.workers {
        if w == 0 {
            continue;
        }
        let threads = (cores / w).max(1);
        let mut procs = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..w {
            let mut args: Vec<String> = vec![
                "worker".into(),
                "--model".into(),
                model.display().to_string(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--threads".into(),
                threads.to_string(),
                "--kv-blocks".into(),
                a.kv_blocks.to_string(),
                "--device".into(),
                a.device.clone(),
            ];
            if a.device != "cpu" {
                // Workers on one GPU split its memory.
                args.extend([
                    "--gpu-memory-fraction".into(),
                    format!("{:.3}", 0.9 / w as f64),
                ]);
            }
            let (p, ready) = start(&args)?;
            addrs.push(ready["grpc"].as_str().unwrap_or_default().to_string());
            procs.push(p);
        }
        let mut args: Vec<String> = vec![
            "router".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--http-listen".into(),
            String::new(),
            "--workers".into(),
            addrs.join(","),
        ];
        if let Some(t) = &a.template {
            args.extend(["--template".into(), t.display().to_string()]);
        }
        let (router, ready) = start(&args)?;
        procs.push(router);
        let addr = format!("http://{}", ready["grpc"].as_str().unwrap_or_default());
        let reqs = workload(a.requests, a.responses, a.k, a.max_new_tokens);
        let row = rt.block_on(async {
            let client = RewardServiceClient::connect(addr.clone()).await.with_context(|| format!("connecting to {addr}"))?;
            // Warm-up: one request through every worker's engine.
            for r in reqs.iter().take(w) {
                client.clone().score(r.clone()).await.map_err(|s| anyhow::anyhow!("warm-up: {s}"))?;
            }
            let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for r in reqs {
                let permit = Arc::clone(&sem).acquire_owned().await?;
                let mut c = client.clone();
                tasks.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let mut req = tonic::Request::new(r);
                    req.set_timeout(Duration::from_secs(600));
                    let resp = c.score(req).await;
                    drop(permit);
                    (t.elapsed().as_secs_f64() * 1e3, resp)
                }));
            }
            let mut lat = Vec::new();
            let (mut overhead, mut failed, mut generated) = (0.0, 0, 0u64);
            for t in tasks {
                let (ms, resp) = t.await?;
                match resp {
                    Ok(r) => {
                        let r = r.into_inner();
                        lat.push(ms);
                        if let Some(t) = r.timings {
                            overhead += (t.total_ms - t.generate_ms - t.meta_ms).max(0.0);
                        }
                        generated += r.usage.map_or(0, |u| u.generated_tokens);
                    }
                    Err(_) => failed += 1,
                }
            }
            let secs = start.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            let ok = lat.len();
            eprintln!(
                "{w} worker(s): {ok} requests in {secs:.2} s = {:.2} req/s, p50 {:.0} ms, p99 {:.0} ms, router overhead {:.2} ms/request",
                ok as f64 / secs,
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                overhead / ok.max(1) as f64
            );
            Ok::<_, anyhow::Error>(json!({
                "workers": w, "threads_per_worker": threads, "requests": ok, "failed": failed, "seconds": secs,
                "requests_per_s": ok as f64 / secs, "generated_tokens_per_s": generated as f64 / secs,
                "latency_ms": { "p50": percentile(&lat, 0.5), "p90": percentile(&lat, 0.9), "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(0.0) },
                "router_overhead_ms_per_request": overhead / ok.max(1) as f64,
            }))
        })?;
        rows.push(row);
        drop(procs);
    }
    let report = json!({
        "machine": machine(),
        "model": model.display().to_string(),
        "template": a.template.as_ref().map(|t| t.display().to_string()),
        "device": a.device,
        "workload": { "requests": a.requests, "concurrency": a.concurrency, "k": a.k, "responses": a.responses, "max_new_tokens": a.max_new_tokens },
        "runs": rows,
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(out) = &a.out {
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
