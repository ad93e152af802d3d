"""Trains the GRM's tokenizer: byte-level BPE whose merges may cross spaces (the fixed parts of
the paper's prompt template, seen in every prompt, become a handful of long tokens), with
every digit its own token (arithmetic stays digit by digit), and Gemma's special tokens at
their usual ids 0..5."""
import random
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, __import__("os").path.dirname(__file__))
import domain  # noqa: E402
from common import MODEL, SPECIALS, path, render_prompts  # noqa: E402


def corpus(n=1500, seed=5):
    items = domain.split(seed, n, "tok")
    rng = random.Random(seed)
    prompts = render_prompts([domain.request(it, seed=rng.randrange(1 << 30)) for it in items])
    texts = []
    for it, p in zip(items, prompts):
        texts.append(p["prompt"] + domain.judgement(it, p["order"], rng) + "<end_of_turn>")
    return texts


def main():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=MODEL["vocab_size"],
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        max_token_length=512,
        show_progress=False,
    )
    texts = corpus()
    tok.train_from_iterator(texts, trainer=trainer)
    out = path("tokenizer", "tokenizer.json")
    tok.save(out)
    lens = sorted(len(tok.encode(t, add_special_tokens=False).ids) for t in texts[:300])
    print(f"tokenizer: {tok.get_vocab_size()} tokens; prompt+judgement lengths p50 {lens[len(lens)//2]}, max {lens[-1]}")
    ids = tok.encode("<bos><start_of_turn>user\nWhat is 12 + 7?", add_special_tokens=False).ids
    assert ids[:2] == [2, 4], ids


if __name__ == "__main__":
    main()
