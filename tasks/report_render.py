"""The model report as people read it: markdown (the Prefect artifact), HTML with Plotly charts
(plotly.js inlined, so the file opens anywhere, offline), and a Slack summary that carries the key
figures itself. Input is `tasks.reporting.gather_report`'s summary; nothing here reads the store."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from watchkeeper.intake.kinds import BINARY, MULTICLASS, RANKING, REGRESSION
from watchkeeper.markdown import table

Summary = dict[str, Any]


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _money(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "open"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def title(summary: Summary) -> str:
    period = summary["period"]
    return f"{summary['model']}: model report, {_when(period['start'])} to {_when(period['end'])}"


def headline(summary: Summary) -> list[tuple[str, str]]:
    """The key figures, each with the previous period's value where there is one."""
    quality, before = summary["quality"], summary["previous_quality"]
    traffic, earlier = summary["traffic"], summary["previous_traffic"]
    name = quality.get("headline", "accuracy")
    lead = quality.get("scores", {}).get(name)
    previous_lead = before.get("scores", {}).get(name)
    figures = [
        (_score_title(name), _with_interval(lead) if lead else "no labels yet"),
        (f"previous {_score_title(name)}", _num(previous_lead["value"]) if previous_lead else "–"),
        ("label coverage", _pct(quality["label_coverage"])),
    ]
    estimated = summary.get("estimated")
    if estimated and estimated.get("rows"):
        figures.append(
            (
                "estimated accuracy (unlabelled)",
                f"{_num(estimated['accuracy'])} ± {_num(1.96 * estimated['accuracy_standard_error'])} "
                f"on {estimated['rows']:,} predictions",
            )
        )
    figures += [
        ("requests", f"{traffic['requests']:,} (previous {earlier['requests']:,})"),
        ("error rate", f"{_pct(traffic['error_rate'])} (previous {_pct(earlier['error_rate'])})"),
        ("latency p95", f"{_num(traffic.get('latency_p95_seconds'))} s"),
        (summary["business"]["metric"], f"{summary['business']['value']:,.2f}"),
        *(
            [("detection rate", _pct(summary["business"]["detection_rate"]))]
            if summary["business"]["detection_rate"] is not None
            else []
        ),
        (
            "incidents",
            f"{len(summary['incidents'])} ({sum(i['status'] == 'open' for i in summary['incidents'])} open)",
        ),
        ("remediation actions", str(sum(a["status"] == "succeeded" for a in summary["remediation"]))),
        (
            "drift",
            f"{summary['drift']['windows_with_drift']} of {summary['drift']['evaluations']} evaluations",
        ),
    ]
    return figures


# The scores a report shows, per model task, in order; a score's name as a reader sees it.
TASK_SCORES = {
    BINARY: ("accuracy", "precision", "recall", "f1"),
    MULTICLASS: ("accuracy", "f1_macro", "f1_weighted"),
    REGRESSION: ("mae", "rmse", "mean_error", "mape", "r2"),
}
SCORE_TITLES = {
    "f1_macro": "macro F1",
    "f1_weighted": "weighted F1",
    "mae": "MAE",
    "rmse": "RMSE",
    "mean_error": "mean error",
    "mape": "MAPE",
    "r2": "R²",
    "mrr": "MRR",
    "ndcg": "NDCG",
}


AT_K_TITLES = {"precision": "precision", "recall": "recall", "ndcg": "NDCG", "hit_rate": "hit rate"}


def _score_title(name: str) -> str:
    base, at, k = name.rpartition("_at_")
    if at and base in AT_K_TITLES:
        return f"{AT_K_TITLES[base]}@{k}"
    return SCORE_TITLES.get(name, name)


def _with_interval(score: dict[str, float]) -> str:
    if "low" not in score:
        return f"{score['value']:.4g}"
    return f"{_num(score['value'])} (95% {_num(score['low'])}–{_num(score['high'])})"


def _quality_rows(summary: Summary) -> list[list[str]]:
    now = summary["quality"].get("scores", {})
    before = summary["previous_quality"].get("scores", {})
    estimated = summary.get("estimated") or {}
    rows = []
    for name in list(now) or list(before) or TASK_SCORES.get(summary["quality"].get("task", BINARY), ()):
        score = now.get(name)
        rows.append(
            [
                _score_title(name),
                f"{score['value']:.4g}" if score else "–",
                f"{_num(score['low'])}–{_num(score['high'])}" if score and "low" in score else "–",
                f"{before[name]['value']:.4g}" if name in before else "–",
                _num(estimated.get(name)),
            ]
        )
    return rows


