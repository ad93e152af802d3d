"""The embedded GRM's second domain: arithmetic where only the arithmetic tells right from
wrong (issue: "an embedded judge that checks the answer").

The first domain (domain.py) let a response's form give it away: right answers had one set of
forms and each mistake its own, so the GRM learned the forms, and a person's own arithmetic was
judged at chance. Here every form of answer (digits only, a sentence, an equation with the sign
spaced or not, an equation then an answer, the operation in words, worked column steps, working
by parts, a word-problem sentence) is drawn for right and wrong responses alike, often one form
for every response of an item, and the wrong ones are wrong in the number only: off by one, off
by ten or a hundred, a dropped carry or borrow (with the working that makes it), the wrong
operation, two digits swapped, a right equation with a wrong final answer; and the reverse, a
right final answer after a wrong equation, which scores between. Working in chained sentences
(stepwise) puts several numbers between the question's and the answer, and some answers are
written against "=" ("Total=56"): of the eleventh stage's 21 misnamed held-out answers (greedy,
60 pairs), 9 were a number from inside a chain of working and 6 a fragment of an unspaced
equation. An opener and a closer frame
some responses (framed), so that an answer is the last number wherever its form puts it.
Operands up to three digits for + and -, up to three digits times one for ×.

Questions are composed, so that the judge learns to find the operation and its numbers rather
than a few sentences: a bare expression (signs as +, plus, -, −, minus, ×, x, X, *, times,
spaced or not, the numbers of + and × in either order) inside one of ~40 openings and endings; a
phrase in words ("17 less than 40", "3 lots of 25") or an order ("Subtract 17 from 40", "Double
12") inside their own; or a word problem composed of a start, a change and a question about
~50 names (some non-ASCII) and ~60 things, sometimes with an aside between the numbers and the
question. The first stage's 24 phrasings and 9 word problems (de80e44) left held-out questions'
operands misread in 33 of 60 judgements; the tenth stage's (~26 word problems, 6 phrases for ×)
still misread 13 of 60, all in held-out phrasings, so the eleventh's data adds 28 word-problem
structures (11 for ×, the count of groups and the size of each in either order and in separate
sentences), 28 phrases and orders, and unspaced "12x6". The eleventh still read × as - in 3
of its 6 held-out pairs without a right judgement among 8, so the twelfth's makes × a third of
the questions, with 12 more × word problems whose one-digit factor comes late ("every basket
holds 6"), 9 more × phrases and orders, and one-letter signs unspaced half the time.
heldout_overlap.py checks that no held-out question shares a template with these.

The judgement computes: its criteria name each response's final answer (before the result is
written, so that a copied number cannot drift to it), work the result out column by column
(digits are single tokens), then the analysis compares each answer with the result, so the
score follows from the check. Scores: a right answer with right working 9, a bare right answer
8, a right answer after wrong working 5, a wrong answer 2, no answer 1.

Same interface as domain.py (split, judgement, request), so the training scripts take either.
The held-out generator (arith_heldout.py) is separate: no held-out question has the template of
a question drawn here (numbers, names and things masked; 0 of 400 at 300,000 draws), and no
held-out answer form is drawn here except bare digits.
"""
import random

# The request form is the first domain's: the same keys, read the same way by grm.
from domain import request  # noqa: F401

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}
SCORES = {"right": 9, "bare": 8, "reverse": 5, "wrong": 2, "none": 1}

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lena", "Mo", "Nia",
         "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Vic", "Wen", "Yara", "Zoe", "Luis", "Mei", "Noor", "Olga",
         "Zoë", "José", "Søren", "Aylin", "Bodhi", "Carmen", "Dmitri", "Esi", "Farah", "Ilse", "Juan", "Kenji",
         "Leila", "Matteo", "Ngozi", "Pavel", "Rania", "Tariq", "Ulla", "Yusuf", "my sister", "my dad", "our teacher"]
THINGS = ["apples", "books", "coins", "marbles", "pens", "stickers", "cards", "shells", "cookies", "stamps",
          "chairs", "bottles", "tickets", "seeds", "bricks", "boxes", "eggs", "nails", "cups", "plates",
          "shirts", "beads", "buttons", "candles", "leaves", "photos", "songs", "pages", "bikes", "kites",
          "pencils", "bananas", "rocks", "toys", "cars", "sheep", "trees", "letters", "emails", "points",
          "dollars", "euros", "minutes", "steps", "miles", "students", "people", "birds", "fish", "flowers",
          "loaves", "bags", "socks", "hats", "spoons", "tiles", "files", "boats", "lemons", "badges"]
