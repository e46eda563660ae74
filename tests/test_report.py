"""The terminal report: render real simulated fits to text and check what a reader would look for.

    python -m pytest tests/test_report.py -q
"""

import dataclasses
import io
import re

import numpy as np
import pytest
from rich.console import Console

from localpeer.report import render_score, render_selftest
from localpeer.score.result import ThresholdResult
from localpeer.score.run import score_arrays
from localpeer.score.simulate import simulate

DECIMAL = re.compile(r"\d\.\d")


def rendered(render, *args, width: int = 140) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    render(*args, console)
    return console.export_text()


@pytest.fixture(scope="module")
def fit_with_extreme():
    """4 models, the last one rated 5 by every judge on every prompt: extreme, not estimated."""
    sim = simulate(n_models=4, n_items=60, n_judges=3, seed=1)
    scores = sim.scores.copy()
    scores[sim.models == "model-3"] = 5
    return score_arrays(sim.models, sim.items, sim.judges, np.full(scores.size, "A"), scores, 1, 5)


@pytest.fixture(scope="module")
def text(fit_with_extreme):
    return rendered(render_score, fit_with_extreme)


def test_every_model_and_the_top_theta_appear(fit_with_extreme, text):
    dim = fit_with_extreme.dimensions["A"]
    for e in dim.models:
        assert e.name in text
    top = max((e for e in dim.models if e.estimated), key=lambda e: e.measure)
    assert top.name == "model-2"
    # its row: name, θ to two decimals, SE
    assert re.search(rf"{top.name}\s+{top.measure:.2f}\s+{top.se:.2f}", text)


def test_extreme_model_has_status_and_no_estimate(text):
    row = next(line for line in text.splitlines() if line.lstrip().startswith("model-3 "))
    assert "extreme_max" in row
    assert not DECIMAL.search(row), row  # no θ, SE, CI, fair average or fit: only its count
    assert "extreme   model-3" in text  # placed above the ruler of the Wright map


def test_sections_warnings_and_verdicts(fit_with_extreme, text):
    dim = fit_with_extreme.dimensions["A"]
    for section in ("Dimension A", "prompts as random effect", "Judges", "Pairwise comparisons",
                    "Thresholds: ordered", "Separation", "Prompts 60 in all", "Wright map",
                    "models ↑ better", "judges ↑ harsher", "prompts ↑ harder", "Warnings"):
        assert section in text, section
    assert dim.warnings and dim.warnings[0].split(":")[0] in text
    assert "1 extreme model(s) dropped" in text
    # model-2 vs model-1 differ by about 0.9 logits with SE 0.15: a clear difference
    assert re.search(r"model-2\s+model-1\s+\+0\.\d\d\s+0\.\d\d\s+\d+\.\d\s+a > b", text)
    assert "540 of 720" in text  # ratings used: the extreme model's 180 are left out


def test_judge_count_and_prompt_histogram(fit_with_extreme, text):
    dim = fit_with_extreme.dimensions["A"]
    for judge in dim.judges:
        assert re.search(rf"{judge.name}\s+{re.escape(f'{judge.measure:+.2f}')}", text)
    # the Wright map's prompt counts add up to the estimated prompts
    counts = [int(m) for m in re.findall(r"#+ (\d+)", text)]
    assert sum(counts) == sum(e.estimated for e in dim.items) == 60
    assert max(len(m) for m in re.findall(r"#+", text)) <= 30


def test_no_clear_difference_and_no_bias_line():
    sim = simulate(n_models=2, n_items=20, n_judges=2, theta=np.array([0.0, 0.02]), seed=4)
    result = score_arrays(sim.models, sim.items, sim.judges, np.full(sim.scores.size, "A"),
                          sim.scores, 1, 5, estimator="jml")
    dim = result.dimensions["A"]
    assert dim.comparisons[0].z < 1.96 and max(abs(b.z) for b in dim.bias) < 2  # this seed
    text = rendered(render_score, result)
    assert "no clear difference" in text
    assert "JML: prompts as fixed effects" in text
    assert "no judge × model bias with |z| ≥ 2" in text
    assert "Warnings" not in text  # no warnings, no panel


def test_bias_shown_with_its_direction():
    """judge-0 rates model-1 a point higher than it should: a bias in favour."""
    sim = simulate(n_models=3, n_items=60, n_judges=3, seed=5)
    scores = sim.scores.copy()
    sel = (sim.judges == "judge-0") & (sim.models == "model-1")
    scores[sel] = np.minimum(scores[sel] + 1, 5)
    result = score_arrays(sim.models, sim.items, sim.judges, np.full(scores.size, "A"), scores,
                          1, 5)
    text = rendered(render_score, result)
    assert "positive = the judge favours the model" in text
    assert re.search(r"judge-0\s+model-1\s+\+\d\.\d\d\s+0\.\d\d\s+\+\d+\.\d\s+\d+\s+favours", text)


def test_unused_category_and_disordered_thresholds(fit_with_extreme):
    """A result edited by hand: category 4 never used, the step into 5 below the one into 3."""
    dim = fit_with_extreme.dimensions["A"]
    steps = [ThresholdResult(2, -1.0, 0.1), ThresholdResult(3, 0.5, 0.1),
             ThresholdResult(5, 0.4, 0.2)]
    dim = dataclasses.replace(dim, thresholds=steps, category_counts={**dim.category_counts, 4: 0})
    text = rendered(render_score, dataclasses.replace(fit_with_extreme, dimensions={"A": dim}))
    assert "Thresholds: disordered" in text
    assert re.search(r"\n\s+4\s+0 unused\s+—\s+—", text)
    assert re.search(r"\n\s+5\s+207\s+\+0\.40\s+0\.20", text)


@pytest.mark.parametrize("width", [100, 140])
def test_lines_fit_the_width(fit_with_extreme, width):
    out = rendered(render_score, fit_with_extreme, width=width)
    assert max(len(line) for line in out.splitlines()) <= width
    assert "model-2" in out and "Wright map" in out


def test_names_are_not_markup():
    sim = simulate(n_models=2, n_items=20, n_judges=2, seed=2)
    models = np.char.add(sim.models, "[bold]")
    result = score_arrays(models, sim.items, sim.judges, np.full(sim.scores.size, "A"),
                          sim.scores, 1, 5)
    assert "model-0[bold]" in rendered(render_score, result)


def test_selftest_table_and_summary():
    rows = [
        {"parameter": "theta[model-0]", "truth": -1.0, "estimate": -0.93, "se": 0.1,
         "covered": True},
        {"parameter": "tau[2]", "truth": 0.5, "estimate": 0.9, "se": 0.1, "covered": False},
    ]
    text = rendered(render_selftest, rows, {"slope": 0.987, "coverage": 0.95, "estimator": "mml"})
    assert re.search(r"theta\[model-0\]\s+-1\.000\s+-0\.930\s+0\.100\s+\+0\.070\s+✓", text)
    assert re.search(r"tau\[2\]\s+\+0\.500\s+\+0\.900\s+0\.100\s+\+0\.400\s+✗", text)
    assert "0.987" in text and "95%" in text and "mml" in text
