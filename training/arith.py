"""The embedded GRM's second domain: arithmetic where only the arithmetic tells right from
wrong (issue: "an embedded judge that checks the answer").

The first domain (domain.py) let a response's form give it away: right answers had one set of
forms and each mistake its own, so the GRM learned the forms, and a person's own arithmetic was
judged at chance. Here every form of answer (digits only, a sentence, an equation, an equation
then an answer, worked column steps, a word-problem sentence) is drawn for right and wrong
responses alike, and the wrong ones are wrong in the number only: off by one, off by ten or a
hundred, a dropped carry or borrow (with the working that makes it), the wrong operation, two
digits swapped, a right equation with a wrong final answer; and the reverse, a right final answer
after a wrong equation, which scores between. Questions come in many phrasings (plain `a + b = ?`
to word problems about many kinds of things); operands up to three digits for + and -, up to
three digits times one for x.

The judgement computes: its criteria work the result out column by column (digits are single
tokens), then each response's final answer is compared with it, so the score follows from the
check. Scores: a right answer with right working 9, a bare right answer 8, a right answer after
wrong working 5, a wrong answer 2, no answer 1.

Same interface as domain.py (split, judgement, request), so the training scripts take either.
The held-out generator (arith_heldout.py) is separate and shares no phrasing with this file.
"""
import random

# The request form is the first domain's: the same keys, read the same way by grm.
from domain import request  # noqa: F401

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}
SCORES = {"right": 9, "bare": 8, "reverse": 5, "wrong": 2, "none": 1}

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lena", "Mo", "Nia",
         "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Vic", "Wen", "Yara", "Zoe", "Luis", "Mei", "Noor", "Olga"]
THINGS = ["apples", "books", "coins", "marbles", "pens", "stickers", "cards", "shells", "cookies", "stamps",
          "chairs", "bottles", "tickets", "seeds", "bricks", "boxes", "eggs", "nails", "cups", "plates",
          "shirts", "beads", "buttons", "candles", "leaves", "photos", "songs", "pages", "bikes", "kites"]
PLACES = ["a shop", "a school", "a farm", "a library", "a bakery", "a garden", "a warehouse", "a club"]


# ------------------------------------------------------------------ questions

def operands(rng, op):
    def number(lo_digits, hi_digits):
        d = rng.randint(lo_digits, hi_digits)
        return rng.randint(10 ** (d - 1) if d > 1 else 2, 10 ** d - 1)
    if op == "+":
        return number(1, 3), number(1, 3)
    if op == "-":
        a = number(2, 3)
        return a, rng.randint(1, a - 1)
    return number(1, 3), rng.randint(2, 9)


PLAIN = {
    "+": ["What is {a} + {b}?", "{a} + {b} = ?", "{a}+{b}=?", "Compute {a} + {b}.", "What is {a} plus {b}?",
          "Add {a} and {b}.", "Calculate {a} + {b}.", "{a} + {b}"],
    "-": ["What is {a} - {b}?", "{a} - {b} = ?", "{a}-{b}=?", "Compute {a} - {b}.", "What is {a} minus {b}?",
          "Subtract {b} from {a}.", "Calculate {a} - {b}.", "{a} - {b}"],
    "×": ["What is {a} × {b}?", "{a} × {b} = ?", "{a}*{b}=?", "Compute {a} × {b}.", "What is {a} times {b}?",
          "Multiply {a} by {b}.", "Calculate {a} x {b}.", "{a} * {b}"],
}
STORY = {
    "+": ["{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
          "There are {a} {thing} in {place} and {b} more arrive. How many {thing} are there?",
          "{name} collected {a} {thing} on Monday and {b} on Tuesday. How many in all?"],
    "-": ["{name} has {a} {thing} and gives away {b}. How many {thing} are left?",
          "{place_cap} had {a} {thing} and sold {b}. How many {thing} remain?",
          "{name} needs {a} {thing} and already has {b}. How many more does {name} need?"],
    "×": ["{name} has {a} bags with {b} {thing} in each. How many {thing} are there in total?",
          "{place_cap} orders {b} crates of {a} {thing}. How many {thing} is that?",
          "Each of {a} tables has {b} {thing}. How many {thing} are on the tables?"],
}
# The sentence a word-problem answer ends with.
STORY_ANSWER = {
    "+": ["{name} has {x} {thing} now.", "There are {x} {thing}.", "{x} {thing} in all."],
    "-": ["{x} {thing} are left.", "{x} {thing} remain.", "{name} needs {x} more."],
    "×": ["There are {x} {thing} in total.", "That is {x} {thing}.", "{x} {thing} are on the tables."],
}


def question(rng):
    op = rng.choice(["+", "+", "-", "-", "×"])
    a, b = operands(rng, op)
    story = rng.random() < 0.4
    ctx = {"a": a, "b": b, "name": rng.choice(NAMES), "thing": rng.choice(THINGS)}
    place = rng.choice(PLACES)
    ctx["place"], ctx["place_cap"] = place, place[0].upper() + place[1:]
    t = rng.randrange(3)
    if story:
        q = STORY[op][t].format(**ctx)
        ctx["story"] = STORY_ANSWER[op][t]
    else:
        q = rng.choice(PLAIN[op]).format(**ctx)
        ctx["story"] = None
    return q, op, a, b, OPS[op](a, b), ctx


