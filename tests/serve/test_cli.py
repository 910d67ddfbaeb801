"""`lntune serve` as a user runs it: a real process, Ctrl-C to stop; mistakes in its arguments are one line."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lntune.cli import main

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("arguments, message", [
    (["--adapter", "no-equals-sign"], "give NAME=DIR"),
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--adapter", "a=/nowhere"], "adapter a (/nowhere)"),
])
def test_argument_mistakes_are_one_line(serve_model, capsys, arguments, message):
    assert main(["serve", "--model", str(serve_model), "--port", "0", *arguments]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("lntune serve: error:") and message in error[0]


def test_without_the_serve_extra_the_command_says_what_to_install(serve_model, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed: importing it raises ImportError
    assert main(["serve", "--model", str(serve_model)]) == 1
    assert "needs uvicorn: pip install 'lntune[serve]'" in capsys.readouterr().err


def test_a_port_in_use_is_one_line(serve_model, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(serve_model), "--port", str(port)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("lntune serve: error: could not listen on 127.0.0.1:") and "--port" in error


def test_serve_command_answers_and_stops_on_ctrl_c(serve_model, adapter_dirs):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lntune", "serve", "--model", str(serve_model), "--port", str(port),
         "--adapter", f"ln={adapter_dirs['ln']}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert health["status"] == "ok" and health["adapters"] == 1
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": "ln", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 3
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        assert f"127.0.0.1:{port}" in stderr and "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
