"""workflows/api_client.py: no server, a missing or wrong workflow file, a bad --server: one line, no traceback."""

import re
import socket
import sys
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
API_WORKFLOW = WORKFLOWS / "hunyuan_video_fp8_t2v_sampler_api.json"


@pytest.fixture(scope="module")
def api_client():
    sys.path.insert(0, str(WORKFLOWS))
    try:
        import api_client
    finally:
        sys.path.remove(str(WORKFLOWS))
    return api_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(api_client, capsys, *argv: str) -> tuple[int, str]:
    rc = api_client.main(list(argv))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return rc, err


def test_no_server_running(api_client, capsys, tmp_path):
    port = _free_port()
    rc, err = _run(api_client, capsys, str(API_WORKFLOW), "--server", f"127.0.0.1:{port}", "--out", str(tmp_path))
    assert rc == 2 and f"cannot talk to ComfyUI at 127.0.0.1:{port} (Connection refused)" in err
    assert "pass --server HOST:PORT" in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("folder", "is not a file"),
    ("bad-json", "is not valid JSON"),
    ("ui-format", r"is a UI workflow; use its \*_api.json twin"),
])
def test_bad_workflow_file(api_client, capsys, tmp_path, case, match):
    path = tmp_path / "w.json"
    if case == "folder":
        path.mkdir()
    elif case == "bad-json":
        path.write_text("{not json")
    elif case == "ui-format":
        path.write_text((WORKFLOWS / "hunyuan_video_fp8_t2v_sampler.json").read_text())
    rc, err = _run(api_client, capsys, str(path))
    assert rc == 2 and re.search(match, err), err


@pytest.mark.parametrize("server", ["localhost", "localhost:http", "127.0.0.1:70000"])
def test_bad_server_address(api_client, capsys, server):
    rc, err = _run(api_client, capsys, str(API_WORKFLOW), "--server", server)
    assert rc == 2 and "must be HOST:PORT, e.g. 127.0.0.1:8188" in err