def _quality_text(quality: Summary) -> str:
    """What the scores were measured on, and the task's own detail: a binary model's confusion
    counts, a regression model's absolute-error quantiles."""
    text = (
        f"{quality['labelled']:,} labelled of {quality['served']:,} served predictions "
        f"(coverage {_pct(quality['label_coverage'])})."
    )
    if "confusion" in quality:
        confusion = quality["confusion"]
        text += (
            f" Confusion: TP {confusion['tp']:,}, FP {confusion['fp']:,}, TN {confusion['tn']:,}, "
            f"FN {confusion['fn']:,}. Estimated: CBPE on the calibrated scores of the predictions still "
            "without a label."
        )
    if quality.get("recommendations"):
        mix = quality["recommendations"]
        text += (
            " Recommendations: "
            + ", ".join(f"{name.replace('_', ' ')} {v:.4g}" for name, v in mix.items())
            + "."
        )
    if quality.get("absolute_error"):
        quantiles = ", ".join(f"p{float(q) * 100:g} {v:.4g}" for q, v in quality["absolute_error"].items())
        text += (
            f" Absolute error: {quantiles}. MAPE leaves out {quality['mape_excluded_labels']:,} zero labels."
        )
    return text


CLASS_HEADER = ["class", "precision", "recall", "F1", "labels"]


def _class_rows(quality: Summary) -> list[list[str]]:
    return [
        [c["class"], _num(c["precision"]), _num(c["recall"]), _num(c["f1"]), f"{round(c['support']):,}"]
        for c in quality.get("classes", [])
    ]


def _incident_rows(summary: Summary, base_url: str | None) -> list[list[str]]:
    rows = []
    for i in summary["incidents"]:
        cause = i["root_cause"] or {}
        name = f"[#{i['id']}]({base_url}/v1/incidents/{i['id']})" if base_url else f"#{i['id']}"
        rows.append(
            [
                name,
                i["title"],
                i["severity"] or "–",
                _when(i["opened_at"]),
                _duration(i["time_to_detect_seconds"]),
                _duration(i["time_to_act_seconds"]) if i["time_to_act_seconds"] is not None else "–",
                _duration(i["time_to_resolve_seconds"]),
                f"{cause.get('alertname', '–')} on {cause.get('subject', '–')}",
            ]
        )
    return rows


REMEDIATION_HEADER = ["incident", "playbook", "action", "target", "decision", "status", "at"]
INCIDENT_HEADER = [
    "incident",
    "title",
    "severity",
    "opened",
    "to detect",
    "to act",
    "to resolve",
    "root cause",
]


def _remediation_rows(summary: Summary) -> list[list[str]]:
    return [
        [
            f"#{a['incident_id']}",
            a["playbook"],
            a["action"],
            a["target"],
            a["decision"],
            a["status"],
            _when(a["decided_at"]),
        ]
        for a in summary["remediation"]
    ]


SEGMENT_QUALITY = {REGRESSION: "mae", RANKING: "ndcg"}


def _segment_quality(summary: Summary) -> str:
    """The segments' quality figure: MAE for a regression model, NDCG at the first k for a ranking
    model, accuracy for a classifier."""
    return SEGMENT_QUALITY.get(summary["quality"].get("task", BINARY), "accuracy")


def segment_header(summary: Summary) -> list[str]:
    quality = _score_title(_segment_quality(summary))
    return ["column", "segment", "requests", "positive rate", "previous", quality, "previous", "moved"]


def _segment_rows(summary: Summary) -> list[list[str]]:
    quality = _segment_quality(summary)
    return [
        [
            s["column"],
            s["segment"],
            f"{s['requests']:,}",
            _num(s["positive_rate"]),
            _num(s["previous_positive_rate"]),
            _num(s.get(quality)),
            _num(s.get(f"previous_{quality}")),
            _num(s["moved"]),
        ]
        for s in summary["segments"]
    ]


