"""Stages 0 and 1 of the embedded GRM: pretraining on the domain's text (the stand-in for a
pretrained base model: arithmetic facts, questions, responses), then supervised fine-tuning
on rule-made judgements in the paper's format (the prompt is exactly what grm renders, each
item shown in a seeded order of its responses). Loss on the judgement tokens only."""
import argparse
import math
import os
import random
import sys
import time

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
import domain  # noqa: E402
from common import EOS, END_OF_TURN, MODEL, PAD, encode, load_tokenizer, path, render_prompts, write_jsonl  # noqa: E402


def new_model(vocab):
    from transformers import Gemma2Config, Gemma2ForCausalLM
    cfg = Gemma2Config(**dict(MODEL, vocab_size=vocab), attn_implementation="eager")
    return Gemma2ForCausalLM(cfg)


def pack(examples, order, limit):
    """`order`'s examples, in order, cut into runs whose padded size (rows x longest) stays
    within `limit` tokens."""
    out, cur, longest = [], [], 0
    for i in order:
        longest = max(longest, len(examples[i][0]))
        if cur and longest * (len(cur) + 1) > limit:
            out.append(cur)
            cur, longest = [], len(examples[i][0])
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def batches(examples, batch_tokens, rng):
    """Groups (ids, labels) examples of similar length into batches of about batch_tokens."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]) + rng.random())
    out = pack(examples, order, batch_tokens)
    rng.shuffle(out)
    return out


def collate(examples, idx):
    L = max(len(examples[i][0]) for i in idx)
    x = torch.full((len(idx), L), PAD)
    y = torch.full((len(idx), L), -100)
    m = torch.zeros((len(idx), L), dtype=torch.long)
    for r, i in enumerate(idx):
        ids, labels = examples[i]
        x[r, : len(ids)] = torch.tensor(ids)
        y[r, : len(labels)] = torch.tensor(labels)
        m[r, : len(ids)] = 1
    return x, y, m


def mixed_precision(dev):
    """Whether to train in bf16 autocast (f32 master weights): on a GPU, and on a CPU with native
    bf16 products (AVX-512 BF16), where a step of the checking judge's plan took 7-15 s against
    22-30 s in f32 on the development VM; a CPU without them (Zen 3) would emulate bf16 and be
    slower, so it stays in f32. GRM_TRAIN_AMP=0 or 1 overrides."""
    forced = os.environ.get("GRM_TRAIN_AMP")
    if forced in ("0", "1"):
        return forced == "1"
    if dev.type == "cuda":
        return True
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return dev.type == "cpu" and native is not None and bool(native())


def micro_batches(examples, idx, micro_tokens):
    """A batch's examples in pieces whose padded size stays within micro_tokens; the whole
    batch when micro_tokens is None."""
    if not micro_tokens:
        return [idx]
    return pack(examples, sorted(idx, key=lambda i: len(examples[i][0])), micro_tokens)


def token_weights(examples, idx, weights):
    """The loss weights of `idx`'s examples (one float array per example), padded like
    collate's labels."""
    w = torch.ones((len(idx), max(len(examples[i][0]) for i in idx)))
    for r, i in enumerate(idx):
        w[r, : len(weights[i])] = torch.as_tensor(weights[i], dtype=torch.float32)
    return w


def weighted_loss(logits, labels, w, count):
    """Σ weight × cross-entropy over the labelled tokens, over `count` (the batch's labelled
    tokens, unweighted): with every weight 1, what the model's own mean loss gives once scaled
    by its share of the batch. Logits are the model's (soft-capped); the loss is taken in f32."""
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                           labels[:, 1:].reshape(-1), ignore_index=-100, reduction="none")
    return (ce * w[:, 1:].reshape(-1)).sum() / count


