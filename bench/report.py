"""Render the serving benchmark as Markdown: the side-by-side table and the target ratios.

Kept apart from the measuring code so the verdicts (which ratio, which target, met or
not) are pure functions of the numbers, readable in one place, and pasteable into
README.md as they are printed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:  # only for annotations: serve.py imports this module
    from serve import Plan, SystemResult

COLUMNS = ("direct", "strato", "llama_cpp.server", "llama-server")


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.0f}"


def _num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _same_text(r: "SystemResult", direct: "SystemResult") -> str:
    """How many greedy answers equal llama-cpp-python's: same model, same prompt, temp 0.

    A mismatch is not necessarily a bug (batched arithmetic can flip a near-tie), but a
    server that is fast because it computes something else shows up here.
    """
    pairs = list(zip(r.single_texts, direct.single_texts))
    return f"{sum(a == b for a, b in pairs)} / {len(pairs)}"


def _row(label: str, cells: list[str]) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def table(plan: "Plan", results: Mapping[str, "SystemResult"]) -> list[str]:
    """One column per system, one row per metric; '-' where a system has no figure."""
    cols = [c for c in COLUMNS if c in results]
    lines = [_row("metric", cols), _row("---", ["---:"] * len(cols))]

    def row(label: str, cell: Callable[["SystemResult"], str]) -> None:
        lines.append(_row(label, [("skipped" if results[c].skipped else cell(results[c]))
                                  for c in cols]))

    row("warm TTFT p50, 1 stream (ms)", lambda r: _ms(r.ttft_p50))
    row("decode tok/s, 1 stream", lambda r: _num(r.decode_tps))
    row("truncated, 1 stream", lambda r: str(r.single_truncated))
    direct = results.get("direct")
    if direct is not None and not direct.skipped:
        row("same text as direct, 1 stream", lambda r: _same_text(r, direct))
    for n in plan.levels:
        def level(r: "SystemResult", f: Callable[..., str], n: int = n) -> str:
            return f(r.levels[n]) if n in r.levels else "-"

        label = f"{n} stream" if n == 1 else f"{n} streams"
        row(f"{label}: aggregate tok/s", lambda r: level(r, lambda x: _num(x.agg_tps)))
        row(f"{label}: TTFT p50 / p95 (ms)",
            lambda r: level(r, lambda x: f"{_ms(x.ttft_p50)} / {_ms(x.ttft_p95)}"))
        row(f"{label}: truncated / requests",
            lambda r: level(r, lambda x: f"{x.truncated} / {x.requests}"))
    return lines


@dataclass(frozen=True)
class Verdict:
    label: str
    value: float
    unit: str          # "x" for a ratio, "ms" for a difference, "" for a count
    target: str
    met: bool | None   # None: not measurable in this run


def _agg(r: "SystemResult | None", n: int) -> float:
    if r is None or r.skipped or n not in r.levels:
        return math.nan
    return r.levels[n].agg_tps


def _p95(r: "SystemResult | None", n: int) -> float:
    if r is None or r.skipped or n not in r.levels:
        return math.nan
    return r.levels[n].ttft_p95


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _judge(value: float, ok: Callable[[float], bool]) -> bool | None:
    return None if math.isnan(value) else ok(value)


def verdicts(results: Mapping[str, "SystemResult"]) -> list[Verdict]:
    """The targets of issues 2 and 5, each as a value, its target and whether it is met."""
    s = results.get("strato")
    d = results.get("direct")
    cs = results.get("llama_cpp.server")
    ls = results.get("llama-server")
    ok = lambda r: r is not None and not r.skipped  # noqa: E731
    out: list[Verdict] = []
    tps = _ratio(s.decode_tps, d.decode_tps) if ok(s) and ok(d) else math.nan
    out.append(Verdict("strato / direct, decode tok/s, 1 stream", tps, "x", ">= 0.95",
                       _judge(tps, lambda v: v >= 0.95)))
    dt = (s.ttft_p50 - d.ttft_p50) * 1e3 if ok(s) and ok(d) else math.nan
    out.append(Verdict("strato - direct, warm TTFT", dt, "ms", "<= 15 ms",
                       _judge(dt, lambda v: v <= 15.0)))
    for n in (4, 8):
        r = _ratio(_agg(s, n), _agg(cs, n))
        out.append(Verdict(f"strato / llama_cpp.server, aggregate tok/s, {n} streams", r, "x",
                           ">= 1.0", _judge(r, lambda v: v >= 1.0)))
    r8 = _ratio(_agg(s, 8), _agg(ls, 8))
    out.append(Verdict("strato / llama-server, aggregate tok/s, 8 streams", r8, "x", ">= 1.0",
                       _judge(r8, lambda v: v >= 1.0)))
    p8 = _ratio(_p95(s, 8), _p95(ls, 8))
    out.append(Verdict("strato / llama-server, TTFT p95, 8 streams", p8, "x", "<= 1.3",
                       _judge(p8, lambda v: v <= 1.3)))
    trunc = (sum(s.levels[n].truncated for n in (4, 8) if n in s.levels)
             if ok(s) and any(n in s.levels for n in (4, 8)) else math.nan)
    out.append(Verdict("strato truncated streams at 4 and 8", trunc, "", "0",
                       _judge(trunc, lambda v: v == 0)))
    return out


def _value(v: Verdict) -> str:
    if math.isnan(v.value):
        return "-"
    if v.unit == "x":
        return f"{v.value:.2f}x"
    if v.unit == "ms":
        return f"{v.value:+.1f} ms"
    return f"{v.value:.0f}"


def render(plan: "Plan", results: Mapping[str, "SystemResult"]) -> str:
    """The whole report: settings line, table, ratios, and why any column is missing."""
    lines = [f"Model {plan.model.name}, {plan.threads} threads, ctx {plan.ctx}, "
             f"{plan.parallel} slots, {plan.max_tokens} tokens per stream, temperature 0; "
             f"{plan.requests} single-stream requests after {plan.warmup} warm-up, "
             f"{plan.waves} wave(s) per level.", ""]
    lines += table(plan, results)
    lines += ["", _row("ratio", ["value", "target", "met"]), _row("---", ["---:", "---:", "---"])]
    for v in verdicts(results):
        met = {True: "yes", False: "**no**", None: "n/a"}[v.met]
        lines.append(_row(v.label, [_value(v), v.target, met]))
    notes = [f"- {name}: {r.skipped}" for name, r in results.items() if r.skipped]
    errors = [f"- {name}, {n} streams: {len(lv.errors)} errors, first: {lv.errors[0][:160]}"
              for name, r in results.items() for n, lv in r.levels.items() if lv.errors]
    if notes or errors:
        lines += ["", *notes, *errors]
    return "\n".join(lines)