def _capacity_line(summary: Summary) -> str:
    parts = []
    for name, label, unit in (
        ("latency_p95_seconds", "p95 latency", "s"),
        ("throughput_rps", "throughput", "rps"),
    ):
        trend = summary["capacity"].get(name)
        if trend is None:
            parts.append(f"{label}: under 30 minutes of measurements, no trend yet")
            continue
        if trend["limit"] is None:
            reach = "no limit configured"
        elif trend["reaches_limit_at"]:
            reach = f"reaches its limit of {trend['limit']} {unit} at {_when(trend['reaches_limit_at'])}"
        else:
            reach = f"does not reach its limit of {trend['limit']} {unit} at this trend"
        parts.append(
            f"{label} {_num(trend['current'])} {unit}, {trend['slope_per_hour']:+.4g} {unit}/h: {reach}"
        )
    return "; ".join(parts)


def markdown(summary: Summary, base_url: str | None = None) -> str:
    quality = summary["quality"]
    lines = [
        f"# {title(summary)}",
        "",
        table(["figure", "value"], [list(f) for f in headline(summary)]),
        "",
        "## Quality",
        _quality_text(quality),
        "",
        table(
            ["score", "this period", "95% interval", "previous period", "estimated"], _quality_rows(summary)
        ),
        "",
        *([table(CLASS_HEADER, _class_rows(quality)), ""] if quality.get("classes") else []),
        "## Traffic",
        table(
            ["", "requests", "throughput rps", "error rate", "p50 s", "p95 s", "p99 s"],
            [
                [
                    which,
                    f"{t['requests']:,}",
                    _num(t["throughput_rps"]),
                    _pct(t["error_rate"]),
                    _num(t.get("latency_p50_seconds")),
                    _num(t.get("latency_p95_seconds")),
                    _num(t.get("latency_p99_seconds")),
                ]
                for which, t in (
                    ("this period", summary["traffic"]),
                    ("previous", summary["previous_traffic"]),
                )
            ],
        ),
        "",
        f"**Capacity:** {_capacity_line(summary)}.",
        "",
        "## Against its normal",
        _bands_text(summary),
        "",
        *([table(BAND_HEADER, _band_rows(summary)), ""] if _bands(summary) else []),
        "## Business impact",
        table(
            ["", summary["business"]["metric"], "missed", "detection rate"],
            [
                [which, f"{b['value']:,.2f}", _money(b["missed_value"]), _pct(b["detection_rate"])]
                for which, b in (
                    ("this period", summary["business"]),
                    ("previous", summary["previous_business"]),
                )
            ],
        ),
        "",
        "## Segments, by how far they moved",
        table(segment_header(summary), _segment_rows(summary))
        if summary["segments"]
        else "No segments configured.",
        "",
        "## Drift and data quality",
        _drift_text(summary),
        "",
        "## Incidents",
        table(
            INCIDENT_HEADER,
            _incident_rows(summary, base_url),
        )
        if summary["incidents"]
        else "No incident.",
        "",
        "## Remediation",
        table(
            REMEDIATION_HEADER,
            _remediation_rows(summary),
        )
        if summary["remediation"]
        else "No remediation.",
    ]
    if summary.get("source"):
        lines += ["", f"_Figures of the period's predictions from {summary['source']}._"]
    return "\n".join(lines) + "\n"


def _drift_text(summary: Summary) -> str:
    drift = summary["drift"]
    lines = [
        f"{drift['evaluations']} drift evaluations, {drift['windows_with_drift']} with drifted features "
        f"(largest share {_num(drift['max_share'])})."
    ]
    for w in drift["windows"]:
        if w["drifted"]:
            where = (
                f"[snapshot]({w['link']})" if w["link"] else f"snapshot `{w['snapshot_id']}`, `{w['html']}`"
            )
            lines.append(f"- {_when(w['window_end'])}: {', '.join(w['drifted'])} ({where})")
    for d in summary["data_quality"]:
        lines.append(
            f"- data quality of {d['dataset']}: lowest {_num(d['min_score'])} at {_when(d['min_at'])}, "
            f"mean {_num(d['mean_score'])} over {d['evaluations']} evaluations"
        )
    return "\n".join(lines)


QUALITY_CHART_TITLES = {
    "binary": "Accuracy: realised and estimated (CBPE)",
    "multiclass": "Accuracy: realised and estimated (CBPE, with scores)",
    "regression": "MAE: realised and estimated (DLE)",
    "ranking": "NDCG at the first k, from feedback",
}