PLACES = ["a shop", "a school", "a farm", "a library", "a bakery", "a garden", "a warehouse", "a club",
          "the museum", "the café", "our office", "the zoo", "a hotel", "the station"]

# The operators as people write them. For a question the numbers can come in either order for +
# and ×; the criteria always name a + b (the order the item holds) and a × b (b the one-digit
# factor), and a - b, whichever order the words put them in: finding them is the judge's work.
SIGNS = {"+": ["+", "+", "+", "plus"], "-": ["-", "-", "-", "minus", "−"], "×": ["×", "x", "*", "times", "X", "x"]}
# (prefix, suffix) around a bare expression "a + b".
AROUND = [("What is ", "?"), ("what is ", "?"), ("What is ", ""), ("Compute ", "."), ("compute ", ""),
          ("Calculate ", "."), ("Calculate: ", ""), ("Evaluate ", "."), ("Solve ", "."), ("Solve: ", ""),
          ("Please calculate ", "."), ("Can you calculate ", "?"), ("Could you compute ", " for me?"),
          ("Tell me ", "."), ("I need ", ", thanks."), ("Quick question: what is ", "?"), ("Help me with ", "?"),
          ("", " = ?"), ("", "=?"), ("", " =?"), ("", "= ?"), ("", "?"), ("", ""), ("", "."), ("Q: ", "?"),
          ("Question: ", " = ?"), ("Math homework: ", ""), ("Do ", " for me."), ("Give me ", "."),
          ("What does ", " equal?"), ("What does ", " come to?"), ("Hi! What is ", "?"), ("What would ", " be?"),
          ("Figure out ", "."), ("Answer this: ", ""), ("So what is ", "?"), ("Can someone tell me ", "?"),
          ("Check: ", " = ?"), ("Mental math: ", ""), ("Exercise 3. ", " = ?"), ("¿Cuánto es ", "?")]
# Phrases that name the operation in words: (text, the order the numbers appear in). "ab": a
# then b; "ba": b then a (for -, "subtract b from a" still asks for a - b).
PHRASES = {
    "+": [("the sum of {a} and {b}", "ab"), ("the total of {a} and {b}", "ab"), ("{a} and {b} added together", "ab"),
          ("{a} increased by {b}", "ab"), ("{a} with {b} added", "ab"), ("{a} more than {b}", "ab"),
          ("{a} added to {b}", "ab"), ("{a} and {b} combined", "ab"), ("{a} plus another {b}", "ab"),
          ("{b} on top of {a}", "ba"), ("{a} together with {b}", "ab"), ("the result of adding {a} and {b}", "ab"),
          ("{a} joined by {b} more", "ab")],
    "-": [("{a} take away {b}", "ab"), ("{a} less {b}", "ab"), ("{a} decreased by {b}", "ab"),
          ("{a} reduced by {b}", "ab"), ("{b} less than {a}", "ba"), ("{b} subtracted from {a}", "ba"),
          ("the difference of {a} and {b}", "ab"), ("{a} with {b} removed", "ab"), ("{b} fewer than {a}", "ba"),
          ("{a} after taking off {b}", "ab"), ("{a} once {b} is subtracted", "ab"), ("the gap between {a} and {b}", "ab"),
          ("what remains of {a} after {b} go", "ab")],
    "×": [("the product of {a} and {b}", "ab"), ("{a} when multiplied by {b}", "ab"), ("{b} groups of {a}", "ba"),
          ("{b} lots of {a}", "ba"), ("{a} copies of {b}", "ab"), ("{b} sets of {a}", "ba"),
          ("{a} taken {b} times", "ab"), ("{b} times as many as {a}", "ba"), ("{a} repeated {b} times", "ab"),
          ("{b} batches of {a}", "ba"), ("{a} groups of {b}", "ab"), ("{b} helpings of {a}", "ba"),
          ("{a}, {b} times over", "ab"), ("{b} rounds of {a}", "ba"), ("{b} piles of {a}", "ba"),
          ("{a} scaled up {b} times", "ab"), ("{b} stacks of {a}", "ba")],
}
PHRASE_AROUND = [("What is ", "?"), ("Compute ", "."), ("Calculate ", "."), ("Tell me ", "."), ("What do I get for ", "?"),
                 ("I want ", "."), ("Please give ", "."), ("", "?"), ("What is ", " equal to?"), ("Can you get ", "?"),
                 ("What number is ", "?"), ("Quickly: ", "?"), ("Give ", ", please."), ("How big is ", "?"),
                 ("I'd like to know ", "."), ("Hey, what is ", "?"), ("Homework: find ", "."), ("Need ", " asap")]
