"""A large-budget fine-tuning of the GRM on every response count from 1 to 8: the same model,
the same rule-made judgements as sft.py and its own correct judgements as extend.py, but on
tens of thousands of fresh items instead of a few thousand, which a GPU trains in minutes.
The four CPU-budget attempts (models/README.md, "Groups of 8") learned groups of 8 only
partly and lost ground on groups of 4; at this budget (396 s on one H200) the same model judges
every count from 1 to 8 better than any of them: the budget was the limit. The shipped GRM is
this stage's output (training/big_shipped.sh).

Two steps, so the GPU machine needs only torch and transformers:

    python training/bigsft.py data --items 60000 --out A.npz          # needs the grm binary
    python training/bigsft.py train --data A.npz B.npz --init DIR --out W.safetensors --device cuda
    python training/bigsft.py finish --weights W.safetensors --like DIR --out MODEL_DIR

`data` renders every prompt with `grm judge prompt` (what the servers send), makes the rule's
judgement in each sample's shuffled order, adds the own correct judgements `grm spct rft` drew
(`--pairs`, replayed `--pair-repeat` times) and stores the token ids, compressed. `train` runs
sft.py's loop (AdamW, warm-up, cosine) on them from `--init` (a trained GRM), or from a freshly
pretrained model (`--init scratch`), saving its bf16 weights every `--save-every` seconds and
at the end (`finish` makes a model directory of them); `--max-steps` cuts the plan, so a run is the
same on any machine, and `--fit-seconds` cuts it to what the machine trains in that time,
printing the `--max-steps` that reproduces it.
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import domain  # noqa: E402

# Every count, the old ones (the held-out best-of-n split is n = 2 and 4) and 8 weighted up.
SIZES = ([1, 2, 3, 4, 5, 6, 7, 8], [2, 4, 1, 3, 1, 1, 1, 3])


def build(a):
    from tokenizers import Tokenizer

    from sft import pair_examples, sft_examples
    tok = Tokenizer.from_file(a.tokenizer)
    examples = []
    for start in range(0, a.items, 10000):
        items = domain.split(a.seed + start, min(10000, a.items - start), f"big{start}", sizes=SIZES)
        examples += sft_examples(tok, items, seed=a.seed + start + 1)
        print(f"data: {len(examples)} rule-made", flush=True)
    own = []
    for p in a.pairs:
        with (gzip.open if p.endswith(".gz") else open)(p, "rt") as f:
            own += pair_examples(tok, [json.loads(line) for line in f if line.strip()])
    examples += own * a.pair_repeat
    print(f"data: {len(examples)} examples ({len(own)} own judgements x {a.pair_repeat})", flush=True)
    store(examples, a.out)


def store(examples, out):
    """(ids, labels) examples as one compressed file of token ids (`load` reads it)."""
    lens = np.array([len(ids) for ids, _ in examples], dtype=np.int32)
    prompt = np.array([sum(1 for x in labels if x == -100) for _, labels in examples], dtype=np.int32)
    flat = np.concatenate([np.array(ids, dtype=np.uint16) for ids, _ in examples])
    np.savez_compressed(out, tokens=flat, lens=lens, prompt=prompt)
    print(f"data: {flat.size} tokens -> {out} ({os.path.getsize(out) / 1e6:.1f} MB)", flush=True)


def load(paths):
    out = []
    for path in paths:
        d = np.load(path)
        flat, lens, prompt = d["tokens"].astype(np.int64), d["lens"], d["prompt"]
        at = 0
        for n, p in zip(lens, prompt):
            ids = flat[at:at + n].tolist()
            out.append((ids, [-100] * p + ids[p:]))
            at += n
    return out


def train(a):
    from transformers import Gemma2ForCausalLM

    import sft
    dev = torch.device(a.device)
    examples = load(a.data)
    if a.init == "scratch":
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(a.tokenizer)
        model = sft.new_model(tok.get_vocab_size()).to(dev)
        sft.train(model, sft.pretrain_examples(tok, a.pretrain_items, seed=11), a.pretrain_epochs, 2e-3, a.batch_tokens,
                  a.seed, "pretrain", device=dev)
    else:
        model = Gemma2ForCausalLM.from_pretrained(a.init, attn_implementation="eager", dtype=torch.float32).to(dev)
    print(f"train: {len(examples)} examples, {sum(len(e[0]) for e in examples)} tokens", flush=True)
    sft.train(model, examples, a.epochs, a.lr, a.batch_tokens, a.seed, "big", time_budget=a.time_budget,
              max_steps=a.max_steps, device=dev, fit_seconds=a.fit_seconds, checkpoint=lambda m: save(m, a, a.out),
              checkpoint_every=a.save_every)
    save(model, a, a.out)


def save(model, a, out):
    """The weights alone, bf16, as one safetensors file (the GPU machine sends few files back;
    `finish` makes a model directory of it)."""
    save_weights(model.state_dict(), out)
    print(f"saved {out}", flush=True)


def save_weights(state, out):
    """A state dict as one bf16 safetensors file, written whole or not at all; the tied head is
    the embedding, so it is left out."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in state.items() if k != "lm_head.weight"}
    save_file(tensors, out + ".tmp", metadata={"format": "pt"})
    os.replace(out + ".tmp", out)


def finish(a):
    """A model directory from a weights file: the shipped GRM's config and tokenizer beside it."""
    import shutil
    os.makedirs(a.out, exist_ok=True)
    shutil.copy(a.weights, os.path.join(a.out, "model.safetensors"))
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(a.like, f), os.path.join(a.out, f))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--items", type=int, default=120000)
    d.add_argument("--pairs", nargs="*", default=[], help="`grm spct rft` pair files of the model's own correct judgements")
    d.add_argument("--pair-repeat", type=int, default=4)
    d.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True, nargs="+", help="files of `data` (built in parts with other seeds, in parallel)")
    t.add_argument("--init", required=True, help="a trained GRM directory, or 'scratch'")
    t.add_argument("--out", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--pretrain-epochs", type=int, default=4)
    t.add_argument("--pretrain-items", type=int, default=4000)
    t.add_argument("--batch-tokens", type=int, default=32768)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--time-budget", type=float, default=None, help="seconds (a safety net)")
    t.add_argument("--save-every", type=float, default=120)
    t.add_argument("--fit-seconds", type=float, default=None, help="cut the plan to what this machine trains in so long")
    f = sub.add_parser("finish")
    f.add_argument("--weights", required=True)
    f.add_argument("--like", required=True, help="a GRM directory whose config and tokenizer to copy")
    f.add_argument("--out", required=True)
    for p in (d, t, f):
        p.add_argument("--seed", type=int, default=101)
        p.add_argument("--tokenizer", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "grm", "tokenizer.json"))
        p.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    {"data": build, "train": train, "finish": finish}[a.cmd](a)


if __name__ == "__main__":
    main()
