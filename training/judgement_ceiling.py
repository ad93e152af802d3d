"""What meta-RM voting could gain on judgements `grm eval --judgements` kept: how many items have
at least one right judgement among their k_max draws (no filter can do better than those, plus
a tie's share where every judgement scores all responses alike), and how well the meta scores
order right judgements above wrong ones, over all and within items that have both.
  python training/judgement_ceiling.py EVAL-JUDGEMENTS.jsonl
A judgement is right as grm records it (`correct`: its scores pick out the best response)."""
import json
import sys


def pairwise(pos, neg):
    """The share of (right, wrong) pairs the scores order rightly, ties counting half."""
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg), len(pos) * len(neg)


def main():
    rows = [json.loads(line) for line in open(sys.argv[1])]
    # Each item's k_max draws (its greedy judgement is a row of its own, `#greedy`).
    rows = [r for r in rows if r["id"].endswith("#draw")]
    some = ties = mixed = 0
    right, wrong, within = [], [], [0.0, 0]
    for r in rows:
        samples = r.get("samples", [])
        ok = [bool(s.get("correct")) for s in samples]
        if any(ok):
            some += 1
        elif samples and all(s.get("scores") and len(set(s["scores"]["original"])) == 1 for s in samples):
            ties += 1
        scored = [(s["meta_score"], y) for s, y in zip(samples, ok) if s.get("meta_score") is not None]
        pos = [m for m, y in scored if y]
        neg = [m for m, y in scored if not y]
        right += pos
        wrong += neg
        if pos and neg:
            mixed += 1
            won, n = pairwise(pos, neg)
            within[0] += won
            within[1] += n
    print(f"{len(rows)} items: {some} with a right judgement, {ties} with none right and every judgement a tie, "
          f"{len(rows) - some - ties} with none right")
    if right and wrong:
        won, n = pairwise(right, wrong)
        w = f"{within[0] / within[1]:.3f}" if within[1] else "n/a"
        print(f"meta scores: {len(right)} right and {len(wrong)} wrong judgements, AUC {won / n:.3f}; "
              f"within the {mixed} items with both, {w}")


if __name__ == "__main__":
    main()
