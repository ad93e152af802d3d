"""Teaches a trained GRM new response counts without losing what RFT and RL gave it on the old
ones. Training the whole recipe from scratch on every n from 1 to 8 (run.sh) gave a model that
judges groups of 8 but is far worse on 2 and 4 responses (the same model size spread over more
formats, and fewer 2- and 4-response items); this stage starts from the shipped model instead:

  1. its own correct judgements of items with the counts it knows (1, 2, 4), drawn by
     `grm spct rft` (SPCT's rejective sampling; self-distillation, so RL's gains are replayed,
     not overwritten by rule-made text);
  2. rule-made judgements of items with the new counts (3, 5, 6, 7, 8), in the paper's format,
     each sample's own shuffled order, exactly as sft.py makes them;
  3. one epoch of fine-tuning on both, then `grm spct rft` on the new counts with the extended
     model and a second epoch on its own correct judgements of them (rejective fine-tuning for
     the new counts, as the recipe did for the old ones).

    python training/extend.py --grm DIR       # writes out/grm-ext (f32)

The first run of this recipe (models/README.md, "Groups of 8") judged groups of 8 but confused
4 responses with 3. `--four-repeat K` replays each of its own correct 4-response judgements K
times in both epochs, and `--three-weight` sets how often n = 3 is drawn among the new counts.
"""
import argparse
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import domain  # noqa: E402
from common import grm, path, read_jsonl, write_jsonl  # noqa: E402
from sft import pair_examples, save, sft_examples, train  # noqa: E402

OLD = domain.SIZES  # the counts the shipped GRM was trained on
NEW = ([3, 5, 6, 7, 8], [2, 1, 1, 1, 2])


def scored(pair):
    """How many responses a judgement scores: the numbers in its last \\boxed{...}."""
    box = pair["completion"].rsplit("\\boxed{", 1)
    return len(box[1].split("}", 1)[0].split(",")) if len(box) == 2 else 0


def own_correct(model_dir, items, name, n_rft, threads, tok, reuse=False, four_repeat=1):
    """(prompt + completion, labels) examples of the model's own correct judgements; those of 4
    responses `four_repeat` times. `reuse`: the pairs an earlier run drew for `name`, if any."""
    pairs_file = path("data", f"{name}.jsonl")
    reused = reuse and os.path.exists(pairs_file)
    if not reused:
        write_jsonl(path("data", f"{name}-items.jsonl"), [domain.request(it) for it in items])
        r = grm("spct", "rft", "--input", path("data", f"{name}-items.jsonl"), "--output", pairs_file,
                "--n-rft", n_rft, "--model", model_dir, "--temperature", 1.0, "--max-new-tokens", 128,
                "--concurrency", 64, "--kv-blocks", 20000, "--max-batch-tokens", 2048, "--threads", threads)
        print(f"{name}:", r.stderr.strip().splitlines()[-1], flush=True)
    pairs = read_jsonl(pairs_file)
    if reused:
        print(f"{name}: reusing {len(pairs)} pairs", flush=True)
    return pair_examples(tok, [p for p in pairs for _ in range(four_repeat if scored(p) == 4 else 1)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grm", required=True, help="the trained GRM to extend (a HuggingFace directory)")
    ap.add_argument("--old-items", type=int, default=1500, help="items of 1, 2, 4 responses for its own judgements")
    ap.add_argument("--new-items", type=int, default=3000, help="items of 3, 5, 6, 7, 8 responses, rule-made")
    ap.add_argument("--rft-items", type=int, default=1500, help="items of the new counts for rejective sampling")
    ap.add_argument("--n-rft", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--four-repeat", type=int, default=1, help="times each own 4-response judgement is replayed")
    ap.add_argument("--three-weight", type=int, default=NEW[1][0], help="weight of n = 3 among the new counts")
    ap.add_argument("--reuse-old", action="store_true", help="reuse the own judgements of 1, 2, 4 an earlier run drew")
    a = ap.parse_args()
    new_sizes = (NEW[0], [a.three_weight] + NEW[1][1:])
    torch.set_num_threads(a.threads)
    from transformers import Gemma2ForCausalLM

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.grm, "tokenizer.json"))  # the GRM's own, used by every step
    old = own_correct(a.grm, domain.split(71, a.old_items, "ext-old", sizes=OLD), "ext-old", a.n_rft, a.threads, tok,
                      reuse=a.reuse_old, four_repeat=a.four_repeat)
    new = sft_examples(tok, domain.split(72, a.new_items, "ext-new", sizes=new_sizes), seed=8)
    print(f"extend: {len(old)} own correct judgements (n = 1, 2, 4) + {len(new)} rule-made (n = 3, 5-8)", flush=True)
    model = Gemma2ForCausalLM.from_pretrained(a.grm, attn_implementation="eager", dtype=torch.float32)
    train(model, old + new, epochs=1, lr=a.lr, batch_tokens=4096, seed=9, label="extend")
    save(model, os.path.join(a.grm, "tokenizer.json"), path("grm-ext-sft", "x")[:-2])

    rft = own_correct(path("grm-ext-sft", "x")[:-2], domain.split(73, a.rft_items, "ext-rft", sizes=new_sizes),
                      "ext-rft", a.n_rft, a.threads, tok)
    random.Random(10).shuffle(old)
    keep = old[: len(rft)]
    print(f"extend rft: {len(rft)} own correct judgements (n = 3, 5-8) + {len(keep)} (n = 1, 2, 4)", flush=True)
    train(model, rft + keep, epochs=1, lr=a.lr / 2, batch_tokens=4096, seed=11, label="extend-rft")
    save(model, os.path.join(a.grm, "tokenizer.json"), path("grm-ext", "x")[:-2])
    print("saved", path("grm-ext"), flush=True)


if __name__ == "__main__":
    main()
