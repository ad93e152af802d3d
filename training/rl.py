"""Stage 3 of the embedded GRM: SPCT's rule-based online RL (its second stage), after rejective
fine-tuning. TRL's GRPOTrainer samples G judgements of each prompt from the GRM itself
(temperature 1); each is rewarded by the SPCT rule computed by the project's own code: its
scores are read by `grm judge parse --responses n` (an unparsable judgement, or one with the
wrong count of scores, is invalid), mapped back from the prompt's shuffled order, and the
judgement is correct iff the labelled best response scores strictly above every other
(n >= 2) or the score equals the labelled rating (n = 1): reward +1, else -1. A KL penalty to
the RFT model (beta) keeps the judgements' form.

The prompts are exactly what grm renders (`grm judge prompt --jsonl`, each item in its own
seeded order of the responses). Items are drawn from a fresh split; those the RFT model
always or never gets right (4 judgements each at temperature 1, drawn by
`grm spct meta-data`, which labels each by the same rule) carry no GRPO signal and are left
out before training, so every step's groups can teach something.

Everything is seeded; one thread or two. Writes out/grm-rl (f32) and out/rl-log.jsonl (per
step: reward, correct and valid rates per n)."""
import argparse
import concurrent.futures as cf
import json
import os
import random
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import domain  # noqa: E402
from common import END_OF_TURN, EOS, GRM, grm, path, read_jsonl, render_prompts, write_jsonl  # noqa: E402

# The RL split: more of the larger items, where the RFT model is weakest.
RL_SIZES = ([1, 2, 4, 8], [2, 3, 3, 3])


def parse(text, n):
    """The scores of a judgement in its shown order, or None (invalid): `grm judge parse`."""
    r = subprocess.run([GRM, "judge", "parse", "--responses", str(n)], input=text.encode(), capture_output=True)
    out = json.loads(r.stdout.decode() or "{}")
    return out.get("scores")


def rule(scores, order, label):
    """The SPCT rule (DESIGN.md §1, grm_judge::spct::is_correct) on scores shown in `order`."""
    if scores is None:
        return False
    orig = [0] * len(scores)
    for shown, i in enumerate(order):
        orig[i] = scores[shown]
    if "best" in label:
        b = label["best"]
        return all(i == b or s < orig[b] for i, s in enumerate(orig))
    return orig[0] == label["rating"]


class SpctReward:
    """A TRL reward function: +1 for a correct judgement, -1 otherwise; logs per step."""

    def __init__(self, log_path):
        self.__name__ = "spct"
        self.log_path = log_path
        open(log_path, "w").close()
        self.pool = cf.ThreadPoolExecutor(4)
        self.t0 = time.time()

    def __call__(self, prompts, completions, n, order, label, **kw):
        labels = [json.loads(x) for x in label]
        scores = list(self.pool.map(parse, completions, n))
        correct = [rule(s, o, l) for s, o, l in zip(scores, order, labels)]
        rewards = [1.0 if c else -1.0 for c in correct]
        state = kw.get("trainer_state")
        row = {"step": getattr(state, "global_step", None), "s": round(time.time() - self.t0, 1),
               "reward": sum(rewards) / len(rewards), "valid": sum(s is not None for s in scores) / len(scores)}
        for size in sorted(set(n)):
            idx = [i for i, m in enumerate(n) if m == size]
            row[f"correct_n{size}"] = sum(correct[i] for i in idx) / len(idx)
            row[f"count_n{size}"] = len(idx)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print("rl", json.dumps(row), flush=True)
        return rewards


