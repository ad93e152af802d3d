"""Line plots as SVG files (no plotting library needed), in the style of `grm eval --plot`.

    python training/plots.py rl-compare --rft A.json --rl B.json [--rft8 .. --rl8 ..] --out X.svg
    python training/plots.py rlhf --steps steps.jsonl --report report.json --out X.svg
"""
import argparse
import json
import math
import os

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Plot:
    def __init__(self, title, x_label, y_label, x_range, y_range, width=760, height=460, x_log2=False,
                 x_ticks=None, y_ticks=None, y_fmt="{:.0f}%", y_scale=100.0, legend_w=190):
        self.w, self.h = width, height
        self.l, self.t, self.r, self.b = 70, 50, width - legend_w, height - 60
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.x_log2, self.y_fmt, self.y_scale = x_log2, y_fmt, y_scale
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                      f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
                      f'<rect width="{width}" height="{height}" fill="white"/>',
                      f'<text x="{self.l}" y="28" font-size="17" font-weight="bold">{_esc(title)}</text>']
        for y in y_ticks or []:
            py = self.py(y)
            self.parts.append(f'<line x1="{self.l}" y1="{py:.1f}" x2="{self.r}" y2="{py:.1f}" stroke="#e6e6e6"/>')
            self.parts.append(f'<text x="{self.l - 8}" y="{py + 4:.1f}" font-size="12" text-anchor="end" fill="#444">'
                              f'{_esc(y_fmt.format(y * y_scale))}</text>')
        for x in x_ticks or []:
            px = self.px(x)
            self.parts.append(f'<line x1="{px:.1f}" y1="{self.t}" x2="{px:.1f}" y2="{self.b}" stroke="#f0f0f0"/>')
            self.parts.append(f'<text x="{px:.1f}" y="{self.b + 18}" font-size="12" text-anchor="middle" fill="#444">{x}</text>')
        self.parts.append(f'<rect x="{self.l}" y="{self.t}" width="{self.r - self.l}" height="{self.b - self.t}" '
                          f'fill="none" stroke="#888"/>')
        self.parts.append(f'<text x="{(self.l + self.r) / 2:.1f}" y="{self.b + 44}" font-size="13" text-anchor="middle" '
                          f'fill="#222">{_esc(x_label)}</text>')
        self.parts.append(f'<text transform="translate(20 {(self.t + self.b) / 2:.1f}) rotate(-90)" font-size="13" '
                          f'text-anchor="middle" fill="#222">{_esc(y_label)}</text>')
        self.legend = 0

    def px(self, x):
        if self.x_log2:
            x, x0, x1 = math.log2(x), math.log2(self.x0), math.log2(self.x1)
        else:
            x0, x1 = self.x0, self.x1
        return self.l + (x - x0) / (x1 - x0) * (self.r - self.l)

    def py(self, y):
        return self.b - (y - self.y0) / (self.y1 - self.y0) * (self.b - self.t)

    def _legend(self, label, color, dash, width=2.5):
        y = self.t + 10 + 22 * self.legend
        self.legend += 1
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{self.r + 16}" y1="{y}" x2="{self.r + 44}" y2="{y}" stroke="{color}" '
                          f'stroke-width="{width}"{d}/>')
        self.parts.append(f'<text x="{self.r + 50}" y="{y + 4}" font-size="13" fill="#333">{_esc(label)}</text>')

    def line(self, xs, ys, label, color, dash=None, dots=True, width=2.5):
        pts = [(self.px(x), self.py(y)) for x, y in zip(xs, ys) if y is not None]
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append('<polyline points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) +
                          f'" fill="none" stroke="{color}" stroke-width="{width}"{d}/>')
        if dots:
            for x, y in pts:
                self.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>')
        self._legend(label, color, dash, width)

    def hline(self, y, label, color, dash="6 5"):
        py = self.py(y)
        self.parts.append(f'<line x1="{self.l}" y1="{py:.1f}" x2="{self.r}" y2="{py:.1f}" stroke="{color}" '
                          f'stroke-width="2" stroke-dasharray="{dash}"/>')
        self._legend(label, color, dash, 2)

    def save(self, path):
        with open(path, "w") as f:
            f.write("".join(self.parts) + "</svg>\n")


def _series(report, key, subset=None):
    o = report["overall"] if subset is None else report["subsets"][subset]
    pts = o.get(key) or []
    return [p["k"] for p in pts], [p["value"] for p in pts], o["greedy"]


def _ticks(lo, hi, step):
    v = math.floor(lo / step) * step
    out = []
    while v <= hi + 1e-9:
        if v >= lo - 1e-9:
            out.append(round(v, 6))
        v += step
    return out