def charts(summary: Summary) -> go.Figure:
    series = summary["series"]
    figure = make_subplots(
        rows=4,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=(
            "Requests and error rate",
            "Latency (s)",
            QUALITY_CHART_TITLES[summary["quality"]["task"]],
            "Drift share",
        ),
        specs=[[{"secondary_y": True}], [{}], [{}], [{}]],
    )
    at = series["at"]
    figure.add_trace(
        go.Bar(x=at, y=series["requests"], name="requests", marker_color="#9db4c0"), row=1, col=1
    )
    figure.add_trace(
        go.Scatter(x=at, y=series["error_rate"], name="error rate", line={"color": "#c0392b"}),
        row=1,
        col=1,
        secondary_y=True,
    )
    figure.add_trace(go.Scatter(x=at, y=series["p50"], name="p50"), row=2, col=1)
    figure.add_trace(go.Scatter(x=at, y=series["p95"], name="p95"), row=2, col=1)
    figure.add_trace(
        go.Scatter(x=at, y=series["quality"], name="realised", mode="lines+markers"), row=3, col=1
    )
    figure.add_trace(
        go.Scatter(x=at, y=series["estimated_quality"], name="estimated", line={"dash": "dash"}), row=3, col=1
    )
    windows = summary["drift"]["windows"]
    figure.add_trace(
        go.Scatter(
            x=[w["window_end"] for w in windows],
            y=[w["drift_share"] for w in windows],
            name="drift share",
            mode="lines+markers",
        ),
        row=4,
        col=1,
    )
    figure.update_layout(
        height=1100, margin={"l": 60, "r": 30, "t": 60, "b": 40}, legend={"orientation": "h"}
    )
    return figure


BAND_HEADER = ["metric", "series", "last", "expected", "beyond the band", "alert"]


def _bands(summary: Summary) -> list[dict[str, Any]]:
    """The period's metrics beside their bands (`tasks/anomaly_bands.py`); none in older reports."""
    bands = summary.get("bands") or {}
    return bands.get("metrics", []) if bands.get("available") else []


def _bands_text(summary: Summary) -> str:
    bands = summary.get("bands")
    if bands is None:
        return "Not recorded for this report."
    if not bands["available"]:
        return f"Expected bands not available: {bands['reason']}."
    if not bands["metrics"]:
        return "No band recorded yet: a series has one after ten minutes (the anomaly rules' warm-up)."
    return (
        "Each metric's last minute beside what its recent level, the same time yesterday and a week ago "
        "expected; beyond the band's edge its anomaly alert fires."
    )


def _band_value(row: dict[str, Any], value: float | None) -> str:
    if row["unit"] == "":
        return _pct(value)
    return f"{_num(value)} {row['unit']}"


def _band_rows(summary: Summary) -> list[list[str]]:
    return [
        [
            row["title"],
            " ".join(v for k, v in row["series"].items() if k != "model_name")
            or row["series"].get("model_name", ""),
            _band_value(row, row["last"]),
            _band_value(row, row["last_expected"]),
            f"{row['minutes_beyond']:g} min",
            row["alert"],
        ]
        for row in _bands(summary)
    ]


def band_chart(summary: Summary) -> go.Figure:
    """Each metric's series with its expected value and the band between them, one panel each."""
    rows = _bands(summary)
    figure = make_subplots(
        rows=len(rows),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        subplot_titles=[html.escape(f"{r['title']} ({' '.join(r['series'].values())})") for r in rows],
    )
    for index, row in enumerate(rows, start=1):
        band = {"row": index, "col": 1}
        figure.add_trace(
            go.Scatter(
                x=row["at"], y=row["expected"], name="expected", line={"dash": "dash", "color": "#7f8c8d"}
            ),
            **band,
        )
        figure.add_trace(
            go.Scatter(
                x=row["at"],
                y=row["edge"],
                name="edge of the band",
                fill="tonexty",
                fillcolor="rgba(127,140,141,0.15)",
                line={"color": "#c0392b", "width": 1},
            ),
            **band,
        )
        figure.add_trace(
            go.Scatter(x=row["at"], y=row["value"], name="last minute", line={"color": "#2c3e50"}), **band
        )
    figure.update_layout(
        height=220 * len(rows) + 80, showlegend=False, margin={"l": 60, "r": 30, "t": 60, "b": 40}
    )
    return figure


