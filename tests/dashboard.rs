//! The Grafana dashboard queries only metrics the servers export: every metric name in its
//! PromQL is found in live scrapes of a router, a GRM worker, a meta-RM worker and an
//! aggregator.

mod support;

use std::collections::BTreeSet;
use support::*;

/// Metric names a Prometheus text scrape exposes (from its TYPE lines and its samples).
fn names(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in scrape.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if !line.starts_with('#') => line.split(['{', ' ']).next(),
            None => None,
        };
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            out.insert(n.to_string());
        }
    }
    out
}

/// The metric names a PromQL expression reads.
fn queried(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("grm_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let _serial = serial();
    let dir = scratch("dashboard");
    let w = static_worker(&dir, "1024", &["--metrics-listen", "127.0.0.1:0"]);
    let m = meta_worker(&dir, &["--metrics-listen", "127.0.0.1:0"]);
    let a = grm(
        &dir,
        "aggregator",
        &[
            "aggregator",
            "--listen",
            "127.0.0.1:0",
            "--template",
            short_template_static(),
            "--meta-workers",
            &m.grpc(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let router = static_router(
        &dir,
        &w.grpc(),
        "127.0.0.1:0",
        &["--meta-workers", &m.grpc(), "--aggregators", &a.grpc()],
    );
    // Before any traffic, every labelled series the dashboard sums over is there at zero
    // ("No data" on a fresh cluster otherwise), and every HELP text ends in one period.
    let mut fresh = String::new();
    for addr in [
        router.http(),
        a.ready["metrics"].as_str().unwrap().to_string(),
    ] {
        let (code, scrape) = http(&addr, "GET", "/metrics", b"");
        assert_eq!(code, 200, "{addr}: {scrape}");
        fresh.push_str(&scrape);
    }
    for series in [
        "grm_groups_total{outcome=\"complete\"}",
        "grm_groups_total{outcome=\"refused\"}",
        "grm_adaptive_requests_total{stopped=\"early\"}",
        "grm_judgements_invalid_by_reason_total{reason=\"no_box\"}",
        "grm_group_members_refused_total{reason=\"caller_groups\"}",
        "grm_meta_rm_calls_total{outcome=\"failed\"}",
    ] {
        assert!(
            fresh.lines().any(|l| l == format!("{series} 0")),
            "{series} is not at 0 on a fresh cluster:\n{fresh}"
        );
    }
    for help in fresh.lines().filter(|l| l.starts_with("# HELP")) {
        assert!(!help.ends_with(".."), "{help}");
    }
    // Some traffic, so that labelled series exist too.
    let (code, body) = http(
        &router.http(),
        "POST",
        "/get_reward?k=2&group_size=2",
        br#"{"query": ["the answer is so good", "the answer is so bad"], "prompts": ["the answer is ", "the answer is "]}"#,
    );
    assert_eq!(code, 200, "{body}");
    // Judgements cut short (invalid, by reason), sampled adaptively.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grm"))
        .args([
            "score",
            "--addr",
            &router.grpc(),
            "--query",
            "the answer is",
            "--response",
            "so good",
        ])
        .args([
            "--response",
            "so bad",
            "--k",
            "4",
            "--max-new-tokens",
            "3",
            "--adaptive",
            "exact",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut exported = BTreeSet::new();
    for addr in [
        router.http(),
        w.ready["metrics"].as_str().unwrap().to_string(),
        m.ready["metrics"].as_str().unwrap().to_string(),
        a.ready["metrics"].as_str().unwrap().to_string(),
    ] {
        let (code, scrape) = http(&addr, "GET", "/metrics", b"");
        assert_eq!(code, 200, "{addr}: {scrape}");
        exported.extend(names(&scrape));
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/grm-cluster.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let found = queried(expr);
            assert!(
                !found.is_empty(),
                "panel {:?} queries no grm_ metric: {expr}",
                panel["title"]
            );
            for name in found {
                assert!(
                    exported.contains(&name),
                    "panel {:?} queries {name}, which no server exports; exported: {exported:?}",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked} metric references checked");
    // The chart ships the same dashboard.
    let chart =
        std::fs::read_to_string(repo().join("helm/grm-cluster/dashboards/grm-cluster.json"))
            .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&chart).unwrap(),
        dashboard
    );
}