def train(model, examples, epochs, lr, batch_tokens, seed, label, time_budget=None, max_steps=None, device=None,
          fit_seconds=None, checkpoint=None, checkpoint_every=None, resume=None, micro_tokens=8192, weights=None):
    """AdamW with warm-up and a cosine decay over the plan (`max_steps` cuts the plan, and the
    schedule with it, so a run is the same on any machine; `time_budget`, seconds, only stops
    it early as a safety net). On a CUDA `device` (and a CPU with bf16 products: see
    `mixed_precision`) the model runs under bf16 autocast; on a GPU the
    loss is read only when printed (each read waits for the GPU); `fit_seconds` cuts the plan
    to what the machine trains in that time, measured over steps 10 to 50, and prints the
    `max_steps` that reproduces it; `checkpoint(model)` is called every `checkpoint_every`
    seconds. `resume`: a file for the whole state (weights, optimizer, schedule, step), read
    at the start when it exists and written with every checkpoint and when `time_budget` ends
    the run, so a long plan runs in pieces on the same data and seed; returns None from a
    piece that stopped before the plan's end. On a CPU a batch runs in pieces of at most
    `micro_tokens` padded tokens, their gradients summed, to bound the memory. `weights`: a
    loss weight per token of each example (None: all 1)."""
    torch.manual_seed(seed)
    dev = torch.device(device or "cpu")
    cuda = dev.type == "cuda"
    amp = mixed_precision(dev)
    plan = [b for e in range(epochs) for b in batches(examples, batch_tokens, random.Random(seed + e))]
    if max_steps:
        plan = plan[:max_steps]
    total = [len(plan)]  # the schedule's length, which fit_seconds may cut
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total[0] // 20))
                                              * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total[0]))))
    model.train()
    print(f"{label}: {'bf16 autocast' if amp else 'f32'} on {dev}", flush=True)
    t0 = saved = time.time()
    ema = None
    first = 0
    if resume and os.path.exists(resume):
        state = torch.load(resume, map_location=dev)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        first, ema = state["step"], state["ema"]
        print(f"{label}: resumed at step {first}/{total[0]}", flush=True)

    def keep(step):
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "step": step, "ema": ema}, resume + ".tmp")
        os.replace(resume + ".tmp", resume)

    for step, idx in enumerate(plan):
        if step >= total[0]:
            break
        if step < first:
            continue
        if fit_seconds and step in (10, 50):
            if cuda:
                torch.cuda.synchronize()
            if step == 10:
                t10 = time.time()
            else:
                fit = 50 + int((fit_seconds - (time.time() - t0)) / ((time.time() - t10) / 40))
                if fit < total[0]:
                    total[0] = fit
                    print(f"{label}: plan cut to {fit} steps to fit {fit_seconds:.0f} s (max_steps {fit} reproduces it)", flush=True)
        opt.zero_grad()
        # The step's gradient is that of the whole batch's mean loss, summed over pieces of at
        # most micro_tokens (eager attention keeps rows x heads x length^2 scores per layer
        # for the backward pass: a whole 32k-token batch of long rows took over 15 GB on CPU).
        parts = micro_batches(examples, idx, micro_tokens if not cuda else None)
        counts = [sum(sum(1 for v in examples[i][1][1:] if v != -100) for i in part) for part in parts]
        total_count = max(1, sum(counts))
        loss = torch.zeros((), device=dev)
        for part, count in zip(parts, counts):
            if count == 0:
                continue
            x, y, m = (t.to(dev) for t in collate(examples, part))
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                if weights is None:
                    part_loss = model(input_ids=x, attention_mask=m, labels=y).loss * (count / total_count)
                else:
                    logits = model(input_ids=x, attention_mask=m).logits
                    part_loss = weighted_loss(logits, y, token_weights(examples, part, weights).to(dev), total_count)
            part_loss.backward()
            loss += part_loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        shown = step % 50 == 0 or step == total[0] - 1
        if not cuda or shown:
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if shown:
            print(f"{label} step {step}/{total[0]} loss {ema:.4f} ({time.time() - t0:.0f} s)", flush=True)
        if checkpoint and time.time() - saved > checkpoint_every:
            checkpoint(model)
            if resume:
                keep(step + 1)
            saved = time.time()
        if time_budget and time.time() - t0 > time_budget:
            print(f"{label}: time budget reached at step {step}", flush=True)
            if resume and step + 1 < total[0]:
                keep(step + 1)
                model.eval()
                return None
            break
    model.eval()
    return model


