"""The checking judge: the shipped GRM fine-tuned on arith.py, the domain where only the
arithmetic tells right from wrong, with judgements that work the result out column by column and
check each response's final answer against it (models/README.md, "A judge that checks").

Items of the first domain (domain.py) are mixed in, so that today's splits do not fall. Steps,
so that the GPU machine needs only torch and transformers:

    python training/checked.py data --items 60000 --old-items 20000 --out D.npz   # needs the grm binary
    python training/checked.py train --data D.npz --init models/grm --out W.safetensors --state S.pt
    python training/bigsft.py finish --weights W.safetensors --like models/grm --out MODEL_DIR

`train` runs sft.py's loop; with `--piece-seconds` it stops after so long, keeping its whole
state in `--state`, and exits 75; run it again with the same arguments to go on (a CPU runs
the plan in pieces of under two hours; a GPU in one). The same data and seed give the same
plan in pieces or in one go. `snapshot` writes the state in bf16 for committing, so that a
piece on a fresh checkout goes on from there (checked.sh).
"""
import argparse
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import arith  # noqa: E402
import bigsft  # noqa: E402
from common import BOS, computed_digits, digit_ids  # noqa: E402
import domain  # noqa: E402

# Unfinished: run again to go on (EX_TEMPFAIL).
MORE = 75


def build(a):
    from tokenizers import Tokenizer

    from sft import sft_examples
    tok = Tokenizer.from_file(a.tokenizer)
    examples = []
    for start in range(0, a.items, 10000):
        items = arith.split(a.seed + start, min(10000, a.items - start), f"checked{start}", any_right=True)
        examples += sft_examples(tok, items, seed=a.seed + start + 1, dom=arith)
        print(f"data: {len(examples)} checked", flush=True)
    for start in range(0, a.old_items, 10000):
        items = domain.split(a.seed + 7_000_000 + start, min(10000, a.old_items - start), f"old{start}",
                             sizes=domain.SIZES_8)
        examples += sft_examples(tok, items, seed=a.seed + 7_000_001 + start)
        print(f"data: {len(examples)} with the first domain's", flush=True)
    # Drills come last, so that the items before them stay where digit_accuracy.py looks. The
    # loss is on the working only (the opening is the prompt): one tokenization of the whole
    # text, cut where the working starts, so the tokens are the judgements' own.
    rng = random.Random(a.seed + 9_000_000)
    for _ in range(a.drills):
        head, work = arith.drill(rng)
        enc = tok.encode(head + work, add_special_tokens=False)
        cut = next(t for t, (start, _) in enumerate(enc.offsets) if start >= len(head))
        examples.append(([BOS] + enc.ids, [-100] * (1 + cut) + enc.ids[cut:]))
    print(f"data: {len(examples)} with {a.drills} column-working drills", flush=True)
    # The GRM's context is 1,024 positions (max_position_embeddings): a longer row teaches
    # positions the servers never reach (44 of the second stage's 48,000 items, all of 8
    # responses, were longer).
    kept = [e for e in examples if len(e[0]) <= a.max_len]
    print(f"data: {len(examples) - len(kept)} rows over {a.max_len} tokens left out", flush=True)
    bigsft.store(kept, a.out)


def fact_weights(examples, tokenizer, weight, copy_weight=1.0):
    """A loss weight per token: `weight` on the computed digits (a run of digits right after
    "=": column facts and results), `copy_weight` on the judgement's other digits (operands,
    each response's answer and working, the result it is checked against), 1 elsewhere. At step
    ~400 the column facts were 60% right, teacher-forced, against 94-99% for the other digits
    of the criteria (digit_accuracy.py): a few tokens among ~300 a judgement, their gradient
    was lost in the rest. At step ~1000 the facts were 88-97% right, but a response's answer,
    copied into the analysis, only 72%: a check fails on either."""
    import numpy as np
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer)
    ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _ in examples])
    judged = np.concatenate([np.asarray(labels, dtype=np.int64) for _, labels in examples]) != -100
    computed = computed_digits(tok, ids)
    copied = np.isin(ids, digit_ids(tok)) & judged & ~computed
    w = np.where(computed, np.float32(weight), np.where(copied, np.float32(copy_weight), np.float32(1.0)))
    print(f"train: {int(computed.sum())} computed digits weighted {weight}, "
          f"{int(copied.sum())} copied digits weighted {copy_weight}", flush=True)
    return np.split(w, np.cumsum([len(ids) for ids, _ in examples])[:-1])


