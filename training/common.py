"""Shared pieces of the training scripts: paths, the grm binary, prompt rendering (by grm
itself, so that training sees exactly what the servers send), the tokenizer and the model's
configuration."""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ.get("GRM_TRAIN_OUT", os.path.join(ROOT, "training", "out"))
GRM = os.environ.get("GRM_BIN", os.path.join(ROOT, "target", "release", "grm"))
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
PAD, EOS, BOS, END_OF_TURN = 0, 1, 2, 5
# Longest judgement sampled for evaluations and meta-RM data: a checking judgement of 8
# responses works each sum out column by column (up to 296 tokens in checked.py's data; 78%
# pass 128), and the longest checked prompt (642 tokens) plus 320 fits the GRM's 1,024
# positions. The first domain's end by 90, so the bound costs them nothing.
JUDGEMENT_TOKENS = 320

# A small Gemma-2 with every feature on: GQA (4 query heads, 2 KV heads), head_dim 64,
# sliding layers (window 64, shorter than every prompt) alternating with global ones,
# attention and final softcaps, tied embeddings.
MODEL = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    query_pre_attn_scalar=64,
    sliding_window=64,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    bos_token_id=BOS,
    eos_token_id=[EOS, END_OF_TURN],
    pad_token_id=PAD,
    hidden_activation="gelu_pytorch_tanh",
)


def path(*p):
    full = os.path.join(OUT, *p)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    return full


def write_jsonl(p, rows):
    with open(p, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(p):
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]


def render_prompts(requests):
    """Every sample's prompt of every request, rendered by `grm judge prompt --jsonl`:
    [{"id", "sample", "prompt", "order"}] in order."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests)
    out = subprocess.run([GRM, "judge", "prompt", "--jsonl"], input=text.encode(), capture_output=True, check=True)
    return [json.loads(l) for l in out.stdout.decode().splitlines()]


def render_meta(requests_with_judgements):
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests_with_judgements)
    out = subprocess.run([GRM, "judge", "prompt", "--jsonl", "--meta"], input=text.encode(), capture_output=True, check=True)
    return [json.loads(l) for l in out.stdout.decode().splitlines()]


def grm(*args, **kw):
    """Runs the grm binary; raises with its stderr on failure."""
    r = subprocess.run([GRM, *map(str, args)], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"grm {' '.join(map(str, args))} failed:\n{r.stderr[-4000:]}")
    return r


def load_tokenizer():
    from tokenizers import Tokenizer
    return Tokenizer.from_file(path("tokenizer", "tokenizer.json"))


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def digit_ids(tok):
    """The ten digits' token ids (the tokenizer has each digit as a token of its own)."""
    vocab = tok.get_vocab()
    return [vocab[str(d)] for d in range(10)]


def computed_digits(tok, ids):
    """Which tokens of `ids` (a 1-d array) are computed digits: a run of digit tokens right
    after a token that ends in "=" (column facts, "7 + 8 = 15", and results). The loss weights
    of checked.py and the measure of digit_accuracy.py both read it, so they mean the same."""
    import numpy as np
    vocab = tok.get_vocab()
    digit = np.array(digit_ids(tok))
    equals = np.array([i for t, i in vocab.items() if t.replace("\u0120", " ").rstrip().endswith("=")])
    ids = np.asarray(ids, dtype=np.int64)
    is_digit = np.isin(ids, digit)
    # The last token before each position's run of digits (-1 where none).
    before = np.maximum.accumulate(np.where(is_digit, -1, np.arange(ids.size)))
    return is_digit & (before >= 0) & np.isin(ids[np.maximum(before, 0)], equals)
