"""Throughput and memory of localpeer's many-facet Rasch fits, next to one Python peer.

    python bench/score_bench.py                                  # 10k, 100k and 1M ratings
    python bench/score_bench.py --sizes 10000,100000 --json out.json
    python bench/score_bench.py --sizes 1000000 --profile        # + cProfile of fit_jml/fit_mml
    python bench/score_bench.py --sizes 1000000 --command 3 --json out.json
        # + the whole `python -m localpeer score FILE.csv --estimator E [--quiet]`, median of 3,
        #   and MML with --threads (every CPU, at most 7) beside the one-thread default here

Data: one dimension, 20 models x 10,000 prompts x 5 judges, 5 categories, drawn by
`localpeer.score.simulate.simulate(20, 10000, 5, missing=1 - N/1e6, seed=...)`, so N is the
expected number of ratings (binomial; the table shows the count actually drawn; 1M is fully
crossed). Each size is simulated once in this process and saved to an .npz; every fit then
runs in its own fresh subprocess that loads the same file, so data generation is outside the
timed region and every tool sees the same ratings.

What is timed (wall clock, one process per fit, BLAS/OpenMP pinned to one thread):
  localpeer JML  build_design + fit_jml   (Newton, Schur complement over the prompts)
  localpeer MML  build_design + fit_mml   (prompts random, adaptive Gauss-Hermite, 7 nodes)
  raschpy MFRM   long ratings -> raschpy's wide DataFrame + MFRM(...) + calibrate(model=
                 "global") + person_estimates(model="global"), i.e. from the same long
                 arrays to estimates of every facet (stage times are in --json).
Peak RSS is the child's VmHWM over the timed region only (reset with /proc/self/clear_refs
just before it; it still counts what is already resident: interpreter, libraries, the input
arrays). Where the reset is not allowed the whole child's peak is reported and flagged "*".

The peer: raschpy 1.4.0, `raschpy.MFRM` (Elliott & Buttery). It takes a dense DataFrame with
a (Rater, Person) MultiIndex and one column per item, NaN = missing, scores 0..max_score.
Its 'global' sub-model is
    log P(k)/P(k-1) = theta_person - delta_item - lambda_rater - tau_k,
the same rating-scale MFRM as localpeer's  theta_model - delta_prompt - rho_judge - tau_k.
Facet mapping used here:  raschpy Rater  = our judge   (lambda_r = rho_j, higher = harsher),
                          raschpy Item   = our model   (delta_i = -theta_m),
                          raschpy Person = our prompt  (theta_n = -delta_p).
So a model's trait is MINUS raschpy's item location. The "obvious" mapping (models as
persons, prompts as items) is not usable: raschpy's default estimator builds dense item x item
pattern-count arrays of shape (raters, categories, items, items), i.e. 5*5*10,000^2 float64 =
20 GB for 10,000 prompts, whatever the number of ratings; with models as items they are 20x20.
Since the likelihood is symmetric in (theta, delta) up to sign, the mapping changes nothing in
the model. Default estimator since raschpy 1.4.0: estimation='cp-full-rcl', a regularised
pairwise composite (conditional) likelihood -- persons (here: prompts) cancel out of every
comparison, so it has no incidental-parameter bias, unlike JML; it carries small smoothing
constants on the pattern counts and a ridge (0.3) on the rater effects. raschpy centres item
locations to mean zero; localpeer centres prompts, judges and thresholds and leaves theta free,
so theta agreement is computed after subtracting each tool's mean over the common models.
"scale vs JML" is the least-squares slope of a tool's centred theta on JML's centred theta.

Exit status: 0 unless a localpeer fit crashed (a peer failure or timeout is reported, not fatal).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

N_MODELS, N_ITEMS, N_JUDGES, N_CATEGORIES = 20, 10_000, 5, 5
FULL = N_MODELS * N_ITEMS * N_JUDGES
TOOLS = ("jml", "mml", "raschpy")
LABEL = {
    "jml": ("localpeer", "JML"),
    "mml": ("localpeer", "MML (7-node AGHQ, 1 thread)"),
    "raschpy": ("raschpy 1.4.0 MFRM", "cp-full-rcl, 'global'"),
}
TARGET_JML_S, TARGET_JML_MB, TARGET_MML_S = 10.0, 2048.0, 30.0
TARGET_COMMAND_S = 3.0  # the whole `localpeer score` at 1M ratings (issue 15)
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# child side: one fit, one process
# --------------------------------------------------------------------------------------------

from peak_memory import peak_mb as _peak_mb  # noqa: E402
from peak_memory import reset_peak as _reset_peak  # noqa: E402
from peak_memory import status_kb as _status_kb  # noqa: E402


def _fit_localpeer(tool, data):
    from localpeer.score.design import build_design
    from localpeer.score.jml import fit_jml
    from localpeer.score.mml import fit_mml

    fit = fit_jml if tool == "jml" else fit_mml
    t0 = time.perf_counter()
    design = build_design("bench", data["models"], data["items"], data["judges"],
                          data["scores"], int(data["scale_min"]), int(data["scale_max"]))
    t1 = time.perf_counter()
    est = fit(design)
    t2 = time.perf_counter()
    return dict(
        stages={"build_design": t1 - t0, f"fit_{tool}": t2 - t1},
        theta=dict(zip(design.models.kept, map(float, est.theta), strict=True)),
        rho=dict(zip(design.judges.kept, map(float, est.rho), strict=True)),
        converged=bool(est.converged),
        iterations=int(est.iterations),
        notes=list(design.warnings) + list(est.warnings),
    )


def _fit_raschpy(data):
    import warnings

    import pandas as pd
    import raschpy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        # raschpy wants (Rater, Person) rows x Item columns, scores 0..max_score, NaN = missing
        long = pd.Series(
            (data["scores"] - int(data["scale_min"])).astype(float),
            index=pd.MultiIndex.from_arrays(
                [data["judges"], data["items"], data["models"]], names=["Rater", "Person", "Item"]
            ),
        )
        wide = long.unstack("Item")
        t1 = time.perf_counter()
        mfrm = raschpy.MFRM(wide, max_score=int(data["scale_max"]) - int(data["scale_min"]),
                            facet="judge")
        t2 = time.perf_counter()
        mfrm.calibrate(model="global")
        t3 = time.perf_counter()
        mfrm.person_estimates(model="global")
        t4 = time.perf_counter()
    notes = []
    for w in caught:
        msg = " ".join(str(w.message).split())
        msg = msg if len(msg) <= 240 else msg[:237] + "..."
        if msg not in notes:
            notes.append(msg)
    items = mfrm.items  # item = our model; theta_model = -item location
    return dict(
        stages={"to_wide_dataframe": t1 - t0, "MFRM_init": t2 - t1, "calibrate_global": t3 - t2,
                "person_estimates": t4 - t3},
        theta={str(k): -float(v) for k, v in items.items()},
        rho={str(k): float(v) for k, v in mfrm.facet_effects_global.items()},
        converged=None if mfrm.convergence is None else bool(mfrm.convergence.get("converged")),
        iterations=None if mfrm.convergence is None else mfrm.convergence.get("iterations"),
        estimation=getattr(mfrm, "estimation", None),
        wide_shape=list(wide.shape),
        notes=notes,
    )


def child_main(tool: str, data_path: str, out_path: str) -> None:
    loaded = np.load(data_path)
    data = {k: loaded[k] for k in loaded.files}
    # import the tool before the timed region: import cost is not the fit's
    if tool == "raschpy":
        import pandas  # noqa: F401
        import raschpy  # noqa: F401
    else:
        import localpeer.score.jml  # noqa: F401
        import localpeer.score.mml  # noqa: F401
    proc_peak_before = _peak_mb()
    base = (_status_kb("VmRSS") or 0) / 1024
    reset = _reset_peak()
    t0 = time.perf_counter()
    res = _fit_raschpy(data) if tool == "raschpy" else _fit_localpeer(tool, data)
    wall = time.perf_counter() - t0
    res.update(
        tool=tool, wall_s=wall, n=int(data["scores"].size), peak_mb=_peak_mb(),
        peak_is_fit_only=reset, base_rss_mb=base,
        proc_peak_before_fit_mb=proc_peak_before,
    )
    Path(out_path).write_text(json.dumps(res))


def profile_main(data_path: str, top: int) -> None:
    import cProfile
    import io
    import pstats

    from localpeer.score.design import build_design
    from localpeer.score.jml import fit_jml
    from localpeer.score.mml import fit_mml

    loaded = np.load(data_path)
    data = {k: loaded[k] for k in loaded.files}
    args = ("bench", data["models"], data["items"], data["judges"], data["scores"],
            int(data["scale_min"]), int(data["scale_max"]))
    design = build_design(*args)
    for name, fn, fargs in (("build_design", build_design, args), ("fit_jml", fit_jml, (design,)),
                            ("fit_mml", fit_mml, (design,))):
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.runcall(fn, *fargs)
        wall = time.perf_counter() - t0
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime").print_stats(top)
        lines = buf.getvalue().splitlines()
        start = next((k for k, s in enumerate(lines) if s.lstrip().startswith("ncalls")), 0)
        print(f"\n### cProfile {name}, {data['scores'].size:,} ratings "
              f"({wall:.2f} s under the profiler), top {top} by tottime\n")
        print("```")
        print("\n".join(s for s in lines[start:] if s.strip()))
        print("```")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------

def simulate_to(path: Path, n: int, seed: int) -> tuple[int, dict]:
    from localpeer.score.simulate import simulate

    sim = simulate(N_MODELS, N_ITEMS, N_JUDGES, n_categories=N_CATEGORIES,
                   missing=max(0.0, 1.0 - n / FULL), seed=seed)
    names = np.char.add("model-", np.char.zfill(np.arange(N_MODELS).astype(str),
                                                 len(str(N_MODELS))))
    np.savez(path, models=sim.models, items=sim.items, judges=sim.judges, scores=sim.scores,
             scale_min=sim.scale_min, scale_max=sim.scale_max)
    truth = dict(zip(map(str, names), map(float, sim.truth.theta), strict=True))
    return int(sim.scores.size), truth


def run_child(tool: str, data: Path, out: Path, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", tool,
           "--_data", str(data), "--_out", str(out)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(tool=tool, status="timeout", error=f"killed after {timeout:g} s",
                    elapsed_s=time.perf_counter() - t0)
    if proc.returncode != 0 or not out.exists():
        tail = [s for s in (proc.stderr or "").strip().splitlines() if s.strip()]
        return dict(tool=tool, status="failed", returncode=proc.returncode,
                    error=tail[-1] if tail else f"exit {proc.returncode}, no output",
                    stderr_tail="\n".join(tail[-15:]))
    res = json.loads(out.read_text())
    res["status"] = "ok"
    return res


def time_command(data: Path, tmp: Path, repeats: int) -> dict:
    """Median wall time of the whole command (read CSV, design, fit, report) per variant."""
    loaded = np.load(data)
    csv_path = tmp / (data.stem + ".csv")
    with csv_path.open("w") as fh:
        fh.write("model,item,judge,dimension,score\n")
        for row in zip(loaded["models"].tolist(), loaded["items"].tolist(),
                       loaded["judges"].tolist(), loaded["scores"].tolist()):
            fh.write(f"{row[0]},{row[1]},{row[2]},A,{row[3]}\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = {}
    # this process pins OMP_NUM_THREADS=1, which MML's node threads follow unless --threads
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    variants = [["--estimator", est] + quiet for est in ("jml", "mml") for quiet in
                (["--quiet"], [])]
    if (cpus or 1) > 1:
        variants.append(["--estimator", "mml", "--threads", str(min(cpus, 7))])
    for variant in variants:
        cmd = [sys.executable, "-m", "localpeer", "score", str(csv_path), *variant]
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.strip().splitlines()[-1:])
        key = " ".join(variant).removeprefix("--estimator ")
        out[key] = dict(median_s=float(np.median(walls)), walls_s=walls,
                        command=" ".join(cmd[1:]))
    return out


def centred(theta: dict, names: list[str]) -> np.ndarray:
    v = np.array([theta[k] for k in names], float)
    return v - v.mean()


def agreement(res: dict, ref: dict | None, truth: dict) -> dict:
    out = {}
    if res.get("status") != "ok":
        return out
    names = sorted(truth)
    common = [k for k in names if k in res["theta"]]
    if len(common) >= 2:
        out["max_abs_err_truth"] = float(np.abs(
            centred(res["theta"], common) - centred(truth, common)).max())
    if ref is None or ref.get("status") != "ok" or res is ref:
        return out
    common = [k for k in common if k in ref["theta"]]
    if len(common) < 2:
        return out
    a, b = centred(ref["theta"], common), centred(res["theta"], common)
    out.update(
        n_common=len(common),
        corr=float(np.corrcoef(a, b)[0, 1]),
        max_abs_diff=float(np.abs(a - b).max()),
        scale=float((a @ b) / (a @ a)),
    )
    jr = [k for k in ref.get("rho", {}) if k in res.get("rho", {})]
    if len(jr) >= 2:
        ra, rb = centred(ref["rho"], jr), centred(res["rho"], jr)
        out["rho_max_abs_diff"] = float(np.abs(ra - rb).max())
    return out


def fmt_row(n_nominal: int, res: dict) -> list[str]:
    tool, est = LABEL[res["tool"]]
    ag = res.get("agreement", {})
    n = res.get("n", n_nominal)
    if res.get("status") != "ok":
        what = res["status"] if res["status"] != "failed" else "failed: " + res.get("error", "")
        return [f"{n:,}", tool, est, what, "", "", "", "", "", ""]
    peak = f"{res['peak_mb']:.0f}" + ("" if res.get("peak_is_fit_only") else "*")
    is_ref = res["tool"] == "jml"
    return [
        f"{n:,}", tool, est,
        f"{res['wall_s']:.2f}",
        f"{n / res['wall_s']:,.0f}",
        peak,
        "(ref)" if is_ref else (f"{ag['corr']:.6f}" if "corr" in ag else "n/a"),
        "(ref)" if is_ref else (f"{ag['max_abs_diff']:.4f}" if "max_abs_diff" in ag else "n/a"),
        "(ref)" if is_ref else (f"{ag['scale']:.4f}" if "scale" in ag else "n/a"),
        f"{ag['max_abs_err_truth']:.4f}" if "max_abs_err_truth" in ag else "n/a",
    ]


HEADER = ["ratings", "tool", "estimator", "wall s", "ratings/s", "peak RSS MB",
          "θ corr vs localpeer JML", "max\\|Δθ\\|", "scale vs JML", "max\\|θ−true\\|"]


def markdown_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [HEADER] + rows) for c in range(len(HEADER))]
    right = {0, 3, 4, 5, 6, 7, 8, 9}
    cells = lambda r: zip(r, widths, strict=True)  # noqa: E731
    line = lambda r: "| " + " | ".join(  # noqa: E731
        (s.rjust(w) if c in right else s.ljust(w)) for c, (s, w) in enumerate(cells(r))
    ) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if c in right else ("-" * (w + 2))
                         for c, w in enumerate(widths)) + "|"
    return "\n".join([line(HEADER), sep] + [line(r) for r in rows])


def target_lines(results: dict) -> list[str]:
    at = results.get(FULL)
    if at is None:
        return [f"targets: not checked ({FULL:,} not in --sizes)"]

    def verdict(value, limit, unit):
        if value <= limit:
            return f"{value:.2f} {unit} < {limit:g} {unit}: PASS"
        return (f"{value:.2f} {unit} vs < {limit:g} {unit}: MISS by {value - limit:.2f} {unit} "
                f"({value / limit:.2f}x)")

    out = []
    jml, mml = at.get("jml"), at.get("mml")
    if jml and jml.get("status") == "ok":
        out.append(f"target JML 1M wall: {verdict(jml['wall_s'], TARGET_JML_S, 's')}")
        out.append(f"target JML 1M peak RSS: {verdict(jml['peak_mb'], TARGET_JML_MB, 'MB')}")
    elif jml:
        out.append(f"target JML 1M: MISS ({jml['status']})")
    if mml and mml.get("status") == "ok":
        out.append(f"target MML 1M wall: {verdict(mml['wall_s'], TARGET_MML_S, 's')}")
    elif mml:
        out.append(f"target MML 1M: MISS ({mml['status']})")
    return out


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(s.split(":", 1)[1].strip() for s in fh if s.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    from importlib import metadata

    for mod in ("scipy", "pandas", "raschpy"):
        try:
            versions.append(f"{mod} {metadata.version(mod)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{mod} missing")
    return f"{cpu}, {os.cpu_count()} cores, 1 BLAS thread; " + ", ".join(versions)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000",
                    help=f"comma-separated expected rating counts (max {FULL})")
    ap.add_argument("--peer-timeout", type=float, default=120.0,
                    help="seconds before a raschpy fit is killed and reported as timeout")
    ap.add_argument("--fit-timeout", type=float, default=600.0,
                    help="seconds before a localpeer fit is killed and reported as timeout")
    ap.add_argument("--tools", default=",".join(TOOLS), help="subset of " + ",".join(TOOLS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    ap.add_argument("--profile", action="store_true",
                    help="afterwards, cProfile build_design/fit_jml/fit_mml at the largest size")
    ap.add_argument("--profile-top", type=int, default=10)
    ap.add_argument("--command", type=int, default=0, metavar="REPEATS",
                    help="also time the whole `localpeer score FILE.csv` at the largest size")
    ap.add_argument("--_child", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--_profile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_data", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child:
        child_main(args._child, args._data, args._out)
        return 0
    if args._profile:
        profile_main(args._data, args.profile_top)
        return 0

    sys.path.insert(0, str(REPO))
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    if any(not 0 < s <= FULL for s in sizes):
        ap.error(f"sizes must be in 1..{FULL}")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if any(t not in TOOLS for t in tools):
        ap.error(f"--tools must be a subset of {','.join(TOOLS)}")
    # JML is the reference for agreement: run it first
    tools = sorted(tools, key=TOOLS.index)

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results: dict[int, dict] = {}
    meta = dict(design=f"{N_MODELS} models x {N_ITEMS:,} prompts x {N_JUDGES} judges, "
                       f"{N_CATEGORIES} categories, one dimension",
                seed=args.seed, machine=machine_line(), peer_timeout_s=args.peer_timeout,
                fit_timeout_s=args.fit_timeout)
    localpeer_crashed = False
    with tempfile.TemporaryDirectory(prefix="score_bench_") as tmp:
        tmp = Path(tmp)
        for size in sizes:
            data = tmp / f"ratings_{size}.npz"
            t0 = time.perf_counter()
            n, truth = simulate_to(data, size, args.seed)
            log(f"[{size:,}] simulated {n:,} ratings in {time.perf_counter() - t0:.1f} s")
            results[size] = {"_n": n, "_truth": truth}
            for tool in tools:
                timeout = args.peer_timeout if tool == "raschpy" else args.fit_timeout
                log(f"[{size:,}] {tool} ...")
                res = run_child(tool, data, tmp / f"{tool}_{size}.json", timeout)
                res.setdefault("n", n)
                results[size][tool] = res
                if res["status"] == "ok":
                    log(f"[{size:,}] {tool}: {res['wall_s']:.2f} s, peak {res['peak_mb']:.0f} MB")
                else:
                    log(f"[{size:,}] {tool}: {res['status']}: {res.get('error', '')}")
                    if tool != "raschpy" and res["status"] == "failed":
                        localpeer_crashed = True
            ref = results[size].get("jml")
            for tool in tools:
                results[size][tool]["agreement"] = agreement(results[size][tool], ref, truth)

        rows = [fmt_row(size, results[size][tool]) for size in sizes for tool in tools]
        print(f"## localpeer score benchmark ({meta['design']})\n")
        print(f"machine: {meta['machine']}; seed {args.seed}\n")
        print(markdown_table(rows))
        print()
        print("peak RSS: the fit process's high-water mark over the timed region (interpreter, "
              "libraries and input arrays included)"
              + ("; * = whole child process (peak reset not allowed here)"
                 if any(not r.get("peak_is_fit_only", True)
                        for s in sizes for r in (results[s][t] for t in tools)
                        if r.get("status") == "ok") else "") + ".")
        print("θ agreement: after centring each tool's θ over the models; raschpy θ = −(item "
              "location), models being raschpy's items. scale = slope of tool θ on JML θ.")
        print()
        for line in target_lines(results):
            print(line)
        notes = []
        for size in sizes:
            for tool in tools:
                r = results[size][tool]
                if r.get("status") == "failed":
                    notes.append(f"- {size:,} {tool} failed: {r.get('error')}\n"
                                 + "\n".join("    " + s for s in r.get("stderr_tail", "")
                                             .splitlines()))
                elif r.get("status") == "timeout":
                    notes.append(f"- {size:,} {tool}: timeout ({r.get('error')})")
                elif r.get("status") == "ok":
                    st = ", ".join(f"{k} {v:.2f} s" for k, v in r["stages"].items())
                    extra = []
                    if r.get("converged") is False:
                        extra.append("NOT CONVERGED")
                    if "rho_max_abs_diff" in r.get("agreement", {}):
                        extra.append(f"judge ρ max|Δ| vs JML "
                                     f"{r['agreement']['rho_max_abs_diff']:.4f}")
                    notes.append(f"- {size:,} {tool}: {st}; iterations {r.get('iterations')}; "
                                 f"RSS before the fit {r['base_rss_mb']:.0f} MB"
                                 + ("; " + "; ".join(extra) if extra else ""))
                    for msg in r.get("notes", [])[:4]:
                        notes.append(f"    note: {msg}")
        if notes:
            print("\nstages:")
            print("\n".join(notes))
        sys.stdout.flush()

        if args.command:
            big = max(sizes)
            log(f"[{big:,}] whole command x{args.command} ...")
            meta["command"] = time_command(tmp / f"ratings_{big}.npz", tmp, args.command)
            print(f"\nwhole command at {results[big]['_n']:,} ratings (median of "
                  f"{args.command}):")
            peer = results[big].get("raschpy", {})
            peer_s = peer.get("wall_s") if peer.get("status") == "ok" else None
            for key, r in meta["command"].items():
                ratio = f"  ({r['median_s'] / peer_s:.2f}x raschpy's fit)" if peer_s else ""
                verdict = "PASS" if r["median_s"] <= TARGET_COMMAND_S else "FAIL"
                print(f"  localpeer score FILE.csv --estimator {key}: {r['median_s']:.2f} s"
                      f"{ratio}  [target <= {TARGET_COMMAND_S:g} s: {verdict}]")
            for tool in tools:
                r = results[big][tool]
                if r.get("status") == "ok":
                    ratio = f"  ({r['wall_s'] / peer_s:.2f}x raschpy's fit)" if peer_s else ""
                    print(f"  fit only, {tool}: {r['wall_s']:.2f} s{ratio}")
            sys.stdout.flush()

        if args.profile:
            big = max(sizes)
            log(f"[{big:,}] profiling build_design / fit_jml / fit_mml ...")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_profile",
                   "--_data", str(tmp / f"ratings_{big}.npz"),
                   "--profile-top", str(args.profile_top)]
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                      timeout=3 * args.fit_timeout)
                print(proc.stdout, end="")
                if proc.returncode != 0:
                    print(f"profile failed: {proc.stderr.strip().splitlines()[-1:]}")
            except subprocess.TimeoutExpired:
                print("profile: timeout")

    if args.json:
        payload = dict(meta=meta, results={
            str(size): dict(
                n=results[size]["_n"], truth_theta=results[size]["_truth"],
                **{t: results[size][t] for t in tools},
            ) for size in sizes
        }, targets=target_lines(results))
        Path(args.json).write_text(json.dumps(payload, indent=1))
        log(f"wrote {args.json}")
    return 1 if localpeer_crashed else 0


if __name__ == "__main__":
    sys.exit(main())