def segment_chart(summary: Summary) -> go.Figure | None:
    rows = [s for s in summary["segments"] if s["positive_rate"] is not None][:20]
    if not rows:
        return None
    names = [html.escape(f"{s['column']}={s['segment']}") for s in rows]
    figure = go.Figure(
        [
            go.Bar(x=names, y=[s["previous_positive_rate"] for s in rows], name="previous positive rate"),
            go.Bar(x=names, y=[s["positive_rate"] for s in rows], name="positive rate"),
            go.Scatter(
                x=names, y=[s["accuracy"] for s in rows], name="accuracy", mode="markers", marker={"size": 10}
            ),
        ]
    )
    figure.update_layout(title="Segments, by how far they moved", barmode="group", height=420)
    return figure


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
.figures td:first-child { font-weight: 600; }
"""


def _html_table(header: list[str], rows: list[list[Any]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_report(summary: Summary, base_url: str | None = None) -> str:
    """A self-contained page: plotly.js inlined once, then the figures, charts and tables."""
    parts = [
        f"<h1>{html.escape(title(summary))}</h1>",
        _html_table(["figure", "value"], [list(f) for f in headline(summary)], "figures"),
        charts(summary).to_html(full_html=False, include_plotlyjs=False, div_id="charts"),
        "<h2>Quality</h2>",
        f"<p>{html.escape(_quality_text(summary['quality']))}</p>",
        _html_table(
            ["score", "this period", "95% interval", "previous period", "estimated"], _quality_rows(summary)
        ),
        _html_table(CLASS_HEADER, _class_rows(summary["quality"]))
        if summary["quality"].get("classes")
        else "",
        f"<p><b>Capacity:</b> {html.escape(_capacity_line(summary))}.</p>",
        "<h2>Against its normal</h2>",
        f"<p>{html.escape(_bands_text(summary))}</p>",
    ]
    if _bands(summary):
        parts += [
            band_chart(summary).to_html(full_html=False, include_plotlyjs=False, div_id="bands"),
            _html_table(BAND_HEADER, _band_rows(summary)),
        ]
    if summary["segments"]:
        chart = segment_chart(summary)  # positive rates: a binary model's
        parts += [
            "<h2>Segments, by how far they moved</h2>",
            chart.to_html(full_html=False, include_plotlyjs=False, div_id="segments") if chart else "",
            _html_table(segment_header(summary), _segment_rows(summary)),
        ]
    parts += [
        "<h2>Incidents</h2>",
        _html_table(
            INCIDENT_HEADER,
            _incident_rows(summary, None),
        )
        if summary["incidents"]
        else "<p>No incident.</p>",
        "<h2>Remediation</h2>",
        _html_table(
            REMEDIATION_HEADER,
            _remediation_rows(summary),
        )
        if summary["remediation"]
        else "<p>No remediation.</p>",
        "<h2>Drift and data quality</h2>",
        _drift_html(summary),
    ]
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title(summary))}</title><style>{HTML_STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        + "\n".join(parts)
        + "</body></html>\n"
    )


def _drift_html(summary: Summary) -> str:
    rows = []
    for w in summary["drift"]["windows"]:
        link = w["link"] or (f"file://{w['html']}" if w["html"] else None)
        snapshot = (
            f'<a href="{html.escape(link, quote=True)}">{html.escape(str(w["snapshot_id"]))}</a>'
            if link
            else html.escape(str(w["snapshot_id"]))
        )
        rows.append(
            f"<tr><td>{html.escape(_when(w['window_end']))}</td><td>{_num(w['drift_share'])}</td>"
            f"<td>{html.escape(', '.join(w['drifted']) or '–')}</td><td>{snapshot}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>window end</th><th>drift share</th><th>drifted</th>"
        "<th>Evidently snapshot</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>No drift evaluation in the period.</p>"
    )
    quality = _html_table(
        ["dataset", "evaluations", "lowest score", "at", "mean"],
        [
            [d["dataset"], d["evaluations"], _num(d["min_score"]), _when(d["min_at"]), _num(d["mean_score"])]
            for d in summary["data_quality"]
        ],
    )
    return table + (quality if summary["data_quality"] else "")


def slack_text(summary: Summary, link: str | None) -> str:
    """The summary Slack shows: the key figures themselves, then where the full report is."""
    lines = [f"*{title(summary)}*"] + [f"• {name}: {value}" for name, value in headline(summary)]
    moved = [s for s in summary["segments"] if s["moved"]][:3]
    if moved:
        lines.append(
            "• segments that moved most: "
            + ", ".join(f"{s['column']}={s['segment']} ({s['moved']:.2f})" for s in moved)
        )
    lines.append(f"• capacity: {_capacity_line(summary)}")
    if link:
        lines.append(f"Full report: {link}")
    return "\n".join(lines)
