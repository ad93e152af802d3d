#!/usr/bin/env python3
"""The GRM workload through HF transformers, for `grm bench engine --peer transformers`.

One prompt of P tokens, k sampled continuations of exactly G tokens (num_return_sequences=k,
which expands the prompt k times, as transformers does), on the same model directory and the
same number of threads, for each k of --samples (the model loaded once). Prints one JSON
object, a run per k.
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--samples", default="8", help="k, or several: 8,32")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="compute dtype (CPUs without bf16 units want float32)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="eager").to(a.device).eval()
    vocab = model.config.vocab_size
    # The same prompt as grm bench engine: BOS, then a spread of ordinary ids.
    ids = [2] + [6 + (i * 7919 + 7 * 104729) % (vocab - 6) for i in range(1, a.prompt_tokens)]
    x = torch.tensor([ids], device=a.device)
    runs = []
    for k in [int(s) for s in a.samples.split(",")]:
        kw = dict(do_sample=a.temperature > 0, temperature=a.temperature if a.temperature > 0 else None,
                  top_p=1.0, top_k=0, num_return_sequences=k, max_new_tokens=a.gen_tokens,
                  min_new_tokens=a.gen_tokens, pad_token_id=0)
        with torch.no_grad():
            model.generate(x, **dict(kw, max_new_tokens=2, min_new_tokens=2))  # warm-up
            if a.device != "cpu":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            out = model.generate(x, **kw)
            if a.device != "cpu":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t
        generated = (out.shape[1] - len(ids)) * out.shape[0]
        run = {"samples": k, "seconds_to_all_samples": secs, "generated_tokens_per_s": generated / secs}
        if a.device != "cpu":
            run["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        runs.append(run)
    print(json.dumps({
        "peer": "transformers",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "dtype": a.dtype,
        "threads": a.threads,
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "runs": runs,
    }))


if __name__ == "__main__":
    main()
