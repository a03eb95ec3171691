"""pytest plugin: captured devices as fixtures.

Registered through the ``pytest11`` entry point ``vfio``, so any test suite
with this package installed can write::

    def test_my_driver(vfio_replay_device):
        dev = vfio_replay_device("records/edu.vfiorec")   # a vfio.device.Device
        assert dev.region(0).read32(0) == 0x010000ed
        dev.backend.fire(0)                                # play the device raising INTx

Relative paths are taken from pytest's rootdir.  Every device handed out is
closed when the test ends.  ``vfio_record`` loads a file as a
:class:`~vfio.record.format.DeviceRecord` for tests that inspect or edit one.

``vfio_cassette`` is VCR-style: a test drives a device that is a cassette's
replay in an ordinary run and the real device when recording is asked for::

    import os

    def test_edu_liveness(vfio_cassette):
        # replays the shipped cassette; pytest --vfio-record-mode all, with EDU_BDF
        # naming an edu on vfio-pci, records it again from the real device
        dev = vfio_cassette("records/edu-liveness.vfiorec", bdf=os.environ.get("EDU_BDF"))
        bar = dev.region(0).map()
        bar.write32(0x04, 0x12345678)
        assert bar.read32(0x04) == 0xEDCBA987       # edu's liveness register: the complement

``--vfio-record-mode`` says when the real device is recorded: ``none`` (the
default: replay only; a missing cassette fails the test), ``once`` (record
the cassettes that do not exist yet, replay the others), ``all`` (record them
all again).  On replay the test fails at the first divergence
(:class:`~vfio.record.cassette.CassetteMismatch`) and, when it ends, if it
left recorded accesses unmade; ``match="per-register"`` relaxes the order.
"""

from __future__ import annotations

import os

import pytest


def _resolve(request, path) -> str:
    path = os.fspath(path)
    if os.path.isabs(path):
        return path
    return os.path.join(str(request.config.rootpath), path)


@pytest.fixture
def vfio_replay_device(request):
    """Factory: ``vfio_replay_device(path_or_record, name=None)`` -> Device over a ReplayBackend."""
    from .format import DeviceRecord
    from .replay import open_replay
    opened = []

    def factory(source, name: str | None = None):
        if not isinstance(source, DeviceRecord):
            source = _resolve(request, source)
        dev = open_replay(source, name=name)
        opened.append(dev)
        return dev

    yield factory
    while opened:
        opened.pop().close()


_RECORD_MODES = ("none", "once", "all")
_BODY_FAILED = pytest.StashKey[bool]()


def pytest_addoption(parser):
    parser.getgroup("vfio").addoption(
        "--vfio-record-mode", choices=_RECORD_MODES, default="none",
        help="vfio_cassette: record the real device never (none, the default: replay), for cassettes not yet "
             "recorded (once), or always (all)")


@pytest.fixture
def vfio_cassette(request):
    """Factory: ``vfio_cassette(path, bdf=None, match="strict")`` -> a Device: the cassette
    replayed, or (``--vfio-record-mode``) the device at ``bdf`` recorded into it."""
    from .cassette import Match, open_cassette, recording
    mode = request.config.getoption("--vfio-record-mode", default="none")
    opened = []

    def factory(path, bdf: str | None = None, match: str = "strict"):
        path = _resolve(request, path)
        if mode == "all" or (mode == "once" and not os.path.exists(path)):
            if bdf is None:
                pytest.fail(f"recording {path} (--vfio-record-mode {mode}) needs the device: "
                            f"vfio_cassette(path, bdf=...)")
            import vfio
            with recording(path):
                dev = vfio.open_pci_device(bdf)
            opened.append((dev, None))
            return dev
        if not os.path.exists(path):
            pytest.fail(f"no cassette {path}: record it with --vfio-record-mode once (and the device's bdf)")
        dev = open_cassette(path, mode=Match(match))
        opened.append((dev, dev.backend))
        return dev

    yield factory
    failed = request.node.stash.get(_BODY_FAILED, False)
    while opened:
        dev, backend = opened.pop()
        dev.close()
        if backend is not None and not failed:
            backend.finish()        # accesses the test never made fail it


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember a failed test body, so vfio_cassette does not pile a "missing access" on it."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        item.stash[_BODY_FAILED] = True


@pytest.fixture
def vfio_record(request):
    """Factory: ``vfio_record(path)`` -> the parsed DeviceRecord."""
    from .format import load
    return lambda path: load(_resolve(request, path))
