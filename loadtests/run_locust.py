"""Headless Locust run against a PersonaAgent Serve: CSV and HTML reports; non-zero exit on failures.

    python loadtests/run_locust.py --host http://127.0.0.1:8000 --users 20 --spawn-rate 5 --run-time 2m \
        --out loadtests/results/locust [--chat-weight 8 --feedback-weight 1 --import-weight 1] [--max-fail-ratio 0.01]

Exit code: Locust's own (1 when the failure ratio passes --max-fail-ratio, see the locustfile), or 2 when
the reports are missing. Prints the summary of the key rows (requests, TTFT, whole stream).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def build_command(args: argparse.Namespace, prefix: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", args.host, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
        "--run-time", args.run_time, "--stop-timeout", str(args.stop_timeout),
        "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary", "--loglevel", "WARNING",
        "--chat-weight", str(args.chat_weight), "--feedback-weight", str(args.feedback_weight),
        "--import-weight", str(args.import_weight), "--max-tokens", str(args.max_tokens),
        "--max-fail-ratio", str(args.max_fail_ratio), "--history-items", str(args.history_items),
        *(["--model", args.model] if args.model else []),
        *(["--api-key", args.api_key] if args.api_key else []),
    ]  # fmt: skip


def summary(stats_csv: Path) -> list[dict[str, str]]:
    with stats_csv.open() as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--spawn-rate", type=float, default=5)
    parser.add_argument("--run-time", default="60s")
    parser.add_argument(
        "--stop-timeout", type=int, default=30, help="seconds for in-flight requests at the end"
    )
    parser.add_argument("--out", default="loadtests/results/locust")
    parser.add_argument("--model", default="")
    parser.add_argument("--api-key", default="", help="an admin key (or $PERSONAAGENT_API_KEY)")
    parser.add_argument("--chat-weight", type=int, default=8)
    parser.add_argument("--feedback-weight", type=int, default=1)
    parser.add_argument("--import-weight", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-fail-ratio", type=float, default=0.01)
    parser.add_argument(
        "--history-items", type=int, default=6, help="interactions each user imports on start"
    )
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    code = subprocess.call(build_command(args, prefix))
    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.exists() or not Path(f"{prefix}.html").exists():
        print(f"locust wrote no reports under {out}", file=sys.stderr)
        return 2
    for row in summary(stats_csv):
        print(f"{row['Type']:>6} {row['Name']:<32} n={row['Request Count']:>5} fail={row['Failure Count']:>4} "
              f"p50={row['50%']:>6} ms p99={row['99%']:>6} ms rps={float(row['Requests/s']):.2f}")  # fmt: skip
    print(f"reports: {stats_csv}, {prefix}.html; exit code {code}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
