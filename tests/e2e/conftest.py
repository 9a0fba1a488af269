from __future__ import annotations

import pytest

from tests.support import NodeProc


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeProc(tmp_path_factory.mktemp("node"), "--call-timeout", "5", "--heartbeat-interval", "120")
    n.start()
    yield n
    n.stop()
