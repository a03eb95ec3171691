"""The pytest11 plugin as a user's suite sees it: installed with the package, no conftest needed."""

from __future__ import annotations

import os
from tests.paths import RECORDS

pytest_plugins = ["pytester"]

EDU = os.path.join(RECORDS, "edu.vfiorec")


def test_user_suite_gets_a_replayed_device(pytester):
    pytester.makepyfile(f'''
        def test_edu(vfio_replay_device, vfio_record):
            dev = vfio_replay_device({EDU!r})
            assert dev.region(0).read32(0) == 0x010000ED
            vec = dev.enable_irq(1)
            assert dev.backend.fire(1, 0) and vec[0].wait(1) == 1
            assert vfio_record({EDU!r}).pci_info is not None
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
