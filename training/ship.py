"""Ships the trained models (bf16, as HuggingFace directories) to models/, writes the held-out
test split, and evaluates the shipped models with `grm eval` (greedy, voting@k, meta-RM@k)."""
import argparse
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import domain  # noqa: E402
from common import ROOT, grm, path, write_jsonl  # noqa: E402

MODELS = os.path.join(ROOT, "models")


def ship(src, dst, cls):
    model = cls.from_pretrained(src, attn_implementation="eager", dtype=torch.float32)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    model.to(torch.bfloat16).save_pretrained(dst, safe_serialization=True)
    shutil.copy(os.path.join(src, "tokenizer.json"), os.path.join(dst, "tokenizer.json"))
    gc = os.path.join(dst, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)


def test_split(n=400):
    items = domain.split(99, n, "test")
    bon = [{"id": it["id"], "query": it["query"], "responses": it["responses"], "best": it["label"]["best"], "subset": f"n={len(it['responses'])}"}
           for it in items if len(it["responses"]) >= 2]
    single = [{"id": it["id"], "prompt": it["query"], "response": it["responses"][0], "correct": it["correct"], "subset": "n=1"}
              for it in items if len(it["responses"]) == 1]
    os.makedirs(os.path.join(MODELS, "eval"), exist_ok=True)
    write_jsonl(os.path.join(MODELS, "eval", "test-best-of-n.jsonl"), bon)
    write_jsonl(os.path.join(MODELS, "eval", "test-single.jsonl"), single)
    return len(bon), len(single)


def evaluate(k_max=32):
    ev = os.path.join(MODELS, "eval")
    common = ["--model", os.path.join(MODELS, "grm"), "--meta-model", os.path.join(MODELS, "meta-rm"), "--k-max", k_max,
              "--ks", "1,2,4,8,16,32", "--max-new-tokens", 96, "--concurrency", 64, "--kv-blocks", 30000, "--max-batch-tokens", 2048]
    grm("eval", "--input", os.path.join(ev, "test-best-of-n.jsonl"), "--out", os.path.join(ev, "report-best-of-n.json"),
        "--plot", os.path.join(ev, "accuracy-best-of-n.svg"), *common)
    grm("eval", "--input", os.path.join(ev, "test-single.jsonl"), "--out", os.path.join(ev, "report-single.json"),
        "--plot", os.path.join(ev, "roc-auc-single.svg"), *common)
    for name in ["best-of-n", "single"]:
        r = json.load(open(os.path.join(ev, f"report-{name}.json")))
        o = r["overall"]
        print(name, o["metric"], "greedy", round(o["greedy"], 3), "parse", round(o["greedy_parse_rate"], 3),
              "voting", [(p["k"], round(p["value"], 3)) for p in o["voting"]],
              "meta", [(p["k"], round(p["value"], 3)) for p in (o["meta_rm"] or [])], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grm", default=path("grm-rft", "x")[:-2])
    ap.add_argument("--meta", default=path("meta-rm", "x")[:-2])
    ap.add_argument("--no-eval", action="store_true")
    a = ap.parse_args()
    from transformers import Gemma2ForCausalLM, Gemma2ForSequenceClassification
    ship(a.grm, os.path.join(MODELS, "grm"), Gemma2ForCausalLM)
    ship(a.meta, os.path.join(MODELS, "meta-rm"), Gemma2ForSequenceClassification)
    print("test split:", test_split(), flush=True)
    if not a.no_eval:
        evaluate()


if __name__ == "__main__":
    main()