# Orders in the imperative.
ORDERS = {
    "+": [("Add {a} and {b}", "ab"), ("Add {a} to {b}", "ab"), ("Add up {a} and {b}", "ab"), ("Sum {a} and {b}", "ab"),
          ("Put {a} and {b} together", "ab"), ("Combine {a} with {b}", "ab"), ("Start at {a} and count on {b}", "ab"),
          ("Increase {a} by {b}", "ab"), ("Total {a} and {b}", "ab"), ("Add {b} onto {a}", "ba"),
          ("Take {a} and add {b}", "ab"), ("Put {b} with {a}", "ba"), ("Add on {b} to {a}", "ba"),
          ("Count {a} and {b} together", "ab")],
    "-": [("Subtract {b} from {a}", "ba"), ("Take {b} from {a}", "ba"), ("Deduct {b} from {a}", "ba"),
          ("Remove {b} from {a}", "ba"), ("Take {a} and subtract {b}", "ab"), ("Start at {a} and count back {b}", "ab"),
          ("Go down {b} from {a}", "ba"), ("Decrease {a} by {b}", "ab"), ("Minus {b} from {a}", "ba"),
          ("Take away {b} from {a}", "ba"), ("Knock {b} off {a}", "ba"), ("Reduce {a} by {b}", "ab"),
          ("Take {b} off {a}", "ba")],
    "×": [("Multiply {a} by {b}", "ab"), ("Multiply {a} and {b}", "ab"), ("Times {a} by {b}", "ab"),
          ("Double {a}", "a2"), ("Triple {a}", "a3"), ("Multiply {b} by {a}", "ba"), ("Scale {a} by {b}", "ab"),
          ("Multiply together {a} and {b}", "ab"), ("Take {a}, {b} times", "ab"), ("Quadruple {a}", "a4"),
          ("Repeat {a} {b} times and add them up", "ab"), ("Make {b} copies of {a} and count them", "ba"),
          ("Count {b} groups of {a}", "ba"), ("Take {b} stacks of {a} and total them", "ba"),
          ("Give {b} people {a} each and count the lot", "ba")],
}
ORDER_AROUND = [("", "."), ("Please ", "."), ("Can you ", "?"), ("", ""), ("Quickly, ", "."), ("", ". What do you get?"),
                ("", ". What is the result?"), ("", " and tell me the answer."), ("Could you ", " for me?"), ("", ", please."),
                ("Now ", "."), ("", ". How much is that?"), ("Try this: ", ".")]
