"""`sdcpp serve` from the command line: flags, defaults (loopback), errors before binding."""
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from sdcpp.cli import main  # noqa: E402


def test_serve_builds_the_app_and_binds_loopback_by_default(tiny_path, tmp_path, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.delenv("SDCPP_API_KEY", raising=False)
    assert main(["serve", "-m", tiny_path, "--max-queue", "3", "--max-steps", "9", "--lora-dir", str(tmp_path),
                 "-t", "2"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7860
    state = seen["app"].state.sdcpp
    assert state.queue.max_queue == 3 and state.limits.max_steps == 9 and state.config.api_key is None
    assert state.store.model is not None and state.store.model.lora_dir == str(tmp_path)


def test_serve_key_from_the_environment(tiny_path, monkeypatch, capsys):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("SDCPP_API_KEY", "from-env")
    assert main(["serve", "-m", tiny_path, "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert seen["app"].state.sdcpp.config.api_key == "from-env" and seen["port"] == 9000
    assert "warning" not in capsys.readouterr().err
    monkeypatch.delenv("SDCPP_API_KEY")
    assert main(["serve", "-m", tiny_path, "--host", "0.0.0.0"]) == 0
    assert "without --api-key" in capsys.readouterr().err


def test_serve_errors_exit_1_before_binding(tmp_path, tiny_path, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not bind"))
    assert main(["serve", "-m", str(tmp_path / "missing.safetensors")]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["serve", "-m", tiny_path, "--max-queue", "-1"]) == 1
    assert "--max-queue" in capsys.readouterr().err
