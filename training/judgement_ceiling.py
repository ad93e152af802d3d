"""What meta-RM voting could gain on judgements `grm eval --judgements` kept: how many items have
at least one right judgement among their k_max draws (no filter can do better than those, plus
a tie's share where every judgement scores all responses alike), and how well the meta scores
order right judgements above wrong ones, over all and within items that have both.
  python training/judgement_ceiling.py EVAL-JUDGEMENTS.jsonl
A judgement is right as grm records it (`correct`: its scores pick out the best response)."""
import json
import sys


def pairwise(pos, neg):
    """(right, wrong) pairs the scores order rightly, ties counting half, and the pairs there are."""
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg), len(pos) * len(neg)


def aucs(by_item):
    """From each item's (right scores, wrong scores): the AUC over all judgements and the AUC
    within the items that have both (None where there are no such pairs), and those items' count."""
    right = [s for p, _ in by_item for s in p]
    wrong = [s for _, n in by_item for s in n]
    won, n = pairwise(right, wrong)
    mixed = [pairwise(p, q) for p, q in by_item if p and q]
    w_won, w_n = sum(x for x, _ in mixed), sum(c for _, c in mixed)
    return won / n if n else None, w_won / w_n if w_n else None, len(mixed)


def fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


def main():
    rows = [json.loads(line) for line in open(sys.argv[1])]
    # Each item's k_max draws (its greedy judgement is a row of its own, `#greedy`).
    rows = [r for r in rows if r["id"].endswith("#draw")]
    some = ties = 0
    by_item = []
    for r in rows:
        samples = r.get("samples", [])
        ok = [bool(s.get("correct")) for s in samples]
        if any(ok):
            some += 1
        elif samples and all(s.get("scores") and len(set(s["scores"]["original"])) == 1 for s in samples):
            ties += 1
        scored = [(s["meta_score"], y) for s, y in zip(samples, ok) if s.get("meta_score") is not None]
        by_item.append(([m for m, y in scored if y], [m for m, y in scored if not y]))
    print(f"{len(rows)} items: {some} with a right judgement, {ties} with none right and every judgement a tie, "
          f"{len(rows) - some - ties} with none right")
    overall, within, mixed = aucs(by_item)
    if overall is not None:
        print(f"meta scores: {sum(len(p) for p, _ in by_item)} right and {sum(len(n) for _, n in by_item)} wrong "
              f"judgements, AUC {fmt(overall)}; within the {mixed} items with both, {fmt(within)}")


if __name__ == "__main__":
    main()
