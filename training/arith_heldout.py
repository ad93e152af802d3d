"""The held-out split of the checking judge (issue: "an embedded judge that checks the answer",
item 3): arithmetic pairs and groups as a person writes them, from a generator kept apart from
the training data's (arith.py). It imports nothing from arith.py: its question phrasings, its
answer forms, its names and things and its own mistakes are written here, and none of its
phrasings is one that arith.py uses. Only the meaning is shared: each question has one right
answer, the labelled best is the one response whose final answer is right.

    python3 training/arith_heldout.py models/eval   # test-checked-pairs.jsonl, test-checked-groups.jsonl

Items: pairs (one right, one wrong: a wrong answer in the same form as the right one, a bare
right answer against a worked wrong one, a right equation with a wrong final answer, that
against the reverse, or any two forms) and groups of 3 to 8. Seeded; the
committed files are what this writes.
"""
import json
import os
import random
import sys

PEOPLE = ["Greta", "Hugo", "Ines", "Jonas", "Kofi", "Lucia", "Marek", "Nadia", "Oskar", "Priya", "Quinn", "Rosa"]
GOODS = ["tractors", "violins", "lanterns", "pumpkins", "oranges", "umbrellas", "kayaks", "helmets", "blankets",
         "carrots", "postcards", "tulips", "screws", "crayons", "jars", "ribbons"]

ASK = {
    "+": ["How much is {a} plus {b}?", "Find the sum of {a} and {b}.", "What do you get when you add {b} to {a}?",
          "{a} + {b} =", "Work out {a} + {b}, please.", "What's {a}+{b}?"],
    "-": ["How much is {a} minus {b}?", "What do you get if you take {b} away from {a}?",
          "Find the difference between {a} and {b}.", "{a} - {b} =", "Work out {a} - {b}, please.", "What's {a}-{b}?"],
    "×": ["How much is {a} times {b}?", "Find the product of {a} and {b}.", "What is {a} multiplied by {b}?",
          "{a} x {b} =", "Work out {a} * {b}, please.", "What's {a}x{b}?"],
}
TALE = {
    "+": ("A barn holds {a} {g}. A farmer brings in {b} more. How many {g} does the barn hold now?",
          "The barn holds {x} {g} now."),
    "-": ("{p} packed {a} {g} and {b} of them were handed out. How many {g} does {p} still have?",
          "{p} still has {x} {g}."),
    "×": ("A market stall has {a} rows of {g} with {b} in every row. How many {g} are on the stall?",
          "The stall has {x} {g}."),
}
# Answer forms none of arith.py's: spoken, terse, unspaced equations, tens-first working.
SAY = ["I get {x}.", "= {x}", "{x}, I think.", "Result: {x}", "It's {x}", "That gives {x}.", "The total is {x}."]


def numbers(rng, op):
    if op == "+":
        return rng.randint(11, 899), rng.randint(3, 899)
    if op == "-":
        a = rng.randint(20, 999)
        return a, rng.randint(2, a - 2)
    return rng.randint(12, 450), rng.randint(3, 9)


def value(op, a, b):
    return a + b if op == "+" else a - b if op == "-" else a * b


def no_carry(op, a, b):
    """The result with every carry or borrow forgotten, digit by digit."""
    sa, sb = str(a)[::-1], str(b)[::-1]
    out = []
    for i in range(len(sa) if op != "+" else max(len(sa), len(sb))):
        x = int(sa[i]) if i < len(sa) else 0
        y = int(sb[i]) if i < len(sb) else 0
        if op == "+":
            out.append((x + y) % 10)
        elif op == "-":
            out.append(abs(x - y))
        else:
            out.append(x * b % 10 if i < len(sa) - 1 else x * b)
    return int("".join(str(d) for d in reversed(out)))


def mistaken(rng, op, a, b, c, taken):
    """A wrong result not in `taken`: a person's slips first, then any near miss."""
    for _ in range(40):
        how = rng.choice(["one", "ten", "carry", "op", "swap"])
        if how == "one":
            v = c + rng.choice([-1, 1])
        elif how == "ten":
            v = c + rng.choice([-10, 10])
        elif how == "carry":
            v = no_carry(op, a, b)
        elif how == "op":
            v = a - b if op == "+" else a + b
        else:
            s = str(c)
            v = int(s[:-2] + s[-1] + s[-2]) if len(s) >= 2 and s[-1] != "0" else c
        if v != c and v >= 0 and v not in taken:
            return v
    while True:
        v = c + rng.choice([-1, 1]) * rng.randint(2, 30)
        if v >= 0 and v not in taken:
            return v