# Word problems, composed: a start, a change and a question for each operation. {n} a name,
# {t} a thing; "ba" where b comes first in the text.
STORY_START = {
    "+": [("{N} has {a} {t}. Then {n} gets {b} more.", "ab"), ("{N} had {a} {t} and bought {b} more.", "ab"),
          ("{N} counted {a} {t} yesterday and {b} today.", "ab"), ("{N} found {a} {t} in one box and {b} in another.", "ab"),
          ("{N} was given {b} {t} after already having {a}.", "ba"), ("{P} starts the day with {a} {t} and receives {b}.", "ab"),
          ("There were {a} {t} at {p}; {b} more came in.", "ab"), ("{P} has {a} {t} on one shelf and {b} on another.", "ab"),
          ("{N} scored {a} {t} in the first game and {b} in the second.", "ab"),
          ("{N} picked {a} {t} in the morning. In the afternoon {n} picked another {b}.", "ab"),
          ("{P} started the week with {a} {t}. A delivery on Friday brought {b} more.", "ab"),
          ("{N} owns {a} {t}. As a present, {n} is given {b} more.", "ab"),
          ("Last year {p} had {a} {t}. This year it added {b}.", "ab"),
          ("{N} puts {b} {t} into a box that already holds {a}.", "ba"),
          ("A jar has {a} {t} in it. {N} drops in {b} more.", "ab"),
          ("{b} {t} were added to the {a} that {p} already had.", "ba"),
          ("{N} and a friend pool their {t}: {n} brings {a} and the friend brings {b}.", "ab"),
          ("First {n} gets {a} {t}. Next, {b} more arrive.", "ab")],
    "-": [("{N} has {a} {t} and gives {b} to a friend.", "ab"), ("{N} had {a} {t}; {b} broke.", "ab"),
          ("{N} bought {a} {t} and used {b}.", "ab"), ("{N} had {a} {t} and lost {b}.", "ab"),
          ("{P} sold {b} of its {a} {t}.", "ba"), ("{N} ate {b} of the {a} {t}.", "ba"),
          ("There were {a} {t} at {p}, and {b} were taken away.", "ab"), ("{P} had {a} {t}. It gave out {b}.", "ab"),
          ("Out of {a} {t}, {b} were sold.", "ab"),
          ("{N} baked {a} {t}. Later, {b} of them were eaten.", "ab"),
          ("{P} ordered {a} {t}, but {b} of them arrived damaged.", "ab"),
          ("{N} started with {a} {t}. After the trip, {b} were gone.", "ab"),
          ("A crate held {a} {t}. {N} took out {b}.", "ab"),
          ("Of the {a} {t} at {p}, {b} have been given away.", "ab"),
          ("{N} had {a} {t} in the morning. By the evening {n} had sold {b} of them.", "ab"),
          ("{b} of the {a} {t} at {p} were sent back.", "ba"),
          ("{N} collected {a} {t} and shared {b} of them out.", "ab")],
    "×": [("{N} buys {a} packs with {b} {t} in each.", "ab"), ("{P} has {b} shelves with {a} {t} on each.", "ba"),
          ("{N} collects {a} {t} a day for {b} days.", "ab"), ("{P} gets {b} boxes, each holding {a} {t}.", "ba"),
          ("There are {a} rows of {b} {t} at {p}.", "ab"), ("{N} fills {b} bags with {a} {t} each.", "ba"),
          ("Each of {a} tables has {b} {t}.", "ab"), ("{N} makes {b} trips and carries {a} {t} each time.", "ba"),
          ("{P} sets out {a} trays of {t}, {b} on each tray.", "ab"),
          ("{N} ordered {a} cartons of {t}. Every carton holds {b}.", "ab"),
          ("At {p} there are {a} stacks of {t}; each stack has {b}.", "ab"),
          ("{N} saves {b} {t} a week for {a} weeks.", "ba"),
          ("{a} crates of {t} arrive at {p}, and each crate contains {b}.", "ab"),
          ("{N} has {a} bags. In every bag there are {b} {t}.", "ab"),
          ("{b} {t} fit in one box, and {N} fills {a} boxes.", "ba"),
          ("{P} has {a} shelves of {t}. There are {b} on each shelf.", "ab"),
          ("{N} plants {a} lines of {t} with {b} per line.", "ab"),
          ("Each of the {a} classes at {p} gets {b} {t}.", "ab"),
          ("{N} lays out {a} columns of {t}, {b} per column.", "ab"),
          ("{N} has {a} baskets, and every basket holds {b} {t}.", "ab"),
          ("{P} stacks {t} on {a} pallets. Each pallet takes {b}.", "ab"),
          ("{N} hands out {t} to {a} children, {b} apiece.", "ab"),
          ("{a} families visit {p}, and every family brings {b} {t}.", "ab"),
          ("{P} needs {b} {t} for each of its {a} rooms.", "ba"),
          ("A tray holds {b} {t}. {N} has {a} full trays.", "ba"),
          ("{N} packs {a} parcels and puts {b} {t} in every parcel.", "ab"),
          ("{P} runs {a} buses, and each bus carries {b} {t}.", "ab"),
          ("There are {a} teams at {p}. Every team has {b} {t}.", "ab"),
          ("{N} buys {t} in packets of {b} and gets {a} packets.", "ba"),
          ("{a} shelves line the wall at {p}; every shelf holds {b} {t}.", "ab"),
          ("{N} earns {b} {t} for every game and plays {a} games.", "ba")],
}
STORY_ASK = {
    "+": ["How many {t} does {n} have now?", "How many {t} in total?", "How many {t} altogether?",
          "What is the total number of {t}?", "How many {t} are there now?", "How many is that?"],
    "-": ["How many {t} are left?", "How many {t} remain?", "How many are still there?",
          "How many {t} are there now?", "What is left?", "How many {t} does that leave?"],
    "×": ["How many {t} in all?", "How many {t} is that altogether?", "What is the total number of {t}?",
          "How many {t} are there?", "How many {t} does that make?", "How many {t} are there in total?",
          "Count the {t}: how many?", "What is the full count of {t}?"],
}
# A sentence a word problem can carry between its numbers and its question, so that the
# operands are not always in the sentence just before the question.
STORY_ASIDE = ["It was a busy day.", "Nobody else helped.", "The weather was fine.", "That was on a Monday.",
               "Everyone was pleased.", "It took a while.", "No one kept a list."]
