"""A normal (non-editable) build: the wheel holds one import package, `chargeyard`,
with the compiled codec and listener, and it works when unpacked outside the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout_and_import(tmp_path):
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, timeout=300, cwd=tmp_path)
    wheel = next(out.glob("chargeyard-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"chargeyard"}, tops
    for ext in ("core/_codec", "worker/_listener"):
        assert any(n.startswith(f"chargeyard/{ext}") and n.endswith(".so") for n in names), ext
    for sub in ("core", "core/messages", "worker", "router", "store", "services", "bench"):
        assert f"chargeyard/{sub}/__init__.py" in names, sub
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site), CHARGEYARD_REQUIRE_EXT="1")
    code = ("import chargeyard.core as c, chargeyard.worker.server, chargeyard.router.api; "
            "assert c.IMPL == 'cython', c.IMPL; assert c.__file__.startswith(%r), c.__file__; "
            "from chargeyard.worker.session import LISTENER_IMPL; assert LISTENER_IMPL == 'cython'; "
            "print(c.Codec('2.0.1').decode(b'[2,\"1\",\"Heartbeat\",{}]'))" % str(site))
    res = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "HeartbeatRequest" in res.stdout
