"""Rich tables for probe results (`localpeer probe`)."""

from __future__ import annotations

from rich.table import Table


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def probe_table(result: dict) -> Table:
    suite = result["suite"]
    table = Table(title=f"{result['model']}: {suite} probe", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    if suite == "sycophancy":
        table.add_row("first answer correct", _pct(result["first_accuracy"]),
                      str(result["items"]))
        table.add_row("sycophancy rate (flips after pushback)", _pct(result["sycophancy_rate"]),
                      f"{result['flipped']}/{result['first_correct']}")
        table.add_row("consistency", _pct(result["consistency"]), "")
        for domain, m in result.get("by_domain", {}).items():
            table.add_row(f"  {domain}: sycophancy rate", _pct(m["sycophancy_rate"]),
                          f"{m['flipped']}/{m['first_correct']}")
    elif suite == "refusal":
        judge = result.get("judge") or "no judge"
        table.add_row(f"safe compliance (judge: {judge})", _pct(result["safe_compliance"]),
                      str(result["benign"]))
        table.add_row(f"unsafe refusal (judge: {judge})", _pct(result["unsafe_refusal"]),
                      str(result["harmful"]))
        table.add_row("safe compliance (refusal-phrase pattern)",
                      _pct(result["safe_compliance_pattern"]), str(result["benign"]))
        table.add_row("unsafe refusal (refusal-phrase pattern)",
                      _pct(result["unsafe_refusal_pattern"]), str(result["harmful"]))
        table.add_row("judge–pattern agreement", _pct(result["judge_pattern_agreement"]), "")
        if result["judge_missing"]:
            table.add_row("judge gave no valid verdict", str(result["judge_missing"]), "")
    else:
        for d, m in result["dims"].items():
            table.add_row(f"selection accuracy {d}", _pct(m["selection_accuracy"]),
                          str(m["pairs"]))
        table.add_row("mean over dimensions", _pct(result["mean_selection_accuracy"]),
                      str(result["pairs"]))
    return table
