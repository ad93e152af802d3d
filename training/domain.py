"""The synthetic preference domain of the embedded GRM: small arithmetic questions with
candidate responses carrying realistic mistakes, and the rule that judges them.

Everything is seeded: the same seed gives the same items. Verifiable: each question has one
right answer; a response is right iff its final answer equals it. Items have n = 1 to 8
responses; for n >= 2 exactly one response is right (the labelled best), for n = 1 the label
is whether it is right (and its rule score, the paper's ground-truth rating). Past n = 6 the wrong
responses repeat mistake kinds with other numbers or wordings (all texts distinct).
"""
import random

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lena", "Mo", "Nia", "Omar", "Pia"]
THINGS = ["apples", "books", "coins", "marbles", "pens", "stickers", "cards", "shells", "cookies", "stamps"]
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}
OP_WORD = {"+": "addition", "-": "subtraction", "×": "multiplication"}
SWAP = {"+": "-", "-": "+", "×": "+"}

# The rule: what each kind of response scores.
SCORES = {"correct": 9, "bare": 8, "inconsistent": 4, "off_by_one": 3, "off_by_ten": 3, "wrong_op": 2, "no_answer": 1}
MISTAKES = ["inconsistent", "off_by_one", "off_by_ten", "wrong_op", "no_answer"]


def question(rng):
    op = rng.choice(["+", "+", "-", "-", "×"])
    if op == "+":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
    elif op == "-":
        a = rng.randint(6, 25)
        b = rng.randint(1, a - 1)
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
    c = OPS[op](a, b)
    if rng.random() < 0.5:
        q = f"What is {a} {op} {b}?"
    else:
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        if op == "+":
            q = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
        elif op == "-":
            q = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?"
        else:
            q = f"{name} has {a} bags with {b} {thing} in each. How many {thing} are there in total?"
    return q, op, a, b, c


def response(rng, kind, op, a, b, c):
    """A response of the given kind; returns (text, final answer or None)."""
    if kind == "correct":
        form = rng.randrange(3)
        if form == 0:
            return f"{a} {op} {b} = {c}. The answer is {c}.", c
        if form == 1:
            return f"We compute {a} {op} {b}, which is {c}. So the answer is {c}.", c
        return f"Step by step: {a} {op} {b} = {c}. Therefore the answer is {c}.", c
    if kind == "bare":
        return f"The answer is {c}.", c
    if kind == "inconsistent":
        d = c + rng.choice([-2, -1, 1, 2])
        return f"{a} {op} {b} = {c}. The answer is {d}.", d
    if kind == "off_by_one":
        d = c + rng.choice([-1, 1])
        return f"{a} {op} {b} = {d}. The answer is {d}.", d
    if kind == "off_by_ten":
        d = c + 10 if c < 10 or rng.random() < 0.5 else c - 10
        return f"{a} {op} {b} = {d}. The answer is {d}.", d
    if kind == "wrong_op":
        w = SWAP[op]
        d = OPS[w](a, b)
        return f"{a} {w} {b} = {d}. The answer is {d}.", d
    # no_answer
    return rng.choice([f"We need to use {OP_WORD[op]} with {a} and {b}.", f"This is a question about {a} and {b}.", "It depends on the numbers."]), None


def item(rng, n, idx):
    q, op, a, b, c = question(rng)
    if n == 1:
        kind = rng.choice(["correct", "bare"]) if rng.random() < 0.5 else rng.choice(MISTAKES)
        kinds = [kind]
    elif n - 1 <= len(MISTAKES):
        kinds = [rng.choice(["correct", "correct", "bare"])] + rng.sample(MISTAKES, n - 1)
        rng.shuffle(kinds)
    else:
        return item_many(rng, n, idx, q, op, a, b, c)
    responses, finals = [], []
    for k in kinds:
        t, f = response(rng, k, op, a, b, c)
        # Distinct mistakes may collide on one final answer; the rule scores the kind anyway.
        responses.append(t)
        finals.append(f)
    return finish(idx, q, op, a, b, c, kinds, responses, finals)