def select_items(a, model_dir):
    """Items of the RL split with a GRPO signal: the RFT model neither always nor never right
    in 4 judgements at temperature 1 (`grm spct meta-data` labels each by the SPCT rule)."""
    items = domain.split(61, a.pool_items, "rl", sizes=RL_SIZES)
    reqs = [domain.request(it) for it in items]
    write_jsonl(path("data", "rl-pool.jsonl"), reqs)
    r = grm("spct", "meta-data", "--input", path("data", "rl-pool.jsonl"), "--output", path("data", "rl-pool-judged.jsonl"),
            "--k", 4, "--model", model_dir, "--temperature", 1.0, "--max-new-tokens", a.max_completion_length,
            "--concurrency", 64, "--kv-blocks", 20000, "--max-batch-tokens", 2048, "--threads", a.threads)
    print("rl pool:", r.stderr.strip().splitlines()[-1], flush=True)
    right = {}
    for row in read_jsonl(path("data", "rl-pool-judged.jsonl")):
        right.setdefault(row["id"], []).append(row["label"])
    keep = [it for it in items if 0 < sum(right.get(it["id"], [])) < len(right.get(it["id"], []))]
    by_n = {}
    for it in keep:
        by_n[len(it["responses"])] = by_n.get(len(it["responses"]), 0) + 1
    print(f"rl: {len(keep)} of {len(items)} items with a signal, by n: {dict(sorted(by_n.items()))}", flush=True)
    return keep


def tokenizer(model_dir):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"), pad_token="<pad>",
                                  eos_token="<end_of_turn>", bos_token="<bos>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grm", default=None, help="the RFT model (default out/grm-rft)")
    ap.add_argument("--out", default=None, help="default out/grm-rl")
    ap.add_argument("--pool-items", type=int, default=1200)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--beta", type=float, default=0.04, help="KL penalty to the RFT model")
    ap.add_argument("--max-completion-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = a.grm or path("grm-rft", "x")[:-2]
    out_dir = a.out or path("grm-rl", "x")[:-2]
    t0 = time.time()

    keep = select_items(a, model_dir)
    rng = random.Random(a.seed)
    rng.shuffle(keep)
    need = a.steps * a.prompts_per_step
    keep = (keep * (need // max(len(keep), 1) + 1))[:need]
    # One prompt per item, in the item's own seeded order of the responses, as grm renders it.
    reqs = [domain.request(it, seed=rng.randrange(1 << 40)) for it in keep]
    rendered = render_prompts(reqs)
    rows = [{"prompt": p["prompt"], "n": len(it["responses"]), "order": p["order"], "label": json.dumps(it["label"])}
            for it, p in zip(keep, rendered)]

    from datasets import Dataset
    from transformers import Gemma2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    tok = tokenizer(model_dir)
    probe = rows[0]["prompt"]
    from tokenizers import Tokenizer
    ref = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    assert tok(probe)["input_ids"] == ref.encode(probe, add_special_tokens=False).ids, "the trainer must see grm's tokens"
    model = Gemma2ForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
    model.generation_config.eos_token_id = [EOS, END_OF_TURN]
    model.generation_config.pad_token_id = 0
    args = GRPOConfig(
        output_dir=path("rl-trainer", "x")[:-2], use_cpu=True, bf16=False, seed=a.seed, data_seed=a.seed,
        per_device_train_batch_size=a.prompts_per_step * a.num_generations, num_generations=a.num_generations,
        max_completion_length=a.max_completion_length, temperature=1.0, top_p=1.0, beta=a.beta, loss_type="grpo",
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, max_steps=a.steps, shuffle_dataset=False,
        logging_steps=1, report_to="none", save_strategy="no", use_vllm=False, dataloader_num_workers=0,
        gradient_checkpointing=False, disable_dropout=True, max_grad_norm=1.0)
    reward = SpctReward(path("rl-log.jsonl"))
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward], args=args,
                          train_dataset=Dataset.from_list(rows))
    trainer.train()
    model = trainer.model
    # TRL aligns the config's end tokens with the tokenizer's one; grm stops on both.
    model.config.eos_token_id = [EOS, END_OF_TURN]
    model.generation_config.eos_token_id = [EOS, END_OF_TURN]
    import shutil
    model.save_pretrained(out_dir, safe_serialization=True)
    shutil.copy(os.path.join(model_dir, "tokenizer.json"), os.path.join(out_dir, "tokenizer.json"))
    print(f"saved {out_dir} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
