"""review.html: the review report for people, one self-contained file (inline SVG and CSS, no script,
no network), readable offline and at a glance: the four answers first, the charts under them."""
from __future__ import annotations

from html import escape

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #dde1e8;padding-bottom:4px}
.sub{color:#5a6475;margin:0 0 18px}.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px}
.card{border:1px solid #dde1e8;border-radius:8px;padding:12px 14px;background:#f8f9fb}
.card .k{color:#5a6475;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:26px;font-weight:600;margin:4px 0}.card .n{color:#5a6475;font-size:12px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:20px}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border:1px solid #e3e6ec;text-align:right}
th{background:#f1f3f6;font-weight:600}td.l,th.l{text-align:left}.note{color:#5a6475;font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#1d2330}
"""
_BLUE, _RED, _GREY = "#3b6fd8", "#d8573b", "#c9ced8"


def _pct(x, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _num(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _card(title: str, value: str, note: str) -> str:
    return (f'<div class="card"><div class="k">{escape(title)}</div><div class="v">{escape(value)}</div>'
            f'<div class="n">{escape(note)}</div></div>')


def _headline(r: dict) -> tuple[str, str]:
    a, kind = r["agreement"], r["task"]
    if kind == "classify":
        return _pct(a["accuracy"]), f"accuracy over {a['n']} reviewed; macro F1 {_num(a['macro_f1'], 2)}"
    if kind == "multilabel":
        return _pct(a["exact_match"]), f"items exactly right; micro F1 {_num(a['micro']['f1'], 2)}"
    if kind == "ner":
        return (_num(a["exact"]["micro"]["f1"], 2),
                f"span F1, exact offsets; overlapping {_num(a['overlap']['micro']['f1'], 2)}")
    return _pct(a["shares"]["accepted"]), (f"pairs accepted as drafted; {a['edited']} edited, "
                                           f"{a['rejected']} rejected")


def _cards(r: dict) -> str:
    value, note = _headline(r)
    t = r["threshold"]
    if t.get("confidence") is not None:
        tv = f"≥ {t['confidence']:.3f}"
        tn = (f"accepts {t['would_accept']} unreviewed ({_pct(t['share_of_job'])} of the job) with error "
              f"≤ {_pct(t['error_upper_bound'])} (95%) for target {_pct(t['target_error'])}")
    else:
        tv, tn = "none yet", t.get("why", "")
    u = r["unreviewed_error"]
    if u.get("n"):
        uv = _pct(u["rate"])
        uh = u["interval_95"]
        un = (f"95% interval {_pct(uh[0])}–{_pct(uh[1])}, from an audit of {u['n']}; "
              f"{u['unreviewed_drafts']} drafts unreviewed")
    else:
        uv, un = "no audit", u.get("why", "")
    c = r["calibration"]
    cv = _num(c["ece"], 3)
    cn = f"expected calibration error; Brier {_num(c['brier'], 3)} over {c['n']} reviewed" if c["n"] else \
        "no reviewed draft has a confidence"
    return ('<div class="cards">' + _card("Drafts right", value, note)
            + _card("Accept unreviewed above", tv, tn) + _card("Error of the unreviewed", uv, un)
            + _card("Calibration", cv, cn) + "</div>")


def _reliability(c: dict) -> str:
    """Accuracy per confidence bin against the diagonal; bar width grows with the bin's count."""
    w, h, pad = 420, 300, 40
    inner_w, inner_h = w - 2 * pad, h - 2 * pad
    most = max((b["count"] for b in c["bins"]), default=0) or 1
    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="reliability diagram">',
             f'<rect x="{pad}" y="{pad}" width="{inner_w}" height="{inner_h}" fill="#fff" stroke="#dde1e8"/>']
    for i in range(6):
        v = i / 5
        y = pad + inner_h * (1 - v)
        x = pad + inner_w * v
        parts.append(f'<line x1="{pad}" x2="{pad + inner_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f4"/>')
        parts.append(f'<text x="{pad - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        parts.append(f'<text x="{x:.1f}" y="{pad + inner_h + 16}" text-anchor="middle">{v:.1f}</text>')
    for b in c["bins"]:
        if not b["count"]:
            continue
        bw = inner_w / len(c["bins"])
        x = pad + inner_w * b["low"]
        bar_h = inner_h * b["accuracy"]
        width = max(4.0, (bw - 4) * (0.35 + 0.65 * b["count"] / most))
        parts.append(f'<rect x="{x + (bw - width) / 2:.1f}" y="{pad + inner_h - bar_h:.1f}" width="{width:.1f}" '
                     f'height="{bar_h:.1f}" fill="{_BLUE}" opacity="0.8"><title>confidence {b["low"]:.1f}–'
                     f'{b["high"]:.1f}: {b["count"]} drafts, {_pct(b["accuracy"])} right, mean confidence '
                     f'{_num(b["mean_confidence"], 2)}</title></rect>')
        cy = pad + inner_h * (1 - b["mean_confidence"])
        parts.append(f'<circle cx="{x + bw / 2:.1f}" cy="{cy:.1f}" r="3" fill="{_RED}"/>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{pad + inner_h - bar_h - 4:.1f}" text-anchor="middle">'
                     f'{b["count"]}</text>')
    parts.append(f'<line x1="{pad}" y1="{pad + inner_h}" x2="{pad + inner_w}" y2="{pad}" stroke="{_RED}" '
                 f'stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle">confidence</text>')
    parts.append(f'<text x="12" y="{h / 2}" transform="rotate(-90 12 {h / 2})" text-anchor="middle">'
                 f'share right</text></svg>')
    return "".join(parts)


def _bars(rows: list[tuple[str, list[float | None]]], series: list[str], colors: list[str], title: str) -> str:
    """Horizontal bars in [0, 1], one group per row, one bar per series."""
    if not rows:
        return '<p class="note">nothing to show yet</p>'
    label_w, bar_w, bar_h, gap = 150, 260, 12, 8
    group_h = bar_h * len(series) + gap
    h = 24 + group_h * len(rows)
    w = label_w + bar_w + 60
    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{escape(title)}">']
    for j, (name, color) in enumerate(zip(series, colors)):
        parts.append(f'<rect x="{label_w + j * 110}" y="4" width="10" height="10" fill="{color}"/>'
                     f'<text x="{label_w + j * 110 + 14}" y="13">{escape(name)}</text>')
    for i, (name, values) in enumerate(rows):
        y0 = 24 + i * group_h
        parts.append(f'<text x="{label_w - 6}" y="{y0 + group_h / 2}" text-anchor="end">'
                     f'{escape(str(name)[:24])}</text>')
        for j, (v, color) in enumerate(zip(values, colors)):
            y = y0 + j * bar_h
            if v is None:
                parts.append(f'<text x="{label_w + 4}" y="{y + bar_h - 2}" fill="#8a93a3">n/a</text>')
                continue
            parts.append(f'<rect x="{label_w}" y="{y}" width="{bar_w * v:.1f}" height="{bar_h - 2}" fill="{color}"/>'
                         f'<text x="{label_w + bar_w * v + 4:.1f}" y="{y + bar_h - 3}">{v:.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _confusion(a: dict) -> str:
    labels = a["labels"]
    most = max((a["confusion"][t][p] for t in labels for p in labels), default=0) or 1
    head = "".join(f"<th>{escape(p)}</th>" for p in labels)
    body = []
    for t in labels:
        cells = []
        for p in labels:
            n = a["confusion"][t][p]
            shade = n / most
            color = f"rgba(59,111,216,{shade:.2f})" if t == p else f"rgba(216,87,59,{shade:.2f})"
            cells.append(f'<td style="background:{color}">{n}</td>')
        body.append(f'<tr><th class="l">{escape(t)}</th>{"".join(cells)}</tr>')
    return (f'<table><tr><th class="l">reviewed ↓ / drafted →</th>{head}</tr>{"".join(body)}</table>')


def _per_label_table(per: dict, what: str) -> str:
    rows = "".join(f'<tr><td class="l">{escape(n)}</td><td>{_num(m["precision"], 2)}</td>'
                   f'<td>{_num(m["recall"], 2)}</td><td>{_num(m["f1"], 2)}</td><td>{m["support"]}</td></tr>'
                   for n, m in per.items())
    return (f'<table><tr><th class="l">{what}</th><th>precision</th><th>recall</th><th>F1</th>'
            f'<th>reviewed</th></tr>{rows}</table>')


def _agreement(r: dict) -> str:
    a, kind = r["agreement"], r["task"]
    if kind == "classify":
        bars = _bars([(n, [m["precision"], m["recall"], m["f1"]]) for n, m in a["per_label"].items()],
                     ["precision", "recall", "F1"], ["#9bb5ec", "#5d86de", _BLUE], "per-label scores")
        return (f'<div class="grid"><div>{bars}</div><div><h3>Confusion matrix</h3>{_confusion(a)}'
                f'<p class="note">Rows: the reviewers\' label; columns: the draft\'s.</p></div></div>')
    if kind == "multilabel":
        bars = _bars([(n, [m["precision"], m["recall"], m["f1"]]) for n, m in a["per_label"].items()],
                     ["precision", "recall", "F1"], ["#9bb5ec", "#5d86de", _BLUE], "per-label scores")
        return f'<div class="grid"><div>{bars}</div><div>{_per_label_table(a["per_label"], "label")}</div></div>'
    if kind == "ner":
        rows = [(n, [a["exact"]["per_type"][n]["f1"], a["overlap"]["per_type"][n]["f1"]])
                for n in a["exact"]["per_type"]]
        bars = _bars(rows, ["exact F1", "overlap F1"], [_BLUE, "#9bb5ec"], "span F1 per type")
        return (f'<div class="grid"><div>{bars}</div><div><h3>Exact spans</h3>'
                f'{_per_label_table(a["exact"]["per_type"], "type")}<h3>Overlapping spans</h3>'
                f'{_per_label_table(a["overlap"]["per_type"], "type")}</div></div>')
    rows = [(k, [a["shares"][k]]) for k in ("accepted", "edited", "rejected")]
    e = a["edit_size"]
    return (_bars(rows, ["share of reviewed pairs"], [_BLUE], "instruction pairs")
            + f'<p class="note">Edited pairs changed {_pct(e["mean"])} of their characters on average '
              f'(median {_pct(e["median"])}, largest {_pct(e["max"])}).</p>')


def _flags(r: dict) -> str:
    rows = [(name, [q["precision"], q["recall"]]) for name, q in r["flags"].items()]
    counts = "".join(f'<tr><td class="l">{escape(n)}</td><td>{q["flagged"]}</td><td>{q["flagged_and_corrected"]}</td>'
                     f'<td>{_num(q["precision"], 2)}</td><td>{_num(q["recall"], 2)}</td></tr>'
                     for n, q in r["flags"].items())
    return (f'<div class="grid"><div>{_bars(rows, ["precision", "recall"], [_RED, "#eaa08f"], "flags")}</div>'
            f'<div><table><tr><th class="l">flag</th><th>flagged</th><th>of them corrected</th>'
            f'<th>precision</th><th>recall</th></tr>{counts}</table><p class="note">Precision: the share '
            f'of the drafts a flag marked that reviewers corrected. Recall: the share of the corrected '
            f'drafts it marked.</p></div></div>')


def _corrections(r: dict) -> str:
    if not r["most_corrected"]:
        return '<p class="note">No correction of a label yet.</p>'
    rows = "".join(f'<tr><td class="l">{escape(str(c["drafted"]))}</td><td class="l">→ {escape(str(c["reviewed"]))}'
                   f'</td><td>{c["count"]}</td></tr>' for c in r["most_corrected"])
    return (f'<table><tr><th class="l">drafted</th><th class="l">reviewed</th><th>times</th></tr>{rows}</table>'
            f'<p class="note">Where the guidelines may need a sentence.</p>')


def _method_note(r: dict) -> str:
    t = r["threshold"]
    samples = ", ".join(f"{n} {k}" for k, n in sorted(r["reviews"]["by_sample"].items())) or "none"
    return (f"Reviewed drafts by sample: {samples}. The threshold is the lowest confidence at which the "
            f"reviewed drafts at or above it bound the error (exact binomial, one-sided 95%) at "
            f"{_pct(t['target_error'])} or less, scanning from the most confident down; it assumes the "
            f"reviewed drafts stand for the others at the same confidence. The unreviewed error comes "
            f"from the uniform audit sample only; reviews of the least certain drafts since make it "
            f"conservative.")


def render(r: dict) -> str:
    rv = r["reviews"]
    reviewers = ", ".join(f"{escape(str(k))} ({v})" for k, v in rv["reviewers"].items()) or "none"
    c = r["calibration"]
    calib = (_reliability(c) + '<p class="note">Bars: the share of drafts reviewers kept, per confidence bin '
             '(wider: more drafts; the number on top is the count). Dots: the bin\'s mean confidence. '
             'A calibrated model\'s bars reach the dashed diagonal.</p>') if c["n"] else \
        '<p class="note">No reviewed draft has a confidence (instruction pairs have none).</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Review of {escape(r['job_id'])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>
<h1>Review of {escape(r['job_id'])}</h1>
<p class="sub">{escape(r['task'])}: {r['reviewed']} of {r['drafts']} drafts reviewed
({rv['verdicts']['accepted']} accepted, {rv['verdicts']['corrected']} corrected, {rv['verdicts']['rejected']} rejected);
reviewers: {reviewers}</p>
{_cards(r)}
<h2>Agreement with the reviewers</h2>
{_agreement(r)}
<div class="grid"><div><h2>Calibration: does the confidence mean what it says?</h2>
{calib}</div><div><h2>Most corrected</h2>
{_corrections(r)}</div></div>
<h2>Flags: do they point at the drafts people fix?</h2>
{_flags(r)}
<p class="note">{escape(_method_note(r))}</p>
</body></html>
"""
