"""TRL 1.16's own GRPOTrainer.train() on CPU, a tiny random policy, rewarded by a live GRM router
through grm_client.trl: GRMReward (blocking) on the standard format, AsyncGRMReward on the
conversational one (system prompt and an earlier exchange included), num_generations=4, two
groups per step, two steps each. Then GRMReward called directly with a group over the
router's --max-responses and a completion over the judge's context (None, counted, no crash).

    PYTHONPATH=clients/python .venv-trainers/bin/python tests/python/trl_check.py GRPC_ADDR

Asserts what holds whatever the router (each call: one stream, one request per group with
key and size 4, rewards in [0, 1] or None, TRL's logs carry rewards/<name>/mean and grm/*);
where the answers carry a GroupResult (a router with the group barrier) also that each group
was judged whole (size <= 4 distinct, not partial). Prints one JSON line.
"""
import contextlib
import json
import os
import sys
import tempfile
import time

# The trainers write to stdout (logs, progress, blank lines, some through the file descriptor):
# send all of it to stderr and keep the real stdout for the one JSON line.
if __name__ == "__main__":
    RESULT_OUT = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from grm_client.trl import AsyncGRMReward, GRMReward  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NUM_GENERATIONS = 4
STEPS = 2
from checks import CHECKS, WAITING, check  # noqa: E402


