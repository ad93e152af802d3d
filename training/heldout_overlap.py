"""How many held-out questions share a template with a question arith.py draws (item 3 of
"an embedded judge that checks the answer": the held-out split uses phrasings training never
used). A template is the question with its numbers, names, things and places masked.

    python3 training/heldout_overlap.py [DRAWS]     # prints the shared count; exits 1 if any
"""
import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arith  # noqa: E402
import arith_heldout  # noqa: E402

WORDS = sorted(set(arith.NAMES + arith.THINGS + arith.PLACES + arith_heldout.PEOPLE + arith_heldout.GOODS),
               key=len, reverse=True)
MASK = re.compile("|".join(re.escape(w) for w in WORDS), re.IGNORECASE)


def template(q):
    return re.sub(r"\d+", "#", MASK.sub("@", q)).strip().lower()


def main():
    draws = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    rng = random.Random(1)
    seen = {template(arith.question(rng)[0]) for _ in range(draws)}
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "eval")
    held, shared = 0, []
    for name in ("test-checked-pairs.jsonl", "test-checked-groups.jsonl"):
        for line in open(os.path.join(root, name), encoding="utf-8"):
            q = json.loads(line)["query"]
            held += 1
            if template(q) in seen:
                shared.append(q)
    print(f"{len(shared)} of {held} held-out questions share a template with {draws} drawn ({len(seen)} templates)")
    for q in shared[:10]:
        print("  ", q)
    sys.exit(1 if shared else 0)


if __name__ == "__main__":
    main()
