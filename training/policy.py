"""The policy of the RLHF demo: a small Gemma-2 (2.2 M parameters, the GRM's tokenizer) that
answers the arithmetic domain's questions in Gemma's chat format. Its "pretraining" is the
domain's text: every arithmetic fact of the domain, and questions answered by the domain's
candidate responses, right ones and the realistic mistakes alike (as a base model learns from
text of mixed quality), so it starts out answering in the domain's style and often wrongly.

    python training/policy.py pretrain --out DIR     # the base policy (--device cuda on a GPU)
    python training/policy.py eval --model DIR       # exact-answer accuracy on held-out questions
"""
import argparse
import json
import os
import random
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import domain  # noqa: E402
from common import BOS, END_OF_TURN, EOS, PAD, ROOT  # noqa: E402

TOKENIZER = os.path.join(ROOT, "models", "grm", "tokenizer.json")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
POLICY = dict(
    hidden_size=192,
    intermediate_size=576,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=48,
    query_pre_attn_scalar=48,
    sliding_window=64,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    bos_token_id=BOS,
    eos_token_id=[EOS, END_OF_TURN],
    pad_token_id=PAD,
    hidden_activation="gelu_pytorch_tanh",
)
# Held-out questions (never trained on, by the policy or in its RL prompts).
HELD_OUT = (73, 300)
ANSWER = re.compile(r"answer is (-?\d+)")


def tokenizer(path=TOKENIZER):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=path, pad_token="<pad>", eos_token="<end_of_turn>",
                                  bos_token="<bos>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def prompt_text(query):
    return f"<bos><start_of_turn>user\n{query}<end_of_turn>\n<start_of_turn>model\n"


def final_answer(text):
    """The response's final answer ("... the answer is N"), or None."""
    m = ANSWER.findall(text)
    return int(m[-1]) if m else None


def completion_text(c):
    """A TRL completion (text, or conversational [{"role": "assistant", "content": ...}]) as text."""
    return c if isinstance(c, str) else "".join(m.get("content", "") for m in c)


def questions(seed, n, prefix):
    return [{"query": it["query"], "answer": it["answer"], "id": it["id"]} for it in domain.split(seed, n, prefix)]


def pretrain_examples(tok, items=4000, seed=71):
    """(ids, labels): each question with each of its candidate responses (loss on the response),
    and the domain's arithmetic facts."""
    rng = random.Random(seed)
    out = []
    for it in domain.split(seed, items, "policy"):
        p = tok(prompt_text(it["query"]))["input_ids"]
        for r in it["responses"]:
            c = tok(r)["input_ids"] + [END_OF_TURN]
            out.append((p + c, [-100] * len(p) + c))
    facts = []
    for op, ra, rb in [("+", range(2, 21), range(2, 21)), ("-", range(2, 26), range(1, 25)), ("×", range(2, 13), range(2, 10))]:
        for a in ra:
            for b in rb:
                if op == "-" and b >= a:
                    continue
                facts.append(f"{a} {op} {b} = {domain.OPS[op](a, b)}.")
    for _ in range(2):
        rng.shuffle(facts)
        for j in range(0, len(facts), 8):
            ids = [BOS] + tok(" ".join(facts[j:j + 8]))["input_ids"] + [EOS]
            out.append((ids, ids[:]))
    return out


def new_policy(vocab):
    from transformers import Gemma2Config, Gemma2ForCausalLM
    torch.manual_seed(0)
    cfg = Gemma2Config(**dict(POLICY, vocab_size=vocab), attn_implementation="eager")
    return Gemma2ForCausalLM(cfg)


@torch.no_grad()
def generate(model, tok, queries, samples=1, temperature=0.0, max_new_tokens=40, seed=0, batch=64):
    """Completions (text) of each query: greedy, or `samples` draws at `temperature`."""
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(queries), batch):
        chunk = queries[i:i + batch]
        enc = tok([prompt_text(q) for q in chunk], return_tensors="pt", padding=True)
        kw = dict(do_sample=False) if temperature == 0 else dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                                                 num_return_sequences=samples)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=[EOS, END_OF_TURN], pad_token_id=PAD, **kw)
        texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        n = 1 if temperature == 0 else samples
        out.extend(texts[j * n:(j + 1) * n] for j in range(len(chunk)))
    return out


def evaluate(model, tok, samples=4, seed=0):
    """Exact-answer accuracy on the held-out questions: greedy, and `samples` draws at
    temperature 1 (the policy's own distribution, as GRPO samples it)."""
    model.eval()
    qs = questions(*HELD_OUT, "heldout")
    greedy = generate(model, tok, [q["query"] for q in qs])
    sampled = generate(model, tok, [q["query"] for q in qs], samples=samples, temperature=1.0, seed=seed)
    g = sum(final_answer(t[0]) == q["answer"] for t, q in zip(greedy, qs)) / len(qs)
    s = sum(final_answer(t) == q["answer"] for ts, q in zip(sampled, qs) for t in ts) / (len(qs) * samples)
    examples = [{"query": q["query"], "answer": q["answer"], "greedy": t[0], "sampled": ts}
                for q, t, ts in list(zip(qs, greedy, sampled))[:6]]
    return {"items": len(qs), "greedy_accuracy": g, "sampled_accuracy": s, "samples": samples, "examples": examples}


def pretrain(a):
    from sft import train  # the GRM's training loop (AdamW, warm-up, cosine)
    torch.set_num_threads(a.threads)
    tok = tokenizer()
    model = new_policy(len(tok))
    print(f"policy: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    ex = pretrain_examples(tok, a.items)
    print(f"policy pretraining: {len(ex)} sequences, {sum(len(e[0]) for e in ex)} tokens", flush=True)
    train(model.to(a.device), ex, epochs=a.epochs, lr=a.lr, batch_tokens=a.batch_tokens, seed=1, label="policy",
          device=a.device)
    model.to("cpu")
    model.generation_config.eos_token_id = [EOS, END_OF_TURN]
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(a.out, safe_serialization=True)
    tok.save_pretrained(a.out)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pretrain")
    p.add_argument("--out", required=True)
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-tokens", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cuda: bf16 autocast on a GPU")
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.cmd == "pretrain":
        t0 = time.time()
        pretrain(a)
        print(f"pretrained in {time.time() - t0:.0f} s", flush=True)
    else:
        from transformers import Gemma2ForCausalLM
        torch.set_num_threads(a.threads)
        model = Gemma2ForCausalLM.from_pretrained(a.model, attn_implementation="eager", dtype=torch.float32)
        print(json.dumps(evaluate(model, tokenizer()), indent=1))


if __name__ == "__main__":
    main()
