"""Writes the Grafana dashboard of GRM Cluster's Prometheus metrics (routers, workers,
aggregators) to deploy/grafana/grm-cluster.json and, for the chart's ConfigMap,
helm/grm-cluster/dashboards/grm-cluster.json (the same file). Run it after changing a panel:
python3 deploy/grafana/make_dashboard.py"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, [(PromQL, legend)]); one row of panels per section.
SECTIONS = [
    ("Requests", [
        ("Requests per second by status code", "reqps",
         [("sum by (code) (rate(grm_score_requests_total[$__rate_interval]))", "{{code}}")]),
        ("Error ratio", "percentunit",
         [('sum(rate(grm_score_requests_total{code!="OK"}[$__rate_interval])) / sum(rate(grm_score_requests_total[$__rate_interval]))', "errors")]),
        ("Latency p50 / p95 / p99", "s",
         [(f"histogram_quantile({q}, sum by (le) (rate(grm_score_request_duration_seconds_bucket[$__rate_interval])))", f"p{int(q * 100)}")
          for q in (0.5, 0.95, 0.99)]),
        ("Requests in flight", "short", [("sum(grm_score_requests_in_flight)", "in flight")]),
    ]),
    ("Judgements", [
        ("Judgements per second", "short",
         [("sum(rate(grm_judgements_voted_total[$__rate_interval]))", "voted"),
          ("sum(rate(grm_judgements_invalid_total[$__rate_interval]))", "invalid")]),
        ("Invalid judgements by reason", "short",
         [("sum by (reason) (rate(grm_judgements_invalid_by_reason_total[$__rate_interval]))", "{{reason}}")]),
        ("Meta-RM filtering", "short",
         [("sum(rate(grm_judgements_meta_filtered_total[$__rate_interval]))", "left out by the meta RM"),
          ("sum(rate(grm_meta_fallbacks_total[$__rate_interval]))", "plain voting (meta RM failed)")]),
        ("Vote margin (best minus runner-up, per vote) p50 / p90", "short",
         [(f"histogram_quantile({q}, sum by (le) (rate(grm_vote_margin_bucket[$__rate_interval])))", f"p{int(q * 100)}")
          for q in (0.5, 0.9)]),
        ("Adaptive k: judgements saved per second", "short",
         [("sum(rate(grm_judgements_saved_total[$__rate_interval]))", "saved"),
          ("sum by (stopped) (rate(grm_adaptive_requests_total[$__rate_interval]))", "requests {{stopped}}")]),
        ("Groups (trainers' one-sample calls)", "short",
         [("sum by (outcome) (rate(grm_groups_total[$__rate_interval]))", "{{outcome}}"),
          ("sum(grm_groups_forming)", "forming")]),
    ]),
    ("Workers", [
        ("KV cache blocks by state", "short",
         [("sum by (state) (grm_kv_blocks)", "{{state}}")]),
        ("Prefix-cache hit rate", "percentunit",
         [("sum(rate(grm_prefix_cache_hits_total[$__rate_interval])) / sum(rate(grm_prefix_cache_lookups_total[$__rate_interval]))", "hits")]),
        ("Queue depth", "short",
         [("sum by (instance) (grm_waiting_sequences)", "waiting {{instance}}"),
          ("sum by (instance) (grm_queued_prompt_tokens)", "queued prompt tokens {{instance}}")]),
        ("Tokens per second by worker", "short",
         [("sum by (instance) (rate(grm_engine_generated_tokens_total[$__rate_interval]))", "generated {{instance}}"),
          ("sum by (instance) (rate(grm_engine_prompt_tokens_computed_total[$__rate_interval]))", "prompt computed {{instance}}")]),
        ("Live members by role (as the routers see them)", "short",
         [("max by (role) (grm_workers_live)", "{{role}}")]),
        ("Preemptions per second", "short",
         [("sum(rate(grm_engine_preemptions_total[$__rate_interval]))", "preempted")]),
    ]),
]


def dashboard():
    panels, y, pid = [], 0, 1
    for section, items in SECTIONS:
        panels.append({"type": "row", "title": section, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y = pid + 1, y + 1
        for i, (title, unit, targets) in enumerate(items):
            panels.append({
                "type": "timeseries", "title": title, "id": pid, "datasource": DS,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": y + 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": e, "legendFormat": l}
                            for j, (e, l) in enumerate(targets)],
            })
            pid += 1
        y += 8 * ((len(items) + 1) // 2)
    return {
        "title": "GRM Cluster", "uid": "grm-cluster", "schemaVersion": 39, "version": 1,
        "tags": ["grm-cluster"], "timezone": "browser", "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    text = json.dumps(dashboard(), indent=2) + "\n"
    for path in (os.path.join(here, "grm-cluster.json"),
                 os.path.join(here, "..", "..", "helm", "grm-cluster", "dashboards", "grm-cluster.json")):
        with open(path, "w") as f:
            f.write(text)
