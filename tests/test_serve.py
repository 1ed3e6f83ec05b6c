"""`hub serve`, `hub replay`, `hub worker` and `hub reports pull` as an operator runs them: separate processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import rabbitmq_vhost

REPO = Path(__file__).resolve().parents[1]
MESSAGES = REPO / "examples" / "messages"
HUB = [sys.executable, "-m", "hub"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(folder: Path, *, mllp: int, fhir: int, dicom: int) -> Path:
    example = (REPO / "examples" / "consortium.toml").read_text("utf-8")
    example = example.replace("port = 2575", f"port = {mllp}").replace("port = 8080", f"port = {fhir}")
    example = example.replace("port = 11112", f"port = {dicom}").replace(
        "study_stable_seconds = 10", "study_stable_seconds = 1"
    )
    example = example.replace('egress = "mllp://127.0.0.1:6601"', 'egress = "pull"')  # 於潜 pulls here
    example = example.replace("[hub]\n", f'[hub]\ndata_dir = "{folder / "data"}"\n')
    path = folder / "consortium.toml"
    path.write_text(example, "utf-8")
    return path


@pytest.fixture
def amqp() -> Iterator[str]:
    with rabbitmq_vhost() as url:
        yield url


def test_serve_replay_worker_and_pull_from_the_command_line(tmp_path: Path, amqp: str) -> None:
    config = write_config(tmp_path, mllp=free_port(), fhir=free_port(), dicom=free_port())
    env = os.environ | {"HUB_BROKER_URL": amqp, "HUB_TOKEN_QSH": "token-qsh"}
    common = ["--config", str(config)]
    serve = subprocess.Popen(
        [*HUB, "serve", *common, "--only", "mllp,fhir,dicom"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    worker = None
    try:
        assert serve.stderr is not None
        for line in serve.stderr:
            if "hub serve:" in line:
                assert re.search(r"mllp on \d+, fhir on \d+, dicom on \d+", line), line
                break
        files = [
            MESSAGES / "hl7v2" / "lab-cbc-gb18030.hl7",
            MESSAGES / "hl7v2" / "bad-oru-no-pid.hl7",
            MESSAGES / "fhir" / "lab-panel-transaction.json",
            MESSAGES / "dicom" / "ct-gbk-no-charset.dcm",
        ]
        replay = subprocess.run(
            [*HUB, "replay", *common, *map(str, files)],
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert replay.returncode == 1, replay.stdout + replay.stderr  # one file is bad, so not all accepted
        assert "4 sent: 3 accepted, 1 rejected" in replay.stdout
        assert re.search(r"rejected\s+\S+bad-oru-no-pid\.hl7\s+via mllp: AE: .*PID", replay.stdout)
        assert "via dicom: 0x0000" in replay.stdout

        # 於潜's CBC and GBK CT come back to it as files once a lab and an imaging worker have read them.
        handler = str(REPO / "examples" / "workers" / "lab.py") + ":review_lab"
        worker = subprocess.Popen(
            [*HUB, "worker", "lab", *common, "--handler", handler],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        out = tmp_path / "pulled"
        deadline = time.monotonic() + 60
        pulled: list[str] = []
        while not pulled and time.monotonic() < deadline:
            result = subprocess.run(
                [*HUB, "reports", "pull", *common, "--institution", "12330112472334561L", "--out", str(out)],
                env=env,
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            pulled = result.stdout.split()
            time.sleep(0.3)
        assert len(pulled) == 1 and pulled[0].endswith(".hl7")
        report = Path(pulled[0]).read_bytes()
        assert "白细胞计数".encode("gb18030") in report  # 於潜 is a GBK member: its report is GB 18030

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, serve.stderr.read() if serve.stderr else ""
        if worker is not None and worker.poll() is None:
            worker.kill()


def test_serve_refuses_an_invalid_config_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, mllp=0, fhir=0, dicom=0)
    config.write_text(config.read_text("utf-8").replace('code = "12330112472334561L"', 'code = "123"'), "utf-8")
    result = subprocess.run(
        [*HUB, "serve", "--config", str(config), "--broker", "memory://"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "institutions[2].code" in result.stderr and "GB 32100" in result.stderr


def test_every_command_takes_config_and_broker() -> None:
    for command in (
        ["serve"],
        ["worker", "lab", "--handler", "x:y"],
        ["replay", "x"],
        ["topology", "show"],
        ["demo"],
        ["reports", "pull", "--institution", "x"],
    ):
        result = subprocess.run([*HUB, *command, "--help"], check=False, capture_output=True, text=True, timeout=60)
        assert "--config" in result.stdout and "--broker" in result.stdout, command