# The sentence a word-problem answer can end with.
STORY_SAY = {
    "+": ["{N} has {x} {t} now.", "There are {x} {t}.", "{x} {t} in total.", "That makes {x} {t}.", "{x} {t} altogether."],
    "-": ["{x} {t} are left.", "{x} {t} remain.", "There are {x} {t} now.", "That leaves {x} {t}.", "Still {x} {t}."],
    "×": ["There are {x} {t} in total.", "That is {x} {t}.", "{x} {t} in all.", "It makes {x} {t}.", "All together {x} {t}."],
}


def operands(rng, op):
    def number(lo_digits, hi_digits):
        d = rng.randint(lo_digits, hi_digits)
        return rng.randint(10 ** (d - 1) if d > 1 else 2, 10 ** d - 1)
    if op == "+":
        # Half the time b has as many digits as a: with the lengths drawn apart, b lacked a's top
        # column two times in three where a had three digits, and the fifth stage's working
        # dropped b's hundreds ("621 + 145": "H: 6, write 6") in 6 of 60 held-out judgements.
        a = number(1, 3)
        return a, (number(len(str(a)), len(str(a))) if rng.random() < 0.5 else number(1, 3))
    if op == "-":
        a = number(2, 3)
        return a, rng.randint(1, a - 1)
    return number(1, 3), rng.randint(2, 9)


def cap(s):
    return s[0].upper() + s[1:]


def question(rng):
    """(question, op, a, b, result, ctx): a + b, a - b or a × b (b one digit), asked in one of
    four ways, bare expression, a phrase in words, an order, a word problem."""
    # × a third of the time (a fifth up to the eleventh stage, whose held-out greedy judgements
    # still read 3 of 7 × word problems and "12x6" as -).
    op = rng.choice(["+", "+", "-", "-", "×", "×"])
    a, b = operands(rng, op)
    way = rng.choices(["bare", "phrase", "order", "story"], weights=[4, 2, 2, 4])[0]
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    place = rng.choice(PLACES)
    ctx = {"n": name, "N": cap(name), "t": thing, "p": place, "P": cap(place), "story": None}
    if way == "bare":
        sign = rng.choice(SIGNS[op])
        x, y = (b, a) if op != "-" and rng.random() < 0.3 else (a, b)
        # Words need their spaces; a one-letter x or X is written against its numbers too ("12x6").
        gap = " " if len(sign) > 1 or rng.random() < 0.5 else ""
        pre, post = rng.choice(AROUND)
        q = f"{pre}{x}{gap}{sign}{gap}{y}{post}"
    elif way in ("phrase", "order"):
        text, order = rng.choice(PHRASES[op] if way == "phrase" else ORDERS[op])
        if order in ("a2", "a3", "a4"):
            b = int(order[1])
        pre, post = rng.choice(PHRASE_AROUND if way == "phrase" else ORDER_AROUND)
        text = text.format(a=a, b=b)
        q = cap(pre + (text[0].lower() + text[1:] if pre else text) + post)
    else:
        text, _ = rng.choice(STORY_START[op])
        aside = " " + rng.choice(STORY_ASIDE) if rng.random() < 0.25 else ""
        q = text.format(a=a, b=b, **ctx) + aside + " " + rng.choice(STORY_ASK[op]).format(**ctx)
        ctx["story"] = rng.choice(STORY_SAY[op])
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

FORMS = ["digits", "sentence", "equation", "eq_answer", "words", "worked", "parts", "story", "steps"]
WRONG = ["off_by_one", "off_by_ten", "drop_carry", "wrong_op", "swap", "inconsistent"]
SWAP_OP = {"+": "-", "-": "+", "×": "+"}
# How a response can state its final answer x.
SAY = ["The answer is {x}.", "It is {x}.", "{x} is the answer.", "Answer: {x}", "So it is {x}.", "That makes {x}.",
       "We get {x}.", "My answer is {x}.", "I think it is {x}.", "{x}.", "It equals {x}.", "Final answer: {x}",
       "The result is {x}", "It comes to {x}.", "Easy: {x}", "That's {x}!", "{x} for sure.", "Total: {x}", "I got {x}",
       "Should be {x}.", "**{x}**", "Pretty sure it's {x}.", "Ans: {x}", "→ {x}", "The result: {x}.", "Answer={x}",
       "Total={x}", "result={x}", "So, ={x}"]


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


