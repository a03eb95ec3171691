"""The vfio_cassette fixture (pytest11 plugin): VCR-style replay by default, recording asked
for with --vfio-record-mode, a divergence or an unmade access failing the test."""

from __future__ import annotations

import os

import pytest

from tests.paths import REPO
from vfio.model import open_model_device
from vfio.models.edu import EduModel
from vfio.record import cassette as C

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    """The inner pytest imports the plugin from this tree, however the package was installed."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))


def _cassette(path) -> None:
    with C.record_device(open_model_device(EduModel()), path) as dev:
        bar = dev.region(0)
        bar.write32(0x04, 0x12345678)
        assert bar.read32(0x04) == 0xEDCBA987


def test_a_cassette_replays_in_an_ordinary_run(pytester):
    _cassette(pytester.path / "live.vfiorec")
    pytester.makepyfile('''
        def test_liveness(vfio_cassette):
            dev = vfio_cassette("live.vfiorec")
            bar = dev.region(0)
            bar.write32(0x04, 0x12345678)
            assert bar.read32(0x04) == 0xEDCBA987

        def test_diverges(vfio_cassette):
            vfio_cassette("live.vfiorec").region(0).write32(0x04, 0x1)

        def test_leaves_one_out(vfio_cassette):
            vfio_cassette("live.vfiorec").region(0).write32(0x04, 0x12345678)

        def test_per_register(vfio_cassette):
            bar = vfio_cassette("live.vfiorec", match="per-register").region(0)
            bar.write32(0x04, 0x12345678)
            bar.read32(0x04)
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1, errors=1)     # test_leaves_one_out: passed, then an error
    out = result.stdout.str()
    assert "access #0 diverges from the recording: expected write32 BAR0+0x4 (LIVENESS) = 0x12345678" in out
    assert "ERROR at teardown of test_leaves_one_out" in out and "a missing access" in out


def test_a_missing_cassette_or_device_is_named(pytester):
    pytester.makepyfile('''
        def test_none(vfio_cassette):
            vfio_cassette("absent.vfiorec")
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "no cassette" in result.stdout.str() and "--vfio-record-mode once" in result.stdout.str()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vfio-record-mode", "once")
    result.assert_outcomes(failed=1)
    assert "needs the device: vfio_cassette(path, bdf=...)" in result.stdout.str()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vfio-record-mode", "sometimes")
    assert result.ret == 4 and "invalid choice" in result.stderr.str()
