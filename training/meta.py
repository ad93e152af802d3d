"""The embedded meta RM: the GRM's backbone with a scalar head (Gemma2ForSequenceClassification),
trained with binary cross-entropy on the GRM's own sampled judgements labelled by the SPCT
rule (`grm spct meta-data`), each read in the template's meta form."""
import argparse
import json
import random
import sys
import zlib

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
import domain  # noqa: E402
from common import (JUDGEMENT_TOKENS, PAD, encode, grm, load_tokenizer, path, read_jsonl,  # noqa: E402
                    render_prompts, write_jsonl)
from judgement_ceiling import aucs, fmt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--grm", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help=f"{JUDGEMENT_TOKENS} for the first domain, 512 (the servers' default) for arith, whose judgements work the result out")
    ap.add_argument("--no-eight", action="store_true", help="items of 1, 2, 4 responses only (the first recipe)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-data", action="store_true", help="train on the judgements an earlier run drew (no grm needed)")
    ap.add_argument("--device", default="cpu", help="cuda: bf16 autocast on a GPU")
    ap.add_argument("--out", default=None, help="where to save (default out/meta-rm)")
    ap.add_argument("--bf16", action="store_true", help="save in bf16 (as shipped)")
    ap.add_argument("--held-out-tenths", type=int, default=1,
                    help="tenths of the items held out of training to measure the meta RM on (0: none)")
    ap.add_argument("--domain", choices=["first", "arith"], default="first",
                    help="arith: the checking judge's items (arith.py), a quarter of the first domain's mixed in")
    a = ap.parse_args()
    if a.max_new_tokens is None:
        a.max_new_tokens = 512 if a.domain == "arith" else JUDGEMENT_TOKENS
    torch.set_num_threads(a.threads)
    grm_dir = a.grm or path("grm-rl", "x")[:-2]
    tok = load_tokenizer()
    if not a.reuse_data:
        items = domain.split(51, a.items, "meta", sizes=domain.SIZES if a.no_eight else domain.SIZES_8)
        if a.domain == "arith":
            import arith
            items = arith.split(52, a.items - a.items // 4, "meta-checked") + items[: a.items // 4]
        reqs = [domain.request(it) for it in items]
        if a.domain == "arith":
            context = json.load(open(f"{grm_dir}/config.json"))["max_position_embeddings"]
            # grm refuses an item whose prompt and new tokens overflow the context: some groups
            # of 8 do (the first run stopped at one of 718 prompt tokens); they are left out, as
            # checked.py data leaves out rows over the context.
            fits = {p["id"] for p in render_prompts(reqs)
                    if len(encode(tok, p["prompt"])) + a.max_new_tokens <= context}
            print(f"meta: {len(reqs) - len(fits)} of {len(reqs)} items left out, over the context", flush=True)
            reqs = [r for r in reqs if r["id"] in fits]
        write_jsonl(path("data", "meta-items.jsonl"), reqs)
        r = grm("spct", "meta-data", "--input", path("data", "meta-items.jsonl"), "--output", path("data", "meta.jsonl"),
                "--k", a.k, "--model", grm_dir, "--temperature", a.temperature, "--max-new-tokens", a.max_new_tokens,
                "--concurrency", 64, "--kv-blocks", 20000, "--max-batch-tokens", 2048, "--threads", a.threads)
        print("meta-data:", r.stderr.strip().splitlines()[-1], flush=True)
    rows = read_jsonl(path("data", "meta.jsonl"))
    # A tenth of the items (by a hash of the id, so every judgement of an item stays on one
    # side) is held out: their AUC says whether the meta RM tells right judgements from wrong at
    # all, and the within-item figure whether it ranks an item's judgements, which is all that
    # meta-RM voting uses.
    held = [r for r in rows if zlib.crc32(r["id"].encode()) % 10 < a.held_out_tenths]
    rows = [r for r in rows if zlib.crc32(r["id"].encode()) % 10 >= a.held_out_tenths]
    pos = sum(r["label"] for r in rows)
    print(f"meta: {len(rows)} judgements, {pos} correct; {len(held)} held out", flush=True)

    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma2ForSequenceClassification
    base = Gemma2ForCausalLM.from_pretrained(grm_dir, attn_implementation="eager", dtype=torch.float32)
    # The GRM's own config: its layers' window (the checking judge sees 1024 tokens, common.MODEL's
    # 64) is what its weights were trained for, and a meta RM reads the whole judgement.
    cfg = Gemma2Config.from_pretrained(grm_dir, num_labels=1, attn_implementation="eager")
    cfg.architectures = ["Gemma2ForSequenceClassification"]
    # float32 on the CPU: the GRM's config says bf16, and the new head would be built in another dtype.
    meta = Gemma2ForSequenceClassification(cfg).float()
    meta.model.load_state_dict(base.model.state_dict())
    torch.nn.init.normal_(meta.score.weight, std=0.02)
    dev = torch.device(a.device)
    meta.to(dev)
    data = [(encode(tok, r["text"]), float(r["label"])) for r in rows]
    # Balance the classes by weighting the loss.
    w_pos = (len(data) - pos) / max(pos, 1)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")
    opt = torch.optim.AdamW(meta.parameters(), lr=5e-4, weight_decay=0.01)
    rng = random.Random(3)
    held_data = [(encode(tok, r["text"]), r["label"], r["id"]) for r in held]
    step = 0
    for epoch in range(a.epochs):
        meta.train()
        order = sorted(range(len(data)), key=lambda i: len(data[i][0]) + rng.random() * 8)
        chunks = [order[i:i + 32] for i in range(0, len(order), 32)]
        rng.shuffle(chunks)
        for idx in chunks:
            y = torch.tensor([data[i][1] for i in idx], device=dev)
            logits = score(meta, [data[i][0] for i in idx], dev)
            loss = (bce(logits, y) * torch.where(y > 0, w_pos, 1.0)).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(meta.parameters(), 1.0)
            opt.step()
            if step % 50 == 0:
                print(f"meta epoch {epoch} step {step} loss {loss.item():.4f}", flush=True)
            step += 1
        if held_data:
            report(meta, held_data, dev, epoch)
    meta.eval()
    import shutil
    out = a.out or path("meta-rm", "x")[:-2]
    meta.to("cpu", torch.bfloat16 if a.bf16 else torch.float32).save_pretrained(out, safe_serialization=True)
    shutil.copy(path("tokenizer", "tokenizer.json"), f"{out}/tokenizer.json")
    print("saved", out, flush=True)


def score(meta, seqs, dev):
    """The meta RM's logits for a batch of token lists."""
    L = max(len(t) for t in seqs)
    # Left padding: the last position is every row's last token.
    x = torch.tensor([[PAD] * (L - len(t)) + t for t in seqs])
    m = torch.tensor([[0] * (L - len(t)) + [1] * len(t) for t in seqs])
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        return meta(input_ids=x.to(dev), attention_mask=m.to(dev)).logits[:, 0].float()


@torch.no_grad()
def report(meta, held, dev, epoch):
    """Held-out AUC over all judgements and within items that have both right and wrong ones."""
    meta.eval()
    scores = []
    for i in range(0, len(held), 16):
        scores += score(meta, [t for t, _, _ in held[i:i + 16]], dev).tolist()
    by_item = {}
    for s, (_, y, i) in zip(scores, held):
        by_item.setdefault(i, ([], []))[0 if y else 1].append(s)
    overall, within, mixed = aucs(by_item.values())
    print(f"meta epoch {epoch} held out: {len(held)} judgements of {len(by_item)} items, AUC {fmt(overall)}, "
          f"within {mixed} mixed items {fmt(within)}", flush=True)


if __name__ == "__main__":
    main()