def item_many(rng, n, idx, q, op, a, b, c):
    """An item with more wrong responses than there are mistake kinds (n >= 7): every kind once,
    then kinds drawn again, each new response redrawn until its text is new (a kind that has
    no new text left, e.g. the one wrong operation, is drawn no more)."""
    right = rng.choice(["correct", "correct", "bare"])
    t, f = response(rng, right, op, a, b, c)
    kinds, responses, finals = [right], [t], [f]
    wanted = MISTAKES[:] + [rng.choice(MISTAKES) for _ in range(n - 1 - len(MISTAKES))]
    pool = MISTAKES[:]
    for k in wanted:
        while True:
            for _ in range(30):
                t, f = response(rng, k, op, a, b, c)
                if t not in responses:
                    break
            else:
                if k in pool:
                    pool.remove(k)
                k = rng.choice(pool)
                continue
            break
        kinds.append(k)
        responses.append(t)
        finals.append(f)
    perm = list(range(n))
    rng.shuffle(perm)
    return finish(idx, q, op, a, b, c, [kinds[i] for i in perm], [responses[i] for i in perm], [finals[i] for i in perm])


def finish(idx, q, op, a, b, c, kinds, responses, finals):
    it = {
        "id": f"{idx}",
        "query": q,
        "responses": responses,
        "kinds": kinds,
        "finals": finals,
        "op": op, "a": a, "b": b, "answer": c,
    }
    if len(kinds) >= 2:
        it["label"] = {"best": next(i for i, k in enumerate(kinds) if k in ("correct", "bare"))}
    else:
        it["label"] = {"rating": SCORES[kinds[0]]}
        it["correct"] = kinds[0] in ("correct", "bare")
    return it


# How many responses an item has: the shipped test split keeps the original mix (so its
# figures stay comparable); training splits take every n up to 8, the GRPO group size trainers
# send by default, and the odd sizes too: the router judges identical responses once, so a
# group of 4 with a repeated answer arrives as n = 3 (a quarter of the RLHF demo's groups).
SIZES = ([1, 2, 4], [2, 5, 3])
SIZES_8 = ([1, 2, 3, 4, 5, 6, 7, 8], [2, 5, 2, 3, 1, 1, 1, 2])


def split(seed, n_items, prefix, sizes=SIZES):
    rng = random.Random(seed)
    out = []
    for i in range(n_items):
        n = rng.choices(sizes[0], weights=sizes[1])[0]
        out.append(item(rng, n, f"{prefix}-{i}"))
    return out


# ------------------------------------------------------------------ the rule-made judgement

def describe(kind, final, c, op, rng):
    if kind in ("correct", "bare"):
        tail = "" if kind == "correct" else ", though it shows no steps"
        return f"answers {final}, which is correct{tail}"
    if kind == "inconsistent":
        return f"computes {c} but then answers {final}, contradicting its own step"
    if kind == "off_by_one":
        return f"answers {final}, which is off by one"
    if kind == "off_by_ten":
        return f"answers {final}, which is off by ten"
    if kind == "wrong_op":
        return f"uses {OP_WORD[SWAP[op]]} instead of {OP_WORD[op]} and answers {final}, which is wrong"
    return "never states a final answer"


def judgement(it, order, rng):
    """The rule's judgement of an item whose responses are shown in `order`, in the paper's
    format: specific criteria with weights, an analysis of each response, the boxed scores."""
    a, b, c, op = it["a"], it["b"], it["answer"], it["op"]
    w = rng.choice([(70, 20, 10), (60, 30, 10), (80, 10, 10)])
    # The operands come first and the answer right after them: a small model copies them
    # from the query and then only has to recall one arithmetic fact, as in pretraining.
    criteria = (f"Specific Criteria: The question asks for {a} {op} {b} = {c}, so the final answer must be {c} (weight {w[0]}%); "
                f"the arithmetic in the steps must be right (weight {w[1]}%); "
                f"the answer must be stated clearly (weight {w[2]}%).")
    parts = []
    for pos, i in enumerate(order):
        parts.append(f"Response {pos + 1} {describe(it['kinds'][i], it['finals'][i], c, op, rng)}.")
    scores = [SCORES[it["kinds"][i]] for i in order]
    return f"{criteria}\nAnalysis: {' '.join(parts)}\nScores: \\boxed{{{', '.join(map(str, scores))}}}"


def request(it, k=1, seed=None):
    """The request form (as grm label / grm judge prompt read it)."""
    r = {"id": it["id"], "query": it["query"], "responses": it["responses"], "label": it["label"]}
    if k != 1 or seed is not None:
        r["sampling"] = {"k": k}
        if seed is not None:
            r["sampling"]["seed"] = seed
    return r
