"""How well a GRM predicts the digits of the checking judgements it is trained on: teacher-forced,
the share of digit tokens of the judgement whose argmax is right, split by where they stand —
computed in the criteria (a run of digits right after "=": column sums and the result), copied
in the criteria (operands, "write 5"), each response's final answer as the criteria name it
before the working, and in the analysis's check of each response. A
checkpoint of training/checked.py is judged by it long before its held-out accuracy moves off
chance (models/README.md, "A judge that checks").

    python training/digit_accuracy.py --model DIR [--data training/out/checked/data.npz] [--items 300]

Items are drawn at random from the data's arith part with a fixed seed, so two checkpoints are
measured on the same items.
"""
import argparse
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bigsft  # noqa: E402
from common import computed_digits, digit_ids  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "out", "checked", "data.npz"))
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--arith-items", type=int, default=60000, help="the data's arith items come first")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from tokenizers import Tokenizer
    from transformers import Gemma2ForCausalLM
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    digits = set(digit_ids(tok))
    examples = bigsft.load([a.data])[: a.arith_items]
    picked = random.Random(7).sample(range(len(examples)), min(a.items, len(examples)))
    model = Gemma2ForCausalLM.from_pretrained(a.model, attn_implementation="eager", dtype=torch.float32).eval()
    parts = ("criteria: computed", "criteria: copied", "criteria: a response's answer", "analysis")
    right = dict.fromkeys(parts, 0)
    total = dict.fromkeys(parts, 0)
    # The computed digits again, by the item's operation and by where they stand: a column's
    # step ("7 + 8 = 15") or the result the steps add up to ("So 47 + 38 = 85"), to tell a
    # fact not learned from a result not assembled.
    by_kind_right, by_kind_total = {}, {}
    a_right, a_total = {}, {}
    with torch.no_grad():
        for i in picked:
            ids, labels = examples[i]
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            pred = logits.argmax(-1).tolist()
            computed = computed_digits(tok, ids)
            text = ""
            for t in range(1, len(ids)):
                if labels[t] == -100:
                    continue
                # The judgement's text so far (the tokenizer merges words, so by text).
                text += (tok.id_to_token(ids[t]) or "").replace("\u0120", " ")
                if ids[t] not in digits:
                    continue
                if "Analysis" in text:
                    part = "analysis"
                elif "Column by column" not in text and "Response " in text:
                    # The criteria name each response's final answer before the working: copies
                    # (the third stage's quotes too, though a quoted "12+7=19" has digits after "=").
                    part = "criteria: a response's answer"
                else:
                    part = "criteria: computed" if computed[t] else "criteria: copied"
                total[part] += 1
                ok = int(pred[t - 1] == ids[t])
                right[part] += ok
                if part == "analysis":
                    # What the digit copies: a response's final answer ("answers 84"), the
                    # judgement's own result ("which is not 85"), a response's working ("writes
                    # 47 + 38 = 84") or anything else (scores).
                    tail = text.split("Analysis", 1)[-1]
                    marks = {k: tail.rfind(k) for k in ("answers ", "which is", "writes ", "Response ")}
                    last = max(marks, key=marks.get)
                    kind = {"answers ": "a response's answer", "which is": "the result", "writes ": "a response's working",
                            "Response ": "other"}[last]
                    a_total[kind] = a_total.get(kind, 0) + 1
                    a_right[kind] = a_right.get(kind, 0) + ok
                if part == "criteria: computed":
                    # The text is of byte-level pieces, in which "×" is not itself.
                    asks = text.split("asks for ", 1)[-1][:20]
                    op = "+" if " + " in asks else "-" if " - " in asks else "×"
                    kind = f"{op} {'result' if ' So ' in text.split('Column by column:', 1)[-1] else 'column step'}"
                    by_kind_total[kind] = by_kind_total.get(kind, 0) + 1
                    by_kind_right[kind] = by_kind_right.get(kind, 0) + ok
    for part in parts:
        share = right[part] / max(1, total[part])
        print(f"{part}: {share:.1%} of {total[part]} digit tokens right (teacher-forced)")
    for kind in sorted(by_kind_total):
        share = by_kind_right[kind] / by_kind_total[kind]
        print(f"  computed, {kind}: {share:.1%} of {by_kind_total[kind]}")
    for kind in sorted(a_total):
        print(f"  analysis, {kind}: {a_right[kind] / a_total[kind]:.1%} of {a_total[kind]}")


if __name__ == "__main__":
    main()
