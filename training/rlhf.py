"""The RLHF demo: the base policy (training/policy.py) trained with TRL's GRPOTrainer on rewards
from a live `grm serve` (the embedded GRM and meta RM) through grm_client.trl.GRMReward:
groups of 4 completions per question, each group judged as one request by the router's group
barrier (k judgements, the meta RM keeping the best k/2). The reward is the GRM's alone; the
ground truth (the question's answer) is only logged beside it, to see whether the policy
learns to answer right or learns to fool the judge:

  * exact-answer accuracy of the policy's own samples, step by step, beside the GRM's reward;
  * the GRM's agreement with the ground truth on those samples: within a group, how often a
    right answer gets a higher reward than a wrong one (pairs, ties count half), and how often
    a sample's reward is on the right side of 0.5 (reward >= 0.5, i.e. a mean score >= 5.5,
    for right answers);
  * before/after: exact-answer accuracy on held-out questions (greedy and sampled).

    python training/rlhf.py --addr 127.0.0.1:50151 --policy DIR --out DIR
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clients", "python"))
import policy as pol  # noqa: E402
from common import END_OF_TURN, EOS, PAD  # noqa: E402

TRAIN = (72, 2000)  # the RL prompts: questions of another split than the held-out ones


def wait_ready(addr, seconds=120):
    from grm_client.client import RewardClient, ScoreError
    c = RewardClient(addr, timeout=30)
    t0 = time.time()
    while True:
        try:
            c.score("What is 2 + 2?", ["The answer is 4."], k=1, timeout=30)
            return
        except ScoreError:
            if time.time() - t0 > seconds:
                raise
            time.sleep(1)


class Logged:
    """Wraps GRMReward: returns its rewards unchanged, and records per step what the ground
    truth says about the same completions."""

    def __init__(self, grm, num_generations, log_path):
        self.grm, self.g, self.log_path = grm, num_generations, log_path
        self.__name__ = "grm"
        open(log_path, "w").close()
        self.t0 = time.time()

    def __call__(self, prompts, completions, completion_ids=None, answer=None, **kw):
        rewards = self.grm(prompts, completions, completion_ids, **kw)
        texts = [pol.completion_text(c) for c in completions]
        right = [pol.final_answer(t) == a for t, a in zip(texts, answer)]
        pairs, pair_credit, sided, scored = 0, 0.0, 0, 0
        for g0 in range(0, len(texts), self.g):
            idx = range(g0, min(g0 + self.g, len(texts)))
            rr = [rewards[i] for i in idx if right[i] and rewards[i] is not None]
            ww = [rewards[i] for i in idx if not right[i] and rewards[i] is not None]
            for x in rr:
                for y in ww:
                    pairs += 1
                    pair_credit += 1.0 if x > y else 0.5 if x == y else 0.0
        for r, ok in zip(rewards, right):
            if r is not None:
                scored += 1
                sided += int((r >= 0.5) == ok)
        got = [r for r in rewards if r is not None]
        wrong = [r for r, ok in zip(rewards, right) if r is not None and not ok]
        row = {
            "step": getattr(kw.get("trainer_state"), "global_step", None), "s": round(time.time() - self.t0, 1),
            "reward": sum(got) / len(got) if got else None,
            "accuracy": sum(right) / len(right),
            "pairs": pairs, "pair_agreement": pair_credit / pairs if pairs else None,
            "side_agreement": sided / scored if scored else None,
            "wrong_rewarded": sum(r >= 0.5 for r in wrong) / len(wrong) if wrong else None,
            "unscored": (len(rewards) - len(got)) / len(rewards),
            "distinct": sum(len(set(texts[g0:g0 + self.g])) for g0 in range(0, len(texts), self.g)) / (len(texts) / self.g),
            "samples": [{"text": t, "right": ok, "reward": r} for t, ok, r in zip(texts, right, rewards)],
        }
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print("rlhf", json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "samples"}), flush=True)
        return rewards


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--policy", required=True, help="the base policy (policy.py pretrain)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from transformers import Gemma2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from grm_client.trl import GRMReward

    os.makedirs(a.out, exist_ok=True)
    wait_ready(a.addr)
    tok = pol.tokenizer()
    model = Gemma2ForCausalLM.from_pretrained(a.policy, attn_implementation="eager", dtype=torch.float32)
    model.generation_config.eos_token_id = [EOS, END_OF_TURN]
    model.generation_config.pad_token_id = PAD
    t0 = time.time()
    before = pol.evaluate(model, tok)
    print("before:", json.dumps({k: v for k, v in before.items() if k != "examples"}), flush=True)

    qs = pol.questions(*TRAIN, "rlhf")
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": q["query"]}], "answer": q["answer"]} for q in qs])
    grm = GRMReward(a.addr, k=a.k, num_generations=a.num_generations, seed=a.seed, timeout=600, group_wait_ms=30000,
                    group_prefix=f"rlhf-demo-{a.seed}")
    reward = Logged(grm, a.num_generations, os.path.join(a.out, "steps.jsonl"))
    args = GRPOConfig(
        output_dir=os.path.join(a.out, "trainer"), use_cpu=True, bf16=False, seed=a.seed, data_seed=a.seed,
        per_device_train_batch_size=a.prompts_per_step * a.num_generations, num_generations=a.num_generations,
        max_completion_length=40, temperature=1.0, top_p=1.0, beta=a.beta, loss_type="grpo", learning_rate=a.lr,
        lr_scheduler_type="constant", warmup_steps=0, max_steps=a.steps, logging_steps=1, report_to="none",
        save_strategy="no", use_vllm=False, dataloader_num_workers=0, gradient_checkpointing=False,
        disable_dropout=True, max_grad_norm=1.0)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward], args=args, train_dataset=data)
    t1 = time.time()
    trainer.train()
    train_s = time.time() - t1
    model = trainer.model
    model.generation_config.eos_token_id = [EOS, END_OF_TURN]
    model.save_pretrained(os.path.join(a.out, "policy-rl"), safe_serialization=True)
    after = pol.evaluate(model, tok)
    print("after:", json.dumps({k: v for k, v in after.items() if k != "examples"}), flush=True)
    report = {"before": before, "after": after, "train_s": round(train_s, 1), "total_s": round(time.time() - t0, 1),
              "config": {k: v for k, v in vars(a).items() if k not in ("addr", "policy", "out")}, "grm_totals": grm.totals}
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
