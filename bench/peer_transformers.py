#!/usr/bin/env python3
"""The GRM workload through HF transformers, for `grm bench engine --peer transformers`.

One prompt of P tokens, k sampled continuations of exactly G tokens (num_return_sequences=k,
which expands the prompt k times, as transformers does), on the same model directory and the
same number of threads, for each k of --samples (the model loaded once). Prints one JSON
object, a run per k and mode.

Modes (--modes): `eager` (dynamic KV cache, eager attention: transformers as most people run
it) and `compiled`, the fastest transformers gets for Gemma-2: a static KV cache and
transformers' own compiled decoding (`generate` with `CompileConfig(fullgraph=True,
mode="reduce-overhead")`: the one-token step compiled, CUDA graphs on a GPU), with the first
attention of `flex_attention` (which applies Gemma-2's logit soft-cap), `sdpa` (which does not),
`eager` that compiles; the one used, and whether it applies the soft-cap, are in the run.
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
    ap.add_argument("--modes", default="eager", help="eager, compiled, or both: eager,compiled")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    runs = []
    for mode in a.modes.split(","):
        runs += measure(a, dtype, mode)
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


def compile_config(a):
    """transformers' own compiled decoding: `generate` with a static cache compiles the
    one-token forward (CUDA graphs with "reduce-overhead"); the prefill runs uncompiled."""
    from transformers import CompileConfig
    cfg = CompileConfig(fullgraph=True, mode="reduce-overhead" if a.device != "cpu" else "default")
    if a.device == "cpu":
        cfg._compile_all_devices = True  # transformers compiles on GPUs only unless told
    return cfg


def load(a, dtype, mode):
    """The model for a mode: (model, attention used, generate's extra arguments, settings)."""
    if mode == "eager":
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="eager")
        return model.to(a.device).eval(), "eager", {}, {}
    if mode != "compiled":
        raise SystemExit(f"--modes: {mode!r} is not known (eager, compiled)")
    errors = {}
    for attn in ("flex_attention", "sdpa", "eager"):
        try:
            model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation=attn)
            model = model.to(a.device).eval()
            extra = {"cache_implementation": "static", "compile_config": compile_config(a)}
            # Compiled at the first calls: tried here, so that a failing attention falls through.
            with torch.no_grad():
                model.generate(torch.tensor([[2, 7, 8, 9]], device=a.device), max_new_tokens=3, do_sample=False,
                               pad_token_id=0, **extra)
            c = extra["compile_config"]
            settings = {"torch_compile_mode": c.mode, "fullgraph": c.fullgraph, "cache_implementation": "static",
                        "softcap_applied": attn != "sdpa", "attention_errors": errors}
            return model, attn, extra, settings
        except Exception as e:  # noqa: BLE001 (the next attention is tried; the reason is recorded)
            errors[attn] = f"{type(e).__name__}: {str(e)[:300]}"
            torch._dynamo.reset()
    raise SystemExit(f"no attention compiled: {errors}")


def measure(a, dtype, mode):
    model, attn, extra, settings = load(a, dtype, mode)
    vocab = model.config.vocab_size
    # The same prompt as grm bench engine: BOS, then a spread of ordinary ids.
    ids = [2] + [6 + (i * 7919 + 7 * 104729) % (vocab - 6) for i in range(1, a.prompt_tokens)]
    x = torch.tensor([ids], device=a.device)
    runs = []
    for k in [int(s) for s in a.samples.split(",")]:
        kw = dict(do_sample=a.temperature > 0, temperature=a.temperature if a.temperature > 0 else None,
                  top_p=1.0, top_k=0, num_return_sequences=k, max_new_tokens=a.gen_tokens,
                  min_new_tokens=a.gen_tokens, pad_token_id=0)
        kw.update(extra)
        with torch.no_grad():
            # Warm-up: a compiled model is compiled (and its graphs captured) for this batch
            # and cache size here, so the full length is run once.
            model.generate(x, **(kw if mode == "compiled" else dict(kw, max_new_tokens=2, min_new_tokens=2)))
            if a.device != "cpu":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            out = model.generate(x, **kw)
            if a.device != "cpu":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t
        generated = (out.shape[1] - len(ids)) * out.shape[0]
        run = {"samples": k, "mode": mode, "compiled": mode == "compiled", "attention": attn, **settings,
               "seconds_to_all_samples": secs, "generated_tokens_per_s": generated / secs}
        if a.device != "cpu":
            run["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        runs.append(run)
    del model
    if a.device != "cpu":
        torch.cuda.empty_cache()
    return runs


if __name__ == "__main__":
    main()