def pretrain_examples(tok, n, seed):
    rng = random.Random(seed)
    out = []
    for it in domain.split(seed, n, "pre"):
        a, b, c, op = it["a"], it["b"], it["answer"], it["op"]
        text = f"{it['query']} {a} {op} {b} = {c}. " + " ".join(it["responses"])
        ids = [2] + encode(tok, text) + [EOS]
        out.append((ids, ids[:]))
    # Every fact of the domain, several times, in random order.
    facts = []
    for op, rng_a, rng_b in [("+", range(2, 21), range(2, 21)), ("-", range(2, 26), range(1, 25)), ("×", range(2, 13), range(2, 10))]:
        for a in rng_a:
            for b in rng_b:
                if op == "-" and b >= a:
                    continue
                facts.append(f"{a} {op} {b} = {domain.OPS[op](a, b)}.")
    for _ in range(3):
        rng.shuffle(facts)
        for j in range(0, len(facts), 8):
            ids = [2] + encode(tok, " ".join(facts[j:j + 8])) + [EOS]
            out.append((ids, ids[:]))
    return out


def sft_examples(tok, items, seed, samples_per_item=1, dom=domain):
    """(ids, labels) of rule-made judgements of `items` of domain module `dom` (domain.py or
    arith.py), each in its own shuffled order rendered by grm: loss on the judgement only."""
    rng = random.Random(seed)
    reqs = [dom.request(it, k=samples_per_item, seed=rng.randrange(1 << 40)) for it in items]
    prompts = render_prompts(reqs)
    by_id = {it["id"]: it for it in items}
    out = []
    for p in prompts:
        it = by_id[p["id"]]
        pi = encode(tok, p["prompt"])
        ji = encode(tok, dom.judgement(it, p["order"], rng)) + [END_OF_TURN]
        out.append((pi + ji, [-100] * len(pi) + ji))
    return out


def pair_examples(tok, pairs):
    """(ids, labels) of `grm spct rft` (prompt, completion) pairs: loss on the completion only."""
    out = []
    for p in pairs:
        pi = encode(tok, p["prompt"])
        ci = encode(tok, p["completion"].removesuffix("<end_of_turn>")) + [END_OF_TURN]
        out.append((pi + ci, [-100] * len(pi) + ci))
    return out


def save(model, tok_path, out_dir, dtype=torch.float32):
    import shutil
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
    shutil.copy(tok_path, f"{out_dir}/tokenizer.json")
    model.to(torch.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-items", type=int, default=6000)
    ap.add_argument("--pretrain-items", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds for stage 1 (a safety net)")
    ap.add_argument("--max-steps", type=int, default=None, help="SFT steps (cuts the plan and its schedule)")
    ap.add_argument("--no-eight", action="store_true", help="items of 1, 2, 4 responses only (the first recipe)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = load_tokenizer()
    model = new_model(tok.get_vocab_size())
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    pre = pretrain_examples(tok, a.pretrain_items, seed=11)
    train(model, pre, epochs=a.pretrain_epochs, lr=2e-3, batch_tokens=4096, seed=1, label="pretrain")
    save(model, path("tokenizer", "tokenizer.json"), path("base", "x")[:-2])
    items = domain.split(21, a.train_items, "train", sizes=domain.SIZES if a.no_eight else domain.SIZES_8)
    write_jsonl(path("data", "train.jsonl"), items)
    sft = sft_examples(tok, items, seed=2)
    train(model, sft, epochs=a.epochs, lr=1.5e-3, batch_tokens=2048, seed=3, label="sft", time_budget=a.time_budget,
          max_steps=a.max_steps)
    save(model, path("tokenizer", "tokenizer.json"), path("grm-sft", "x")[:-2])
    print("saved", path("grm-sft"), flush=True)


if __name__ == "__main__":
    main()
