"""leaklab.vllm_server without vLLM: command line, rank rounding, readiness and shutdown
against a stand-in `vllm.entrypoints.openai.api_server` module, and the clear error when vLLM
is absent. The real server is exercised by tests/test_vllm_backend.py (`make test-vllm`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from leaklab import vllm_server as vs

FAKE_SERVER = textwrap.dedent(
    """
    import argparse, json, os, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    p = argparse.ArgumentParser()
    p.add_argument("--model"); p.add_argument("--port", type=int); p.add_argument("--api-key")
    p.add_argument("--lora-modules", nargs="*", default=[])
    a, _ = p.parse_known_args()
    if os.environ.get("FAKE_VLLM_PIDFILE"):
        open(os.environ["FAKE_VLLM_PIDFILE"], "w").write(str(os.getpid()))
    if os.environ.get("FAKE_VLLM_FAIL"):
        print("boom: cannot load model", flush=True); sys.exit(3)
    time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0.5")))
    names = [a.model] + [m.split("=")[0] for m in a.lora_modules]
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Authorization") != f"Bearer {a.api_key}":
                self.send_response(401); self.end_headers(); return
            body = json.dumps({"data": [{"id": n} for n in names]}).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *args): pass
    HTTPServer(("127.0.0.1", a.port), H).serve_forever()
    """
)


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkgs" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in [pkg, pkg.parent, pkg.parent.parent]:
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(FAKE_SERVER)
    monkeypatch.syspath_prepend(str(tmp_path / "fakepkgs"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "fakepkgs"), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


def _adapter(folder: Path, r: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r}))
    return folder


def test_max_lora_rank_rounds_up_to_a_rank_vllm_serves(tmp_path):
    assert vs.max_lora_rank([]) == 16
    assert vs.max_lora_rank([_adapter(tmp_path / "a", 4)]) == 8
    assert vs.max_lora_rank([_adapter(tmp_path / "b", 16), _adapter(tmp_path / "c", 20)]) == 32
    with pytest.raises(vs.VLLMServerError):
        vs.max_lora_rank([_adapter(tmp_path / "d", 1024)])


def test_command_lists_every_adapter_under_its_own_path(tmp_path):
    a = _adapter(tmp_path / "x" / "adapter", 8)
    s = vs.VLLMServer("/models/base", [a], port=1234, python="/py")
    cmd = s.command()
    assert cmd[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == "/models/base"
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8"
    assert f"{a.resolve()}={a.resolve()}" in cmd  # the name Inspect sends for vllm/BASE:/path
    assert s.inspect_model(a) == f"vllm//models/base:{a.resolve()}"
    assert s.env() == {"VLLM_BASE_URL": "http://127.0.0.1:1234/v1", "VLLM_API_KEY": s.api_key}


def test_missing_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(vs, "vllm_available", lambda python=None: False)
    with pytest.raises(vs.VLLMNotInstalled, match="make setup-vllm"):
        vs.VLLMServer("/models/base").start()


def test_start_waits_for_readiness_and_stop_ends_the_process(fake_vllm):
    a = _adapter(fake_vllm / "ad", 8)
    server = vs.VLLMServer("/models/base", [a], startup_timeout=60)
    with server:
        assert server.running and server.startup_s is not None
        assert server.served_models() == ["/models/base", str(a.resolve())]
        proc = server.process
    assert not server.running and proc.poll() is not None


def test_a_server_that_dies_while_starting_reports_its_log(fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    with pytest.raises(vs.VLLMServerError, match="boom: cannot load model"):
        vs.VLLMServer("/models/base", startup_timeout=60).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie waiting for its reaper counts as ended
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def test_a_server_ends_when_its_parent_is_killed(fake_vllm, tmp_path, monkeypatch):
    """SIGKILL runs no atexit hook: the child guard must end the server (own session) itself."""
    pidfile = tmp_path / "server.pid"
    monkeypatch.setenv("FAKE_VLLM_PIDFILE", str(pidfile))
    monkeypatch.setenv("LEAKLAB_GUARD_GRACE_S", "2")
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from leaklab.vllm_server import VLLMServer
        s = VLLMServer("/models/base", startup_timeout=60).start()
        print("up", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "up"
        server_pid = int(pidfile.read_text())
        assert _alive(server_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 15
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid), "the vLLM server outlived its killed parent"
    finally:
        parent.kill()
        if pidfile.exists() and _alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), 9)


def test_pool_keeps_one_server_and_reuses_it_per_base(fake_vllm):
    pool = vs.ServerPool(startup_timeout=60)
    s1 = pool.get("/m/one")
    assert pool.get("/m/one") is s1
    s2 = pool.get("/m/two")
    assert s2 is not s1 and not s1.running and s2.running
    ep = vs.Endpoint("/m/three", "http://127.0.0.1:9/v1", "k")
    pool.endpoints["/m/three"] = ep
    assert pool.get("/m/three") is ep and s2.running  # a shared engine elsewhere: nothing started
    pool.close()
    assert not s2.running and len(pool.started) == 2


def test_leaklab_backend_starts_no_server():
    class Spec:
        backend = "leaklab"

    class Study:
        spec = Spec()

    servers, ckpts = vs.eval_servers(Study(), ["c1", "c2"])
    assert ckpts == ["c1", "c2"] and servers.for_checkpoint("c1") is None


def test_models_sharing_a_base_folder_share_one_server(tmp_path):
    """Two models of a study on the same folder: checkpoints grouped per folder, one server
    started with every adapter of both (no restart between them)."""
    from dataclasses import dataclass

    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    @dataclass(frozen=True)
    class M:
        name: str

    @dataclass(frozen=True)
    class C:
        model: M
        adapter: Path | None

    class Spec:
        backend = "vllm"

    class Study:
        spec = Spec()

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    a, b, o = M(str(folder)), M(str(folder) + "/"), M(str(other))
    ckpts = [C(a, None), C(o, None), C(b, None), C(a, tmp_path / "ad1"), C(o, tmp_path / "ad3"), C(b, tmp_path / "ad2")]
    servers, ordered = vs.eval_servers(Study(), ckpts)
    assert [c.model for c in ordered] == [a, b, a, b, o, o]
    started = []
    servers.get = lambda model, adapters: started.append((model, sorted(Path(x).name for x in adapters)))
    servers.for_checkpoint(ordered[0])
    servers.for_checkpoint(ordered[1])
    assert started == [(str(folder.resolve()), ["ad1", "ad2"])] * 2
