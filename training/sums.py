"""Every sum of the domain (a + b, a and b from 2 to 20) as a pair that only arithmetic tells
apart: the right equation against the same equation off by one, in a seeded order. The
embedded GRM's limit on it is in models/README.md (Limits).

    python training/sums.py > models/eval/limits/sums-off-by-one.jsonl
"""
import json
import random

rng = random.Random(5)
for a in range(2, 21):
    for b in range(2, 21):
        c = a + b
        d = c + rng.choice([-1, 1])
        responses, best = [f"{a} + {b} = {c}. The answer is {c}.", f"{a} + {b} = {d}. The answer is {d}."], 0
        if rng.random() < 0.5:
            responses.reverse()
            best = 1
        print(json.dumps({"id": f"f{a}-{b}", "query": f"What is {a} + {b}?", "responses": responses, "best": best,
                          "subset": "add"}))
