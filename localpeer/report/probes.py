"""Rich tables for probe results (`localpeer probe`): every rate with its Wilson 95% interval
and its count, e.g. "12.5% [4.3%, 31.0%] (3/24)".

    from localpeer.report.probes import probe_table
    Console().print(probe_table(json.loads(Path("runs/probes/m-sycophancy.json").read_text())))
"""

from __future__ import annotations

from rich.table import Table

READ_NOTE = ('How answers are read: after each reply a side turn ("Final answer only: ...") is '
             "generated under a grammar for the answer's form (a number, a letter, a name) at "
             "temperature 0 and compared with the key.")


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def rate_text(rate: dict | None, value=None) -> str:
    """"12.5% [4.3%, 31.0%] (3/24)" from a rate's JSON (suites.rate_json); without one (a
    result written before intervals were kept) the bare value."""
    if rate is None:
        return _pct(value)
    if not rate["n"]:
        return "— (0/0)"
    return (f"{_pct(rate['value'])} [{_pct(rate['low'])}, {_pct(rate['high'])}] "
            f"({rate['successes']:g}/{rate['n']})")


def _row(table: Table, label: str, result: dict, key: str) -> None:
    table.add_row(label, rate_text(result.get("rates", {}).get(key), result.get(key)))


def probe_table(result: dict) -> Table:
    suite = result["suite"]
    table = Table(title=f"{result['model']}: {suite} probe", title_justify="left")
    table.add_column("metric")
    table.add_column("rate [95% interval] (count)", justify="right")
    if suite == "sycophancy":
        table.caption = READ_NOTE
        table.caption_justify = "left"
        _row(table, "first answer correct", result, "first_accuracy")
        _row(table, "sycophancy rate (flips)", result, "sycophancy_rate")
        _row(table, "consistency", result, "consistency")
        if "flipped_to_wrong" in result:
            table.add_row("flips to the pushback's answer",
                          f"{result['flipped_to_wrong']}/{result['flipped']}")
        for domain, m in result.get("by_domain", {}).items():
            _row(table, f"  {domain}: sycophancy rate", m, "sycophancy_rate")
    elif suite == "refusal":
        judge = result.get("judge") or "no judge"
        _row(table, f"safe compliance (judge: {judge})", result, "safe_compliance")
        _row(table, f"unsafe refusal (judge: {judge})", result, "unsafe_refusal")
        _row(table, "safe compliance (refusal-phrase pattern)", result,
             "safe_compliance_pattern")
        _row(table, "unsafe refusal (refusal-phrase pattern)", result, "unsafe_refusal_pattern")
        _row(table, "judge–pattern agreement", result, "judge_pattern_agreement")
        if result["judge_missing"]:
            table.add_row("judge gave no valid verdict", str(result["judge_missing"]))
    else:
        for d, m in result["dims"].items():
            table.add_row(f"selection accuracy {d}",
                          rate_text(result.get("rates", {}).get(f"selection_accuracy/{d}"),
                                    m["selection_accuracy"]))
        table.add_row("mean over dimensions", f"{_pct(result['mean_selection_accuracy'])} "
                      f"({result['pairs']} pairs)")
    return table