def train(a):
    from transformers import Gemma2ForCausalLM

    import sft
    dev = torch.device(a.device)
    examples = bigsft.load(a.data)
    weights = (fact_weights(examples, a.tokenizer, a.fact_weight, a.copy_weight)
               if (a.fact_weight, a.copy_weight) != (1, 1) else None)
    model = Gemma2ForCausalLM.from_pretrained(a.init, attn_implementation="eager", dtype=torch.float32).to(dev)
    print(f"train: {len(examples)} examples, {sum(len(e[0]) for e in examples)} tokens", flush=True)
    done = sft.train(model, examples, a.epochs, a.lr, a.batch_tokens, a.seed, "checked", time_budget=a.piece_seconds,
                     max_steps=a.max_steps, device=dev, fit_seconds=a.fit_seconds,
                     checkpoint=lambda m: bigsft.save(m, a, a.out),
                     checkpoint_every=a.save_every, resume=a.state, weights=weights)
    bigsft.save(model, a, a.out)
    if done is None:
        print(f"piece done: run the same command again to go on from {a.state}", flush=True)
        sys.exit(MORE)


def weights(a):
    """The weights of a training state (a snapshot) as a model's safetensors file: each stage
    starts from the committed state of the one before (checked.sh)."""
    state = torch.load(a.state, map_location="cpu", weights_only=False)
    bigsft.save_weights(state["model"], a.out)
    print(f"weights of step {state['step']} in {a.out}", flush=True)


def snapshot(a):
    """The whole state of `--state` with every float tensor in bf16 (about 32 MB against 64 MB),
    to commit: a session's disk does not outlive it, and the next piece, on a fresh checkout,
    starts from this file (checked.sh copies it to the state's place). sft.train's resume reads
    it as it is: load_state_dict casts the weights, and the optimizer's moments, back to f32.
    The rounding makes a resumed run differ slightly from one that never stopped."""
    state = torch.load(a.state, map_location="cpu", weights_only=False)

    def small(x):
        if isinstance(x, torch.Tensor):
            return x.to(torch.bfloat16) if x.is_floating_point() and x.dim() > 0 else x
        if isinstance(x, dict):
            return {k: small(v) for k, v in x.items()}
        if isinstance(x, list):
            return [small(v) for v in x]
        return x

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    torch.save(small(state), a.out + ".tmp")
    os.replace(a.out + ".tmp", a.out)
    print(f"snapshot of step {state['step']} in {a.out} ({os.path.getsize(a.out) >> 20} MiB)", flush=True)


def pairs(a):
    """New pairs from arith.py's own generator, in `grm eval`'s form with each response's final
    answer (`finals`, for judged_parts.py): how the judge does on the training distribution,
    beside the held-out split's figure. The README's are seed 424242, 60 pairs."""
    from common import write_jsonl
    rows = arith.split(a.seed, a.n, a.prefix, sizes=([2], [1]))
    write_jsonl(a.out, [{"id": it["id"], "query": it["query"], "responses": it["responses"],
                         "best": it["label"]["best"], "finals": it["finals"]} for it in rows])


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--items", type=int, default=60000)
    d.add_argument("--old-items", type=int, default=20000)
    d.add_argument("--drills", type=int, default=100000, help="rows of column working alone (arith.drill)")
    d.add_argument("--max-len", type=int, default=1024, help="rows longer than the context are left out")
    d.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True, nargs="+")
    t.add_argument("--init", required=True, help="a trained GRM directory (the shipped one)")
    t.add_argument("--out", required=True)
    t.add_argument("--state", required=True, help="the whole training state, kept between pieces")
    t.add_argument("--device", default="cpu")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-tokens", type=int, default=32768)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--piece-seconds", type=float, default=None, help="stop after so long; run again to go on")
    t.add_argument("--save-every", type=float, default=600)
    t.add_argument("--fact-weight", type=float, default=5.0, help="loss weight of computed digits (fact_weights)")
    t.add_argument("--copy-weight", type=float, default=5.0, help="loss weight of a judgement's other digits (fact_weights)")
    t.add_argument("--fit-seconds", type=float, default=None, help="cut the plan to what this machine trains in so long")
    s = sub.add_parser("snapshot")
    s.add_argument("--state", required=True)
    s.add_argument("--out", required=True)
    w = sub.add_parser("weights")
    w.add_argument("--state", required=True)
    w.add_argument("--out", required=True, help="a model.safetensors")
    pr = sub.add_parser("pairs")
    pr.add_argument("--n", type=int, default=60)
    pr.add_argument("--prefix", default="indist")
    pr.add_argument("--out", required=True)
    for p in (d, t, s, w, pr):
        p.add_argument("--seed", type=int, default=32)
        p.add_argument("--tokenizer", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                            "models", "grm", "tokenizer.json"))
        p.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    {"data": build, "train": train, "snapshot": snapshot, "weights": weights, "pairs": pairs}[a.cmd](a)


if __name__ == "__main__":
    main()
