"""Stage 2 of the embedded GRM: rejective fine-tuning (SPCT's first stage) on the model's own
judgements. `grm spct rft` draws N_RFT judgements per labelled item from the stage-1 model
(served by grm itself), keeps the correct ones and drops items it already gets right every
time; hinted sampling (the prompt names the best response; the pair keeps the prompt without
the hint) adds judgements for the items it gets wrong. Items have 1, 2, 4 or 8 responses. The model is then
fine-tuned on those (prompt, completion) pairs, with some stage-1 data replayed."""
import argparse
import random
import sys

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
import domain  # noqa: E402
from common import grm, load_tokenizer, path, read_jsonl, write_jsonl  # noqa: E402
from sft import pair_examples, save, sft_examples, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--n-rft", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--max-steps", type=int, default=None, help="fine-tuning steps (cuts the plan and its schedule)")
    ap.add_argument("--replay", type=float, default=0.5, help="rule-made judgements replayed, per own judgement")
    ap.add_argument("--no-eight", action="store_true", help="items of 1, 2, 4 responses only (the first recipe)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sizes = domain.SIZES if a.no_eight else domain.SIZES_8
    items = domain.split(31, a.items, "rft", sizes=sizes)
    write_jsonl(path("data", "rft-items.jsonl"), [domain.request(it) for it in items])
    model_dir = path("grm-sft", "x")[:-2]
    common = ["--model", model_dir, "--temperature", a.temperature, "--max-new-tokens", a.max_new_tokens, "--concurrency", 64,
              "--kv-blocks", 20000, "--max-batch-tokens", 2048, "--threads", a.threads]
    r = grm("spct", "rft", "--input", path("data", "rft-items.jsonl"), "--output", path("data", "rft.jsonl"), "--n-rft", a.n_rft, *common)
    print("rft:", r.stderr.strip().splitlines()[-1], flush=True)
    r = grm("spct", "rft", "--hinted", "--input", path("data", "rft-items.jsonl"), "--output", path("data", "rft-hinted.jsonl"), *common)
    print("rft hinted:", r.stderr.strip().splitlines()[-1], flush=True)

    tok = load_tokenizer()
    examples = pair_examples(tok, read_jsonl(path("data", "rft.jsonl")) + read_jsonl(path("data", "rft-hinted.jsonl")))
    # Replay rule-made judgements so the format and the easy items are not forgotten.
    replay = sft_examples(tok, domain.split(41, max(500, int(len(examples) * a.replay)), "replay", sizes=sizes), seed=5)
    print(f"rft: {len(examples)} own correct judgements + {len(replay)} replayed", flush=True)
    from transformers import Gemma2ForCausalLM
    model = Gemma2ForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
    train(model, examples + replay, epochs=1, lr=3e-4, batch_tokens=4096, seed=7, label="rft", max_steps=a.max_steps)
    save(model, path("tokenizer", "tokenizer.json"), path("grm-rft", "x")[:-2])
    print("saved", path("grm-rft"), flush=True)


if __name__ == "__main__":
    main()
