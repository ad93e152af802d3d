"""Ships the trained models (bf16, as HuggingFace directories) to models/, writes the held-out
test splits, and evaluates the shipped models with `grm eval` (greedy, voting@k, meta-RM@k).

    python training/ship.py                      # ship out/grm-rl and out/meta-rm, evaluate them
    python training/ship.py --eval-only DIR --tag rft   # evaluate another GRM (bf16 copy of DIR)
                                                 # with the shipped meta RM: models/eval/compare/
"""
import argparse
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import domain  # noqa: E402
from common import JUDGEMENT_TOKENS, ROOT, grm, path, write_jsonl  # noqa: E402

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


def test_split(n=400, n8=100):
    items = domain.split(99, n, "test")
    bon = [{"id": it["id"], "query": it["query"], "responses": it["responses"], "best": it["label"]["best"], "subset": f"n={len(it['responses'])}"}
           for it in items if len(it["responses"]) >= 2]
    single = [{"id": it["id"], "prompt": it["query"], "response": it["responses"][0], "correct": it["correct"], "subset": "n=1"}
              for it in items if len(it["responses"]) == 1]
    os.makedirs(os.path.join(MODELS, "eval"), exist_ok=True)
    write_jsonl(os.path.join(MODELS, "eval", "test-best-of-n.jsonl"), bon)
    write_jsonl(os.path.join(MODELS, "eval", "test-single.jsonl"), single)
    # Eight responses per item (the GRPO group size trainers send by default), one right.
    eight = [{"id": it["id"], "query": it["query"], "responses": it["responses"], "best": it["label"]["best"], "subset": "n=8"}
             for it in domain.split(98, n8, "test8", sizes=([8], [1]))]
    write_jsonl(os.path.join(MODELS, "eval", "test-best-of-8.jsonl"), eight)
    return len(bon), len(single), len(eight)


SPLITS = [("best-of-n", "accuracy-best-of-n.svg"), ("single", "roc-auc-single.svg"), ("best-of-8", "accuracy-best-of-8.svg"),
          # Arithmetic as a person writes it, from a generator kept apart (arith_heldout.py).
          ("checked-pairs", "accuracy-checked-pairs.svg"), ("checked-groups", "accuracy-checked-groups.svg")]


def evaluate(grm_dir=None, meta_dir=None, out_dir=None, suffix="", k_max=32, threads=None):
    ev = os.path.join(MODELS, "eval")
    out_dir = out_dir or ev
    os.makedirs(out_dir, exist_ok=True)
    common = ["--model", grm_dir or os.path.join(MODELS, "grm"), "--meta-model", meta_dir or os.path.join(MODELS, "meta-rm"),
              "--k-max", k_max, "--ks", "1,2,4,8,16,32", "--max-new-tokens", JUDGEMENT_TOKENS, "--concurrency", 64, "--kv-blocks", 30000,
              "--max-batch-tokens", 2048]
    if threads:
        common += ["--threads", threads]
    reports = []  # (split, report path); split None for the adaptive reports, which are not printed
    for name, plot in SPLITS:
        rp = os.path.join(out_dir, f"report-{name}{suffix}.json")
        grm("eval", "--input", os.path.join(ev, f"test-{name}.jsonl"), "--out", rp,
            "--plot", os.path.join(out_dir, plot.replace(".svg", f"{suffix}.svg")),
            "--judgements", path("eval", f"judgements-{name}{suffix}.jsonl"), *common)
        reports.append((name, rp))
    if not suffix:
        # Adaptive k (the README's table): the rules run on the judgements just drawn.
        for name in ("best-of-n", "single"):
            rp = os.path.join(out_dir, f"report-adaptive-{name}.json")
            grm("eval", "--input", os.path.join(ev, f"test-{name}.jsonl"), "--from-judgements",
                path("eval", f"judgements-{name}.jsonl"), "--adaptive", "exact,confident:0.9,confident:0.95,confident:0.99",
                "--out", rp, "--plot-tokens", os.path.join(out_dir, f"tokens-{name}.svg"), *common)
            reports.append((None, rp))
    for name, rp in reports:
        r = json.load(open(rp))
        # The split by its file name: a committed report names no machine's paths.
        r["input"] = os.path.basename(r.get("input", ""))
        json.dump(r, open(rp, "w"), indent=2, ensure_ascii=False)
        if name is None:
            continue
        o = r["overall"]
        print(name, o["metric"], "greedy", round(o["greedy"], 3), "parse", round(o["greedy_parse_rate"], 3),
              "voting", [(p["k"], round(p["value"], 3)) for p in o["voting"]],
              "meta", [(p["k"], round(p["value"], 3)) for p in (o["meta_rm"] or [])], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grm", default=path("grm-rl", "x")[:-2])
    ap.add_argument("--meta", default=path("meta-rm", "x")[:-2], help="'' keeps the shipped meta RM")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--eval-only", default=None, help="evaluate this GRM (shipped as bf16 to out/) against the shipped meta RM")
    ap.add_argument("--tag", default="rft")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    from transformers import Gemma2ForCausalLM, Gemma2ForSequenceClassification
    if a.eval_only:
        # The same bf16 rounding as the shipped model, so the comparison is like for like.
        dst = path(f"{a.tag}-bf16", "x")[:-2]
        ship(a.eval_only, dst, Gemma2ForCausalLM)
        evaluate(dst, out_dir=os.path.join(MODELS, "eval", "compare"), suffix=f"-{a.tag}", threads=a.threads)
        return
    ship(a.grm, os.path.join(MODELS, "grm"), Gemma2ForCausalLM)
    if a.meta:
        ship(a.meta, os.path.join(MODELS, "meta-rm"), Gemma2ForSequenceClassification)
    print("test split:", test_split(), flush=True)
    if not a.no_eval:
        evaluate(threads=a.threads)


if __name__ == "__main__":
    main()