def sign(op, style):
    return {"×": ["x", "*", "×"][style % 3]}.get(op, op)


def answer(rng, form, op, a, b, x, tale, eq=None):
    """A response in a given form whose final answer is x (eq: what its equation says)."""
    eq = x if eq is None else eq
    o = sign(op, rng.randrange(3))
    if form == "bare":
        return str(x)
    if form == "spoken":
        return rng.choice(SAY).format(x=x)
    if form == "tight":
        return f"{a}{o}{b}={x}"
    if form == "is":
        return f"{a} {o} {b} is {x}."
    if form == "tale" and tale:
        sentence, goods = tale
        return sentence.format(x=x, p=rng.choice(PEOPLE), g=goods)
    if form == "eq_then":
        return f"{a} {o} {b} = {eq}, so the answer is {x}."
    # tens first: a + 30 + 8 style, for + and - only; else a plain equation
    if op in "+-" and b >= 10:
        tens, ones = b // 10 * 10, b % 10
        mid = value(op, a, tens)
        return f"{a} {op} {b} = {a} {op} {tens} {op} {ones} = {mid} {op} {ones} = {x}."
    return f"{a} {o} {b} = {x}."


FORMS = ["bare", "spoken", "tight", "is", "tale", "eq_then", "tens"]


def one(rng, n, idx):
    op = rng.choice(["+", "-", "×"])
    a, b = numbers(rng, op)
    c = value(op, a, b)
    if rng.random() < 0.35:
        g = rng.choice(GOODS)
        q_t, sentence = TALE[op]
        q = q_t.format(a=a, b=b, g=g, p=rng.choice(PEOPLE))
        tale = (sentence, g)
    else:
        q = rng.choice(ASK[op]).format(a=a, b=b)
        tale = None
    right_form = rng.choice(FORMS)
    responses, finals, shape = [answer(rng, right_form, op, a, b, c, tale)], [c], "mixed"
    if n == 2:
        shape = rng.choice(["same_form", "bare_vs_worked", "right_eq_wrong_answer", "crossed", "mixed"])
    while len(responses) < n:
        w = mistaken(rng, op, a, b, c, finals)
        if shape == "same_form":
            t = answer(rng, right_form, op, a, b, w, tale)
        elif shape == "bare_vs_worked":
            responses[0] = str(c)
            t = answer(rng, "tens", op, a, b, w, tale)
        elif shape == "right_eq_wrong_answer":
            t = answer(rng, "eq_then", op, a, b, w, tale, eq=c)
        elif shape == "crossed":
            # A wrong equation with the right final answer, against the reverse.
            responses[0] = answer(rng, "eq_then", op, a, b, c, tale, eq=w)
            t = answer(rng, "eq_then", op, a, b, w, tale, eq=c)
        else:
            t = answer(rng, rng.choice(FORMS), op, a, b, w, tale)
        if t in responses:
            # The same text from another slip's value cannot happen; from a form, redraw it.
            t = f"{t} ({w})" if shape != "mixed" else answer(rng, "tight", op, a, b, w, tale)
        responses.append(t)
        finals.append(w)
    order = list(range(n))
    rng.shuffle(order)
    # `grm eval`'s form: the best response's index and a subset to report apart.
    return {"id": f"{idx}", "query": q, "responses": [responses[i] for i in order],
            "best": order.index(0), "subset": f"pair: {shape}" if n == 2 else f"n={n}"}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261206)
    pairs = [one(rng, 2, f"checked-pair-{i}") for i in range(240)]
    groups = [one(rng, rng.choice([3, 4, 4, 5, 6, 8, 8]), f"checked-group-{i}") for i in range(160)]
    for name, rows in (("test-checked-pairs", pairs), ("test-checked-groups", groups)):
        with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(name, len(rows))


if __name__ == "__main__":
    main()
