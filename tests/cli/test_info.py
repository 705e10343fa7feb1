"""`sdcpp info` and the CLI's exit codes."""
import json
import subprocess
import sys

from sdcpp.cli import main


def test_info_prints_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "ggml" in out and "backends: " in out and "CPU" in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "CPU" in data["backends"]


def test_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "sdcpp.cli", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2