# ------------------------------------------------------------------ column working

def digits(n):
    return [int(d) for d in reversed(str(n))]


def column(op, a, b, drop_carry=False):
    """Column working of a op b (b one digit for ×), least significant column first: the
    steps' text and the result. `drop_carry`: the classic mistake, carries and borrows
    forgotten (the result is then wrong whenever a column carries)."""
    da, db = digits(a), digits(b)
    steps, out, carry = [], [], 0
    if op == "+":
        for i in range(max(len(da), len(db))):
            x, y = (da[i] if i < len(da) else None), (db[i] if i < len(db) else None)
            terms = [t for t in (x, y) if t is not None] + ([carry] if carry else [])
            s = sum(terms)
            if drop_carry:
                s %= 10
            carry, d = divmod(s, 10)
            text = " + ".join(map(str, terms))
            steps.append(f"{text} = {s}, write {d}" + (f" carry {carry}" if carry else "") if len(terms) > 1
                         else f"{text}, write {d}")
            out.append(d)
        if carry:
            steps.append(f"write {carry}")
            out.append(carry)
    elif op == "-":
        for i in range(len(da)):
            x, y = da[i], (db[i] if i < len(db) else 0)
            top = x - carry
            lead = f"{x} - {carry}" if carry else f"{x}"
            if top >= y or drop_carry:
                d = abs(top - y) if drop_carry else top - y
                steps.append(f"{lead} - {y} = {d}, write {d}" if (y or carry) else f"{x}, write {d}")
                carry = 0
            else:
                d = top + 10 - y
                steps.append(f"{lead} - {y} borrows: 10 + {lead} - {y} = {d}, write {d} borrow 1")
                carry = 1
            out.append(d)
    else:
        for i, x in enumerate(da):
            s = x * b + (0 if drop_carry else carry)
            plus = f" + {carry}" if carry and not drop_carry else ""
            last = i == len(da) - 1
            if last:
                # The last column writes its whole product.
                steps.append(f"{x} × {b}{plus} = {s}, write {s}")
                out.extend(digits(s) if s else [0])
                break
            carry, d = divmod(s, 10)
            if drop_carry:
                carry = 0
            steps.append(f"{x} × {b}{plus} = {s}, write {d}" + (f" carry {carry}" if carry else ""))
            out.append(d)
    result = int("".join(map(str, reversed(out)))) if out else 0
    return "; ".join(steps), result


# ------------------------------------------------------------------ responses

FORMS = ["digits", "sentence", "equation", "eq_answer", "worked", "story"]
WRONG = ["off_by_one", "off_by_ten", "drop_carry", "wrong_op", "swap", "inconsistent"]
SWAP_OP = {"+": "-", "-": "+", "×": "+"}


def wrong_value(rng, kind, op, a, b, c):
    """A wrong final answer of the given kind (falls back to off-by-one where the kind gives
    the right one, e.g. no carry to drop)."""
    v = None
    if kind == "off_by_one":
        v = c + rng.choice([-1, 1])
    elif kind == "off_by_ten":
        v = c + rng.choice([-10, 10, 100] if c >= 100 else [-10, 10] if c >= 10 else [10])
    elif kind == "drop_carry":
        v = column(op, a, b, drop_carry=True)[1]
    elif kind == "wrong_op":
        v = OPS[SWAP_OP[op]](a, b)
    elif kind == "swap":
        s = str(c)
        if len(s) >= 2 and s[-1] != s[-2] and not (len(s) == 2 and s[-1] == "0"):
            v = int(s[:-2] + s[-1] + s[-2])
    if v is None or v == c or v < 0:
        v = c + 1
    return v


def say(rng, x):
    return rng.choice(["The answer is {x}.", "It is {x}.", "{x} is the answer.", "Answer: {x}", "So it is {x}."]).format(x=x)


def response(rng, form, kind, op, a, b, c, ctx):
    """(text, final answer or None, shows working). kind: right, wrong:<how>, reverse, none."""
    if kind == "none":
        return rng.choice([f"We need to work with {a} and {b}.", "I am not sure how to solve this.",
                           f"First look at {a}, then at {b}.", "This needs some arithmetic.",
                           f"The numbers are {a} and {b}."]), None, False
    if kind == "reverse":
        # A wrong equation, then the right final answer.
        y = wrong_value(rng, rng.choice(WRONG[:5]), op, a, b, c)
        return f"{a} {op} {b} = {y}. " + say(rng, c), c, True
    how = kind.split(":")[1] if kind.startswith("wrong") else None
    x = c if how is None else wrong_value(rng, how, op, a, b, c)
    if how == "inconsistent":
        return f"{a} {op} {b} = {c}. " + say(rng, x), x, True
    if form == "story" and ctx["story"] is None:
        form = "sentence"
    if form == "digits":
        return str(x), x, False
    if form == "sentence":
        return say(rng, x), x, False
    if form == "equation":
        return f"{a} {op} {b} = {x}", x, True
    if form == "eq_answer":
        return f"{a} {op} {b} = {x}. " + say(rng, x), x, True
    if form == "story":
        return ctx["story"].format(x=x, name=ctx["name"], thing=ctx["thing"]), x, False
    # worked: column steps; a dropped carry shows its own wrong steps, other mistakes a slip
    # at the end.
    steps, _ = column(op, a, b, drop_carry=how == "drop_carry")
    return f"Column by column: {steps}. So {a} {op} {b} = {x}.", x, True


