"""Fixtures for the core suite: both codec implementations and a seeded RNG.

Every codec test takes ``codec_cls`` and so runs against the pure-Python twin
(``core/codec.py``) and the compiled extension (``core/_codec.pyx``), both from
``twins.load``. The extension is skipped only when it is not importable and
``CHARGEYARD_REQUIRE_EXT`` is not set (then its absence is an error).
"""

from __future__ import annotations

import os
import random

import pytest

from chargeyard.core import twins

PyCodec = twins.load("chargeyard.core.codec", pure=True).Codec

try:
    CCodec = twins.load("chargeyard.core.codec", pure=False).Codec
except ImportError:  # pragma: no cover - depends on the install
    if twins.require_ext():
        raise
    CCodec = None

IMPLS = [pytest.param(PyCodec, id="python"),
         pytest.param(CCodec, id="cython",
                      marks=pytest.mark.skipif(CCodec is None, reason="extension not built"))]


class SeededRandom(random.Random):
    """A ``random.Random`` whose repr names its seed, so a failing assertion that
    shows it tells how to reproduce: ``CHARGEYARD_TEST_SEED=<seed> pytest ...``."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.initial_seed = seed

    def __repr__(self) -> str:
        return f"SeededRandom(seed={self.initial_seed}) [rerun with CHARGEYARD_TEST_SEED={self.initial_seed}]"


def pick_seed() -> int:
    env = os.environ.get("CHARGEYARD_TEST_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**32)


@pytest.fixture(params=IMPLS)
def codec_cls(request):
    return request.param


@pytest.fixture
def rng(request) -> SeededRandom:
    r = SeededRandom(pick_seed())
    request.node.user_properties.append(("seed", r.initial_seed))
    return r


def pytest_runtest_makereport(item, call):
    # print the seed under every failure, whatever the assertion message says
    if call.when == "call" and call.excinfo is not None:
        for name, value in item.user_properties:
            if name == "seed":
                item.add_report_section("call", "seed", f"CHARGEYARD_TEST_SEED={value}")