# Words around a response, drawn for right and wrong alike: an opener (some restate the
# question's numbers, so that the first number of a response is often not its answer) and a
# closer without numbers (so that a response's answer is not always its last token). The sixth
# stage named 112 of 120 in-distribution answers rightly but 87 of 120 held-out ones, most
# often as a held-out response's first number: the answer forms alone let the copy find the
# answer by a form's place, not as the last number written.
OPENERS = ["Let me see.", "OK.", "Sure!", "Hmm.", "Easy one.", "Let's work it out.", "Here goes:", "Right, so",
           "Good question!", "Alright.", "We have {a} and {b}.", "The numbers are {a} and {b}, so", "Starting from {a}:",
           "{a} {s} {b}:", "{a} {s} {b}?", "Take {a} and {b}.", "Step 1: read off {a} and {b}.", "Given {a} and {b},",
           "First I note {a}, then {b}.", "With {b} and {a}:", "Working with {a}.", "So, {b} and {a}."]
CLOSERS = [" Hope that helps!", " Done.", " :)", " Let me know if you need more.", " I checked it twice.",
           " That's my final answer.", " Hope this is right.", " Cheers!", " (done in my head)", " Easy.",
           " Thanks for asking!", " QED."]
OPEN_P, CLOSE_P = 0.3, 0.2


def framed(rng, text, op, a, b):
    """A response with an opener before it and a closer after it, each drawn apart."""
    if rng.random() < OPEN_P:
        sign = rng.choice(SIGNS[op])
        text = rng.choice(OPENERS).format(a=a, b=b, s=sign) + " " + text
    if rng.random() < CLOSE_P:
        text += ("." if text[-1].isalnum() else "") + rng.choice(CLOSERS)
    return text


def say(rng, x):
    return rng.choice(SAY).format(x=x)


def equation(rng, op, a, b, x, verb=None):
    """`a op b = x` as people write it: the sign for × as ×, x or *, with or without spaces
    around it, or `is`/`equals`/`makes` for `=`."""
    sign = {"×": rng.choice(["×", "x", "*"])}.get(op, op)
    # "12+7 = 19" but never "12+7=19": that whole form is the held-out split's (arith_heldout.py).
    gap = " " if rng.random() < 0.75 else ""
    eq = verb or rng.choice(["=", "=", "=", "is", "equals", "makes"])
    return f"{a}{gap}{sign}{gap}{b} {eq} {x}"


def parts(op, a, b, x):
    """Working by parts (the tens of b, then its ones; for ×, the tens of a then its ones), the
    final step's result x (a slip shows there)."""
    if op == "×":
        tens, ones = a - a % 10, a % 10
        return f"{tens} × {b} = {tens * b} and {ones} × {b} = {ones * b}, so {a} × {b} = {tens * b} + {ones * b} = {x}."
    tens, ones = b - b % 10, b % 10
    mid = OPS[op](a, tens)
    return f"First {a} {op} {tens} = {mid}, then {mid} {op} {ones} = {x}."


def stepwise(op, a, b, x):
    """Working in sentences, each step an equation whose result the next one starts from, the
    final step's result x: several numbers come between the question's and the answer, which is
    the last (see the module's docstring for why)."""
    if op == "×":
        tens, ones = a - a % 10, a % 10
        if not ones:
            return f"{b} × {tens} = {x}."
        return f"{b} × {tens} = {tens * b}. {b} × {ones} = {ones * b}. {tens * b} + {ones * b} = {x}."
    tens, ones = b - b % 10, b % 10
    if not ones:
        return f"{a} {op} {tens} = {x}."
    mid = OPS[op](a, ones)
    return f"{a} {op} {ones} = {mid}. {mid} {op} {tens} = {x}."


