"""bench/broker.py keeps running as the broker code changes. Not a timing test: tiny sizes, no verdicts read."""

from pathlib import Path

from benches import run_bench
from brokers import require_rabbitmq

TINY = ["--messages", "300", "--rounds", "1", "--backlog", "300", "--stats", "5", "--stat-rounds", "2"]


def test_broker_bench_runs_and_prints_its_three_figures(tmp_path: Path) -> None:
    require_rabbitmq()
    result = run_bench("broker.py", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figures = ("submit with confirms", "worker consume+ack", "publishing exam.in_reading", "round 2:", "STAT p99")
    for figure in (*figures, "raw pika reader"):
        assert figure in result.stdout
