"""Generation tokens/s through `localpeer generate` next to raw llama-cpp-python, on the same
GGUF, prompts and sampler, in one run.

    python bench/chat_bench.py                       # embedded SmolLM2 GGUF, 16 prompts, 3 repeats
    python bench/chat_bench.py --gguf models/gguf/peer-smollm2-135m/peer-smollm2-135m-Q8_0.gguf

localpeer: `chat.generate.generate()` as `localpeer generate` runs it (sandboxed template,
context fit, streaming decode, one fsynced transcript line per reply). raw: `Llama.
create_chat_completion(messages, ...)` with the same sampler settings and, per prompt, the same
seed (`sample_seed`), its own template handling, nothing written. Each side runs in its own
subprocess (model load outside the timed region), alternating, `--repeats` times; tokens/s =
completion tokens / wall of the whole loop (prompt processing included). With the same prompt
tokens, seed and sampler chain both sides produce the same text; the table says whether they did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "personaknob-starter" / "test.jsonl"


def child(spec: dict) -> dict:
    from localpeer.chat.generate import generate, read_prompts, sample_seed
    from localpeer.chat.session import Sampler, load_engine

    items = read_prompts(Path(spec["prompts"]))[: spec["n"]]
    s = Sampler(temperature=spec["temperature"], max_tokens=spec["max_tokens"], seed=0)
    if spec["side"] == "localpeer":
        engine = load_engine(Path(spec["gguf"]), ctx=spec["ctx"], sampler=s,
                             threads=spec["threads"])
        out = Path(spec["work"]) / "localpeer.jsonl"
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        summary = generate(engine, items, out, 1, "bench", {})
        wall = time.perf_counter() - t0
        texts = [json.loads(x)["messages"][-1]["content"] for x in out.read_text().splitlines()]
        return {"wall_s": wall, "tokens": summary.tokens, "texts": texts}
    import llama_cpp

    llm = llama_cpp.Llama(model_path=spec["gguf"], n_ctx=spec["ctx"],
                          n_batch=min(spec["ctx"], 512), n_threads=spec["threads"],
                          verbose=False)
    tokens, texts = 0, []
    t0 = time.perf_counter()
    for item in items:
        reply = llm.create_chat_completion(
            messages=list(item.messages), temperature=s.temperature, top_p=s.top_p,
            top_k=s.top_k, min_p=s.min_p, repeat_penalty=s.repeat_penalty,
            max_tokens=s.max_tokens, seed=sample_seed(s.seed, item.id, 0))
        tokens += reply["usage"]["completion_tokens"]
        texts.append(reply["choices"][0]["message"]["content"])
    return {"wall_s": time.perf_counter() - t0, "tokens": tokens, "texts": texts}


def run_side(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{spec['side']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", help="default: the embedded SmolLM2-135M-Instruct Q4_1 GGUF")
    ap.add_argument("--prompts", default=str(PROMPTS))
    ap.add_argument("--n", type=int, default=16, help="prompts (default 16)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.gguf is None:
        from localpeer.deps import embedded_smollm2_gguf

        args.gguf = str(embedded_smollm2_gguf())
    runs: dict[str, list[dict]] = {"localpeer": [], "raw": []}
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.repeats):
            order = ["localpeer", "raw"] if r % 2 == 0 else ["raw", "localpeer"]
            for side in order:
                spec = {"side": side, "gguf": args.gguf, "prompts": args.prompts, "n": args.n,
                        "max_tokens": args.max_tokens, "temperature": args.temperature,
                        "ctx": args.ctx, "threads": args.threads, "work": work}
                res = run_side(spec)
                res["tokens_per_s"] = res["tokens"] / res["wall_s"]
                runs[side].append(res)
                print(f"[{r + 1}/{args.repeats}] {side:9s} {res['tokens']:5d} tokens "
                      f"{res['wall_s']:6.2f} s  {res['tokens_per_s']:7.1f} tokens/s", flush=True)
    med = {side: statistics.median(x["tokens_per_s"] for x in rs) for side, rs in runs.items()}
    same = sum(a == b for a, b in zip(runs["localpeer"][0]["texts"], runs["raw"][0]["texts"]))
    ratio = med["localpeer"] / med["raw"]
    print(f"\nGGUF {Path(args.gguf).name}; {args.n} prompts of {Path(args.prompts).name}, "
          f"max_tokens {args.max_tokens}, temperature {args.temperature}, {args.threads} "
          f"thread(s); median of {args.repeats}")
    print("| side | tokens | tokens/s (median) | runs |")
    print("|---|---:|---:|---|")
    for side, label in (("localpeer", "localpeer generate"),
                        ("raw", "raw llama-cpp-python create_chat_completion")):
        runs_txt = " / ".join(f"{x['tokens_per_s']:.1f}" for x in runs[side])
        print(f"| {label} | {runs[side][0]['tokens']} | {med[side]:.1f} | {runs_txt} |")
    print(f"\nratio localpeer / raw = {ratio:.3f} (target >= 0.97: "
          f"{'pass' if ratio >= 0.97 else 'MISS'}); identical replies {same}/{args.n}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "median": med, "ratio": ratio,
                                               "identical": same}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