def response(rng, form, kind, op, a, b, c, ctx):
    """(text, final answer or None, shows working, the equation's value where it differs from
    the final answer). kind: right, wrong:<how>, reverse, none."""
    if kind == "none":
        return rng.choice([f"We need to work with {a} and {b}.", "I am not sure how to solve this.",
                           f"First look at {a}, then at {b}.", "This needs some arithmetic.",
                           f"The numbers are {a} and {b}.", "Sorry, I can't do this one.", "Let me think about it.",
                           f"Hmm, {a} and {b}... no idea."]), None, False, None
    if kind == "reverse":
        # A wrong equation, then the right final answer.
        y = wrong_value(rng, rng.choice(WRONG[:5]), op, a, b, c)
        return f"{equation(rng, op, a, b, y, '=')}. " + say(rng, c), c, True, y
    how = kind.split(":")[1] if kind.startswith("wrong") else None
    x = c if how is None else wrong_value(rng, how, op, a, b, c)
    if how == "inconsistent":
        return f"{equation(rng, op, a, b, c, '=')}. " + say(rng, x), x, True, None
    if form == "story" and ctx["story"] is None:
        form = "sentence"
    if form in ("parts", "steps") and (b < 10 if op != "×" else a < 10):
        form = "worked"
    if form == "digits":
        return str(x), x, False, None
    if form == "sentence":
        return say(rng, x), x, False, None
    if form == "equation":
        return equation(rng, op, a, b, x), x, True, None
    if form == "eq_answer":
        return f"{equation(rng, op, a, b, x, '=')}. " + say(rng, x), x, True, None
    if form == "words":
        word = {"+": "plus", "-": "minus", "×": "times"}[op]
        return rng.choice([f"{a} {word} {b} is {x}.", f"{a} {word} {b} equals {x}", f"{a} {word} {b} makes {x}."]), x, True, None
    if form == "story":
        return ctx["story"].format(x=x, **{k: v for k, v in ctx.items() if k != "story"}), x, False, None
    if form == "parts":
        return parts(op, a, b, x), x, True, None
    if form == "steps":
        return stepwise(op, a, b, x), x, True, None
    # worked: column steps; a dropped carry shows its own wrong steps, other mistakes a slip
    # at the end.
    steps, _ = column(op, a, b, drop_carry=how == "drop_carry")
    lead = rng.choice(["Column by column: ", "Working in columns: ", "By columns, ones first: ", ""])
    return f"{lead}{steps}. So {equation(rng, op, a, b, x, '=')}.", x, True, None


def item(rng, n, idx, any_right=False):
    """One item of n responses. A group (n >= 2) has one right answer, or with `any_right`, half
    the time, any number from none to all: a trainer's group of a policy's samples often has
    none right or several. With one right in every group, the sixth stage's judgements read
    none right as a misreading of their own and wrote one score more than there were responses
    (a pair's "\\boxed{2, 2, 9}" or "{2, 2, 8}": 16 of 60 held-out greedy judgements; 18 had
    the wrong count, 15 of them after a wrong result), as if a right one had to come."""
    q, op, a, b, c, ctx = question(rng)
    if n == 1:
        kinds = [rng.choice(["right", "right", "wrong", "wrong", "reverse", "none"])]
    else:
        # The right answers; the others wrong (at most one reverse and one without an answer).
        rights = rng.randint(0, n) if any_right and rng.random() < 0.5 else 1
        kinds = ["right"] * rights
        extra = [k for k in ("reverse", "none") if rng.random() < 0.25]
        kinds += extra[: n - rights]
        while len(kinds) < n:
            kinds.append("wrong")
        rng.shuffle(kinds)
    # Often every response takes one form, so that only the number tells them apart.
    same = rng.choice(FORMS) if rng.random() < 0.35 else None
    responses, finals, kinds_out, mistakes, wrote = [], [], [], [], []
    for drawn in kinds:
        for _ in range(40):
            # A wrong answer's kind is drawn again with its form: one kind can give one value.
            k = "wrong:" + rng.choice(WRONG) if drawn == "wrong" else drawn
            t, f, work, y = response(rng, same or rng.choice(FORMS), k, op, a, b, c, ctx)
            if t not in responses and (k == "none" or k == "right" or k == "reverse" or f not in finals):
                break
        responses.append(t)
        finals.append(f)
        wrote.append(y)
        kinds_out.append(("right" if work else "bare") if k == "right" else k.split(":")[0])
        mistakes.append(k.split(":")[1] if k.startswith("wrong:") else None)
    responses = [framed(rng, t, op, a, b) for t in responses]
    it = {"id": f"{idx}", "query": q, "responses": responses, "kinds": kinds_out, "mistakes": mistakes, "finals": finals,
          "wrote": wrote, "op": op, "a": a, "b": b, "answer": c}
    if n >= 2:
        # The best is the response scored above every other, where there is one (grm's label).
        scores = [SCORES[k] for k in kinds_out]
        top = max(scores)
        it["label"] = {"best": scores.index(top)} if scores.count(top) == 1 else None
    else:
        it["label"] = {"rating": SCORES[kinds_out[0]]}
        it["correct"] = kinds_out[0] in ("right", "bare")
    return it


SIZES_8 = ([1, 2, 3, 4, 5, 6, 7, 8], [2, 5, 2, 3, 1, 1, 1, 2])


