"""Which parts of a checking judge's free judgements are right: the operands and operation it
reads from the question, its column working (against the rule's for the operands it read, so
apart from a misread operand), its result, each response's answer as the criteria name it (apart by
the response's form: bare digits, an equation, words), a short response's quote, and the
number of scores. digit_accuracy.py measures the same digits teacher-forced; this reads the
greedy judgements that `grm eval --judgements` kept, where one wrong token carries on.

    python training/judged_parts.py --items models/eval/test-checked-pairs.jsonl --judgements J [--show 10]

`grm eval` moves each item's best response to a seeded position before it sends it (so that
position tells nothing), and a sample's `order` indexes that list, not the file's: `sent` places
it the same way, and the samples' own `correct` flags check the placement (a mismatch is an
error here). Reading `order` against the file's list, as a first version of this measure did,
made 26 of 120 held-out answers look wrong that were right.
"""
import argparse
import json
import re
from collections import Counter

from arith import column, places, working

MASK = (1 << 64) - 1


def seed_of(text):
    """grm's seed of an id (FNV-1a, crates/grm-cli/src/label_cmd.rs)."""
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def below(seed, n):
    """The first draw of grm's SplitMix64 below n (crates/grm-judge/src/rng.rs)."""
    state = seed
    zone = MASK - (MASK % n)
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        z ^= z >> 31
        if z < zone:
            return z % n


def sent(item):
    """The responses as `grm eval` sends them (parse_item: the best one moved to a seeded
    position), the finals in the same order, and that position."""
    rs = list(zip(item["responses"], finals(item)))
    best = rs.pop(item["best"])
    pos = below(seed_of(item["id"]), len(rs) + 1)
    rs.insert(pos, best)
    return [r for r, _ in rs], [f for _, f in rs], pos


def finals(item):
    """Each response's final answer: the item's own (arith.split writes them), else its last
    number (the held-out split's responses all end with theirs)."""
    if "finals" in item:
        return item["finals"]
    return [int(n[-1]) if (n := re.findall(r"\d+", r)) else None for r in item["responses"]]


def form(response):
    """A response's form, as the answers-named counts split them: a chain of working (two or more
    "="; the eleventh stage named a number inside one for 9 of its 21 misnamed held-out answers)
    and an unspaced equation ("53+403=456", 6 of 21) apart from the other equations."""
    if re.fullmatch(r"\s*\d+\s*", response):
        return "bare"
    if response.count("=") >= 2:
        return "chain"
    if re.search(r"\d=\d", response):
        return "unspaced"
    return "equation" if "=" in response else "words"


def walk(text, a, op, b):
    """Whether the judgement's column working is the rule's for a op b, in either format: with
    the operands' places named (the fifth stage on) or without (up to the fourth)."""
    m = re.search(r" Column by column: .*?(?=\. So \d+ \S \d+ = \d+)", text)
    return bool(m) and m.group(0) in (working(op, a, b)[1].split(". So ")[0],
                                      " Column by column: " + column(op, a, b)[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", required=True, help="the JSONL `grm eval` read")
    ap.add_argument("--judgements", required=True, help="what `grm eval --judgements` kept")
    ap.add_argument("--show", type=int, default=0, help="print so many wrongly named answers")
    a = ap.parse_args()
    items = {}
    with open(a.items) as f:
        for line in f:
            if line.strip():
                it = json.loads(line)
                items[it["id"]] = it
    c = Counter()
    shown = 0
    with open(a.judgements) as f:
        judgements = [json.loads(line) for line in f if line.strip()]
    for j in judgements:
        if not j["id"].endswith("#greedy"):
            continue
        it = items[j["id"].rsplit("#", 1)[0]]
        responses, answers, best = sent(it)
        s = j["samples"][0]
        text, order = s["text"], s["order"]
        c["judgements"] += 1
        scores = (s.get("scores") or {}).get("original")
        if scores and scores.count(max(scores)) == 1 and s.get("correct") is not None:
            if (scores.index(max(scores)) == best) != s["correct"]:
                raise SystemExit(f"{j['id']}: the placement of the best response does not match grm eval's")
        c["correct"] += bool(s.get("correct"))
        truth = answers[best]
        asked = re.search(r"asks for (\d+) (\S) (\d+)\.", text)
        numbers = sorted(int(x) for x in re.findall(r"\d+", it["query"]))
        c["operands"] += bool(asked and sorted([int(asked.group(1)), int(asked.group(3))]) == numbers)
        walked = asked and asked.group(2) in "+-×" and walk(text, int(asked.group(1)), asked.group(2),
                                                          int(asked.group(3)))
        c["working"] += bool(walked)
        listed = re.search(r"Column by column: ([HTO]\d(?: [HTO]\d)*) and ([HTO]\d(?: [HTO]\d)*);", text)
        if listed:
            c["places named"] += 1
            c["places right"] += bool(asked) and (listed.group(1), listed.group(2)) == (
                places(int(asked.group(1))), places(int(asked.group(3))))
        result = re.search(r"So \d+ \S \d+ = (\d+)", text)
        c["result"] += bool(result and truth is not None and int(result.group(1)) == truth)
        box = re.search(r"\\boxed\{([^}]*)\}", text)
        c["score count"] += bool(box and len(box.group(1).split(",")) == len(order))
        criteria = text.split("Column by column")[0]
        all_named = True
        for pos, i in enumerate(order):
            want, kind = answers[i], form(responses[i])
            m = re.search(rf"Response {pos + 1}(?: says \"(.*?)\", so it)? (?:answers (\d+)|gives no)", criteria)
            named = int(m.group(2)) if m and m.group(2) else None
            ok = bool(m) and named == want
            all_named &= ok
            c[f"answers {kind}"] += 1
            c[f"answers {kind} right"] += ok
            if m and m.group(1) is not None:
                c["quoted"] += 1
                c["quoted exactly"] += m.group(1) == responses[i]
            if not ok and shown < a.show:
                shown += 1
                print(f"{j['id']} Response {pos + 1} = {responses[i]!r}: named {named}, its answer {want}")
        c["all answers"] += all_named
    n = c["judgements"]
    print(f"{n} greedy judgements: right {c['correct']}; operands read {c['operands']}; "
          f"working right for the operands read {c['working']}; result right {c['result']}; "
          f"every answer named rightly {c['all answers']}; score count right {c['score count']}")
    kinds = [k for k in ("bare", "equation", "chain", "unspaced", "words") if c[f"answers {k}"]]
    named = sum(c[f"answers {k} right"] for k in kinds)
    total = sum(c[f"answers {k}"] for k in kinds)
    print(f"answers named rightly {named}/{total}: " +
          ", ".join(f"{k} {c[f'answers {k} right']}/{c[f'answers {k}']}" for k in kinds) +
          (f"; quoted {c['quoted']}, exactly {c['quoted exactly']}" if c["quoted"] else ""))
    if c["places named"]:
        print(f"operands' places named in {c['places named']}, rightly for the operands read in {c['places right']}")


if __name__ == "__main__":
    main()
