"""Requests/s of `localpeer judge` against an OpenAI-compatible server, --parallel 1 vs 8.

    python bench/judge_bench.py                                  # 25 transcripts x 4 dims, 50 ms
    python bench/judge_bench.py --latency-ms 200 --parallel 1,4,8,16 --json judge.json

The server is http.server's ThreadingHTTPServer in this process, answering every
chat/completions request with a valid grade after a fixed sleep (--latency-ms): a stand-in for
llama-server or vLLM with that much time per request and enough slots, so the numbers measure
localpeer's side (thread pool, HTTP client, one fsynced append per grade), not a model.
What is timed: `judge_folder(folder, [HttpJudge], dims=A,T,E,C, parallel=N)` on a fresh copy of
the same transcripts for each N (wall clock, building the judge and reading the transcripts
included). requests/s = grades written / wall; the ideal at N is N / latency.

Exit status: 0 unless a run wrote fewer grades than it was asked for.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localpeer.chat.transcript import transcript_line  # noqa: E402
from localpeer.judge.backends import make_judge  # noqa: E402
from localpeer.judge.run import judge_folder  # noqa: E402

DIMS = ("A", "T", "E", "C")


class _Grader(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.server.latency_s)
        content = json.dumps({"rationale": "steady", "score": 3})
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content},
                                        "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def write_transcripts(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    lines = [transcript_line(f"m/p{i}/s0", "m", f"p{i}",
                             [{"role": "user", "content": f"Question {i}: should I quit?"},
                              {"role": "assistant", "content": f"Answer {i}: not yet."}], {})
             for i in range(n)]
    (folder / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def run_once(url: str, n_transcripts: int, parallel: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "t"
        write_transcripts(folder, n_transcripts)
        start = time.perf_counter()
        judge = make_judge(f"bench={url}#judge")
        summary = judge_folder(folder, [judge], dims=DIMS, parallel=parallel)
        wall_s = time.perf_counter() - start
    return {"parallel": parallel, "grades": summary.rated, "missing": summary.missing,
            "wall_s": round(wall_s, 3), "requests_per_s": round(summary.rated / wall_s, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--transcripts", type=int, default=25, help="transcripts (x 4 dimensions)")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="server time per request")
    ap.add_argument("--parallel", default="1,8", help="comma-separated N (default 1,8)")
    ap.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.parallel.split(",") if x.strip()]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Grader)
    server.latency_s = args.latency_ms / 1000
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        rows = [run_once(url, args.transcripts, n) for n in levels]
    finally:
        server.shutdown()
        server.server_close()
    base = rows[0]["requests_per_s"]
    print(f"localpeer judge, {args.transcripts * len(DIMS)} grades, server latency "
          f"{args.latency_ms:g} ms ({platform.python_version()}, {platform.machine()})")
    print(f"{'parallel':>8} {'grades':>7} {'wall s':>8} {'requests/s':>11} {'ideal':>7} "
          f"{'vs first':>9}")
    for row in rows:
        ideal = row["parallel"] * 1000 / args.latency_ms
        row["ratio_vs_first"] = round(row["requests_per_s"] / base, 2) if base else None
        print(f"{row['parallel']:>8} {row['grades']:>7} {row['wall_s']:>8.2f} "
              f"{row['requests_per_s']:>11.1f} {ideal:>7.1f} {row['ratio_vs_first']:>8.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency_ms": args.latency_ms,
                                               "transcripts": args.transcripts,
                                               "dims": list(DIMS), "runs": rows}, indent=2))
    expected = args.transcripts * len(DIMS)
    return 0 if all(r["grades"] == expected for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