def split(seed, n_items, prefix, sizes=SIZES_8, any_right=False):
    rng = random.Random(seed)
    return [item(rng, rng.choices(sizes[0], weights=sizes[1])[0], f"{prefix}-{i}", any_right)
            for i in range(n_items)]


# ------------------------------------------------------------------ the rule-made judgement

def analysis(pos, it, i):
    c, x, k = it["answer"], it["finals"][i], it["kinds"][i]
    if x is None:
        return f"Response {pos} gives no final answer: wrong."
    if x != c:
        return f"Response {pos} answers {x}, which is not {c}: wrong."
    if k == "reverse":
        y = it["wrote"][i]
        return f"Response {pos} answers {x}, which is {c}: right, but it writes {it['a']} {it['op']} {it['b']} = {y}, which is wrong."
    if k == "bare":
        return f"Response {pos} answers {x}, which is {c}: right, with no working."
    return f"Response {pos} answers {x}, which is {c}: right, and its working is right."


def stated(pos, it, i):
    """What a response answers, as the criteria name it before the working, while the
    judgement's own result is not yet written: copied after it (the analysis alone, up to step
    1,668 of the first stage), 21% of these digits were wrong, most towards that result (at
    step 567 of the second stage, 73 of 120 held-out answers named rightly, most wrong ones
    the response's first number). The analysis repeats the sentence's number.

    The third stage (1c1a372) quoted a response of up to 24 characters first (`Response 2 says
    "766", so it answers 766.`), so that the copy ran from the response's start as an induction
    copy does; at step ~540 of 803 it named fewer answers rightly than the second stage on the
    same pairs (held-out 32 of 60 against 38, in-distribution 41 against 48): this small model
    starts a quote rightly and then writes on ("766" quoted as "766 + 145 = 621. 621."), or
    stops at the first sign ("399-2=397" as "399"); 10 of 33 quotes were exact."""
    x = it["finals"][i]
    return f" Response {pos} gives no final answer." if x is None else f" Response {pos} answers {x}."


# Place labels (hundreds, tens, ones): one token each in the GRM's vocabulary.
COLUMNS = "HTO"


def places(n):
    """An operand with its places named, most significant first: 287 as "H2 T8 O7"."""
    s = str(n)
    assert len(s) <= len(COLUMNS), n
    return " ".join(f"{p}{d}" for p, d in zip(COLUMNS[-len(s):], s))


def working(op, a, b):
    """The criteria's opening (what is asked) and its working, as every judgement writes them;
    drills repeat them alone. The working names each operand's places ("H2 T8 O7 and H5 T9 O8"),
    then works column by column, each column under its place ("O: 7 + 8 = 15, write 5 carry 1;
    T: ..."), then writes the result. Without the places (up to the fourth stage) a column had
    to find its digits by their distance from each operand's end, and in 12 of 60 held-out
    judgements of the fourth stage (judged_parts.py) a column took a wrong digit or stopped early ("15 × 5":
    "5 × 5 = 25, write 25"); with them it finds a digit by its place's token."""
    steps, c = column(op, a, b)
    labelled = "; ".join(step if step.startswith("write") else f"{COLUMNS[-1 - i]}: {step}"
                         for i, step in enumerate(steps.split("; ")))
    return (f"Specific Criteria: The question asks for {a} {op} {b}.",
            f" Column by column: {places(a)} and {places(b)}; {labelled}. So {a} {op} {b} = {c}", c)


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
    """The rule's judgement in the paper's format: criteria that name each response's final
    answer and work the result out, an analysis that checks each response's final answer against it, the boxed scores."""
    a, b, c, op = it["a"], it["b"], it["answer"], it["op"]
    head, work, result = working(op, a, b)
    assert result == c, (a, op, b, result, c)
    w = rng.choice([(70, 20, 10), (60, 30, 10), (80, 10, 10)])
    answers = "".join(stated(pos + 1, it, i) for pos, i in enumerate(order))
    criteria = (f"{head}{answers}{work}, and the final answer must be {c} (weight {w[0]}%); "
                f"the working shown must be right (weight {w[1]}%); "
                f"the answer must be stated clearly (weight {w[2]}%).")
    checks = [analysis(pos + 1, it, i) for pos, i in enumerate(order)]
    scores = [SCORES[it["kinds"][i]] for i in order]
    return f"{criteria}\nAnalysis: {' '.join(checks)}\nScores: \\boxed{{{', '.join(map(str, scores))}}}"