def rl_compare(a):
    """Accuracy against k for the RFT and the RL model (voting and meta-RM voting, greedy as
    horizontal lines), on one `grm eval` report each."""
    rft, rl = json.load(open(a.rft)), json.load(open(a.rl))
    series = []
    for name, rep, color in (("RFT", rft, COLORS[0]), ("RFT + RL", rl, COLORS[1])):
        for key, dash, what in (("voting", "4 4", "voting"), ("meta_rm", None, "meta RM")):
            ks, vs, g = _series(rep, key, a.subset)
            series.append((f"{name}, {what}", ks, vs, color, dash))
        series.append((f"{name}, greedy {100 * g:.1f}%", None, g, color, "1 5"))
    vals = [v for s in series for v in (s[2] if s[1] else [s[2]])]
    lo, hi = math.floor(min(vals) * 20) / 20, math.ceil(max(vals) * 20) / 20
    ks = series[0][1]
    o = rft["overall"] if a.subset is None else rft["subsets"][a.subset]
    p = Plot(a.title or f"RFT vs RFT + RL: accuracy of {o['items']} items", "k (judgements sampled per item, log scale)",
             "accuracy", (ks[0], ks[-1]), (lo, hi), x_log2=True, x_ticks=ks, y_ticks=_ticks(lo, hi, 0.05), legend_w=220)
    for label, xs, ys, color, dash in series:
        if xs:
            p.line(xs, ys, label, color, dash)
        else:
            p.hline(ys, label, color, dash)
    p.save(a.out)


def _smooth(xs, w):
    out = []
    for i in range(len(xs)):
        win = [x for x in xs[max(0, i - w + 1):i + 1] if x is not None]
        out.append(sum(win) / len(win) if win else None)
    return out


def rlhf(a):
    """The RLHF demo's curves: the GRM's reward, the samples' exact-answer accuracy and the GRM's
    agreement with the ground truth, per step (moving average over `--window` steps)."""
    rows = [json.loads(l) for l in open(a.steps) if l.strip()]
    rep = json.load(open(a.report)) if a.report and os.path.exists(a.report) else None
    steps = [r["step"] + 1 for r in rows]
    w = a.window
    p = Plot(a.title or "Policy GRPO on the cluster's rewards", f"GRPO step (moving average over {w} steps)", "",
             (0, max(steps)), (0, 1), x_ticks=_ticks(0, max(steps), 20 if max(steps) > 60 else 10),
             y_ticks=_ticks(0, 1, 0.1), width=900, legend_w=300)
    p.line(steps, _smooth([r["reward"] for r in rows], w), "GRM reward (mean score-1)/9", COLORS[0], dots=False)
    p.line(steps, _smooth([r["accuracy"] for r in rows], w), "exact-answer accuracy of samples", COLORS[1], dots=False)
    p.line(steps, _smooth([r["pair_agreement"] for r in rows], w), "GRM agrees: right > wrong in group", COLORS[2],
           dots=False, dash="6 4")
    p.line(steps, _smooth([r["side_agreement"] for r in rows], w), "GRM agrees: reward ≥ 0.5 iff right", COLORS[4],
           dots=False, dash="2 4")
    p.line(steps, _smooth([r["unscored"] for r in rows], w), "unscored (no judgement voted)", "#7f7f7f", dots=False,
           dash="1 3", width=1.5)
    if rep:
        b, f = rep["before"], rep["after"]
        p.parts.append(f'<text x="{p.r + 16}" y="{p.t + 10 + 22 * p.legend + 14}" font-size="12" fill="#333">held-out, greedy: '
                       f'{100 * b["greedy_accuracy"]:.1f}% → {100 * f["greedy_accuracy"]:.1f}%</text>')
        p.parts.append(f'<text x="{p.r + 16}" y="{p.t + 10 + 22 * p.legend + 32}" font-size="12" fill="#333">held-out, sampled: '
                       f'{100 * b["sampled_accuracy"]:.1f}% → {100 * f["sampled_accuracy"]:.1f}%</text>')
    p.save(a.out)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("rl-compare")
    c.add_argument("--rft", required=True)
    c.add_argument("--rl", required=True)
    c.add_argument("--subset", default=None)
    c.add_argument("--title", default=None)
    c.add_argument("--out", required=True)
    r = sub.add_parser("rlhf")
    r.add_argument("--steps", required=True)
    r.add_argument("--report", default=None)
    r.add_argument("--window", type=int, default=10)
    r.add_argument("--title", default=None)
    r.add_argument("--out", required=True)
    a = ap.parse_args()
    {"rl-compare": rl_compare, "rlhf": rlhf}[a.cmd](a)


if __name__ == "__main__":
    main()