def build_tokenizer(out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["What is 2+2? The answer is 4, good.", "Name a colour: red, green, blue. bad", "Hello world! 0123456789"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus * 20, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out_dir)
    return PreTrainedTokenizerFast.from_pretrained(out_dir)


def build_model(tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def recording(cls):
    """The adapter, recording what each call sent and returned (the adapter's own `last`)."""

    class Recording(cls):
        calls = []

        def _finish(self, plan, results, kwargs):
            rewards = super()._finish(plan, results, kwargs)
            self.calls.append({"n": plan.n, "step": getattr(kwargs.get("trainer_state"), "global_step", None),
                               "kwargs": sorted(kwargs), **self.last})
            return rewards

    Recording.__name__ = cls.__name__
    return Recording


QUESTIONS = [("What is 2+2?", "4"), ("Name a colour.", "red"), ("Say hello.", "hello"), ("Count to 3.", "1 2 3")]


def dataset(fmt):
    if fmt == "standard":
        return Dataset.from_list([{"prompt": q, "answer": a} for q, a in QUESTIONS])
    return Dataset.from_list([{"prompt": [{"role": "system", "content": "Answer in one word."},
                                          {"role": "user", "content": "Hi."},
                                          {"role": "assistant", "content": "Hello."},
                                          {"role": "user", "content": q}], "answer": a} for q, a in QUESTIONS])


def train(fmt, addr, workdir):
    tok = build_tokenizer(os.path.join(workdir, "tok"))
    model = build_model(tok)
    cls = recording(GRMReward if fmt == "standard" else AsyncGRMReward)
    cls.calls = []
    reward = cls(addr, k=2, num_generations=NUM_GENERATIONS, max_new_tokens=32, timeout=120, group_wait_ms=20000,
                 name="grm" if fmt == "standard" else "grm_async", seed=1)
    args = GRPOConfig(output_dir=os.path.join(workdir, f"out-{fmt}"), use_cpu=True, bf16=False,
                      gradient_checkpointing=False, per_device_train_batch_size=2 * NUM_GENERATIONS,
                      num_generations=NUM_GENERATIONS, max_completion_length=8, max_steps=STEPS, learning_rate=1e-3,
                      logging_steps=1, report_to="none", save_strategy="no", use_vllm=False, seed=0,
                      dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward], args=args,
                          train_dataset=dataset(fmt))
    t0 = time.time()
    trainer.train()
    return trainer, reward, cls.calls, time.time() - t0


def summarize(fmt, trainer, reward, calls, wall):
    name = reward.__name__
    logs = [{k: v for k, v in h.items() if k.startswith(("rewards/", "grm/", "reward")) or k == "step"}
            for h in trainer.state.log_history]
    logs = [h for h in logs if len(h) > 1]
    check(f"{fmt}: trained {STEPS} steps", trainer.state.global_step == STEPS, trainer.state.global_step)
    check(f"{fmt}: one call per step", len(calls) == STEPS, len(calls))
    grouped = 0
    for c in calls:
        check(f"{fmt}: one reward per completion", len(c["rewards"]) == c["n"] == 2 * NUM_GENERATIONS)
        check(f"{fmt}: rewards in [0, 1] or None", all(r is None or 0 <= r <= 1 for r in c["rewards"]), c["rewards"])
        check(f"{fmt}: TRL passed trainer_state and log_metric", {"trainer_state", "log_metric"} <= set(c["kwargs"]))
        check(f"{fmt}: a request per group, keyed, size 4",
              len(c["requests"]) == 2 and all(q["group"] and q["group"]["size"] == NUM_GENERATIONS and q["n"] == 4
                                              for q in c["requests"])
              and len({q["group"]["key"] for q in c["requests"]}) == 2, c["requests"])
        check(f"{fmt}: no request failed", all("error" not in a for a in c["answers"]), c["answers"])
        for a in c["answers"]:
            g = a.get("group")
            if g is not None:
                grouped += 1
                check(f"{fmt}: group judged whole", 1 <= g["size"] <= NUM_GENERATIONS and g["responses"] == 4
                      and g["members"] == 1 and not g["partial"] and len(g["positions"]) == 4, g)
    if not grouped:
        WAITING.append(f"{fmt}: GroupResult in the answers (the router's group barrier)")
    check(f"{fmt}: TRL logged rewards/{name}/mean", all(f"rewards/{name}/mean" in h for h in logs), logs)
    check(f"{fmt}: TRL logged grm/* metrics", all({"grm/votes", "grm/unscored", "grm/errors", "grm/group_size"} <= set(h)
                                                  for h in logs), logs)
    return {"wall_s": round(wall, 2), "steps": trainer.state.global_step,
            "calls": [{"step": c["step"], "rewards": c["rewards"], "requests": c["requests"],
                       "answers": c["answers"], "metrics": c["metrics"]} for c in calls],
            "log_history": logs, "grouped_answers": grouped}


def limits(addr):
    """A group of 20 (over the router's default --max-responses, 16) and a completion over the
    tiny judge's 512-token context: None for what failed, counted, never an exception."""
    f = GRMReward(addr, k=2, num_generations=20, max_new_tokens=32, timeout=120, group_wait_ms=20000, seed=2)
    metrics = {}
    big = f(["Pick a number."] * 20, [f"{i} is good" if i % 2 else f"{i} is bad" for i in range(20)],
            log_metric=lambda n, v: metrics.__setitem__(n, v))
    check("limits: group of 20 answered", len(big) == 20 and all(r is None or 0 <= r <= 1 for r in big), big)
    check("limits: group of 20 in requests of <= 16", [q["n"] for q in f.last["requests"]] == [16, 4], f.last["requests"])
    big_answers = f.last["answers"]
    g = GRMReward(addr, k=2, num_generations=2, max_new_tokens=32, timeout=120, group_wait_ms=20000)
    long = g(["Tell a story."] * 2, ["once upon a time " * 200 + "good", "short bad"],
             log_metric=lambda n, v: metrics.__setitem__("long:" + n, v))
    check("limits: over-context completion gives None, counted", long[0] is None and g.totals["errors"] >= 1,
          (long, g.last["answers"]))
    return {"group20_rewards": big, "group20_answers": big_answers, "group20_metrics": f.last["metrics"],
            "overlong_rewards": long, "overlong_answers": g.last["answers"], "overlong_errors": g.totals["errors"]}


if __name__ == "__main__":
    addr = sys.argv[1]
    torch.set_num_threads(1)
    out = {}
    # TRL prints its logs on stdout: send them to stderr, keep stdout for the JSON line.
    with tempfile.TemporaryDirectory() as wd, contextlib.redirect_stdout(sys.stderr):
        for fmt in ("standard", "conversational"):
            trainer, reward, calls, wall = train(fmt, addr, wd)
            out[fmt] = summarize(fmt, trainer, reward, calls, wall)
        out["limits"] = limits(addr)
    out["checks"] = len(CHECKS)
    out["waiting_on_server"] = WAITING
    print(json.dumps(out, default=str), file=RESULT_OUT, flush=True)