def item(rng, n, idx):
    q, op, a, b, c, ctx = question(rng)
    if n == 1:
        kinds = [rng.choice(["right", "right", "wrong", "wrong", "reverse", "none"])]
    else:
        # One right answer; the others wrong (at most one reverse and one without an answer).
        kinds = ["right"]
        extra = [k for k in ("reverse", "none") if rng.random() < 0.25]
        kinds += extra[: n - 1]
        while len(kinds) < n:
            kinds.append("wrong")
        rng.shuffle(kinds)
    responses, finals, kinds_out, mistakes = [], [], [], []
    for k in kinds:
        if k == "wrong":
            k = "wrong:" + rng.choice(WRONG)
        for _ in range(40):
            t, f, work = response(rng, rng.choice(FORMS), k, op, a, b, c, ctx)
            if t not in responses and (k == "none" or k == "right" or k == "reverse" or f not in finals):
                break
        responses.append(t)
        finals.append(f)
        kinds_out.append(("right" if work else "bare") if k == "right" else k.split(":")[0])
        mistakes.append(k.split(":")[1] if k.startswith("wrong:") else None)
    it = {"id": f"{idx}", "query": q, "responses": responses, "kinds": kinds_out, "mistakes": mistakes, "finals": finals,
          "op": op, "a": a, "b": b, "answer": c}
    if n >= 2:
        it["label"] = {"best": next(i for i, k in enumerate(kinds_out) if k in ("right", "bare"))}
    else:
        it["label"] = {"rating": SCORES[kinds_out[0]]}
        it["correct"] = kinds_out[0] in ("right", "bare")
    return it


SIZES_8 = ([1, 2, 3, 4, 5, 6, 7, 8], [2, 5, 2, 3, 1, 1, 1, 2])


def split(seed, n_items, prefix, sizes=SIZES_8):
    rng = random.Random(seed)
    return [item(rng, rng.choices(sizes[0], weights=sizes[1])[0], f"{prefix}-{i}") for i in range(n_items)]


# ------------------------------------------------------------------ the rule-made judgement

def analysis(pos, it, i):
    c, x, k = it["answer"], it["finals"][i], it["kinds"][i]
    if x is None:
        return f"Response {pos} gives no final answer: wrong."
    if x != c:
        return f"Response {pos} answers {x}, which is not {c}: wrong."
    if k == "reverse":
        y = it["responses"][i].split(" = ")[1].split(".")[0]
        return f"Response {pos} answers {x}, which is {c}: right, but it writes {it['a']} {it['op']} {it['b']} = {y}, which is wrong."
    if k == "bare":
        return f"Response {pos} answers {x}, which is {c}: right, with no working."
    return f"Response {pos} answers {x}, which is {c}: right, and its working is right."


def working(op, a, b):
    """The criteria's opening (what is asked) and its working (column by column, then the
    result), as every judgement writes them; drills repeat them alone."""
    steps, c = column(op, a, b)
    return (f"Specific Criteria: The question asks for {a} {op} {b}.",
            f" Column by column: {steps}. So {a} {op} {b} = {c}", c)


def drill(rng):
    """A column-working drill: the criteria's opening and working for random operands, without
    the question and responses around them. A judgement's column facts ("7 + 8 = 15") are a few
    of its ~300 tokens; a checkpoint at step 250 had 96% of its results' digits right but 55% of
    its column facts (digit_accuracy.py), so the facts get rows of their own. The three
    operations come equally often: borrows and products are the harder facts."""
    op = rng.choice(["+", "-", "×"])
    a, b = operands(rng, op)
    head, work, _ = working(op, a, b)
    return head, work


def judgement(it, order, rng):
    """The rule's judgement in the paper's format: criteria that work the result out, an
    analysis that checks each response's final answer against it, the boxed scores."""
    a, b, c, op = it["a"], it["b"], it["answer"], it["op"]
    head, work, result = working(op, a, b)
    assert result == c, (a, op, b, result, c)
    w = rng.choice([(70, 20, 10), (60, 30, 10), (80, 10, 10)])
    criteria = (f"{head}{work}, and the final answer must be {c} (weight {w[0]}%); "
                f"the working shown must be right (weight {w[1]}%); "
                f"the answer must be stated clearly (weight {w[2]}%).")
    parts = [analysis(pos + 1, it, i) for pos, i in enumerate(order)]
    scores = [SCORES[it["kinds"][i]] for i in order]
    return f"{criteria}\nAnalysis: {' '.join(parts)}\nScores: \\boxed{{{', '.join(map(str, scores))}}}"
