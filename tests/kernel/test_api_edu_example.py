"""examples/edu_driver.py bounds its DMA by what QEMU's edu allows, in the guest.

QEMU (7.2 here) stops the whole VM on an edu DMA whose range does not end
inside the device's 4 KiB buffer at 0x40000 ("EDU: DMA range 0x40000-0x40fff
out of bounds" for 4096 bytes), so the largest transfer from the buffer's start
is 4095 bytes.  The guest surviving the largest one and the example refusing
one more (before any device access) is what this checks.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from vfio.pci.passthrough import PassthroughDevice

pytestmark = pytest.mark.kernel

from tests.paths import EXAMPLES

SCRIPT = os.path.join(EXAMPLES, "edu_driver.py")


def _load_example():
    spec = importlib.util.spec_from_file_location("edu_driver_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_largest_dma_works_and_one_more_is_refused_first(edu_bdf):
    ex = _load_example()
    assert ex.EDU_DMA_MAX == 4095

    class CountingEdu(ex.Edu):
        dma_calls = 0

        def _dma(self, *a):
            CountingEdu.dma_calls += 1
            super()._dma(*a)

    with PassthroughDevice.open(edu_bdf) as pt:
        edu = CountingEdu(pt)
        data = bytes((i * 31 + 7) & 0xFF for i in range(ex.EDU_DMA_MAX))
        assert edu.dma_round_trip(data) == data              # the VM is still here
        assert CountingEdu.dma_calls == 2
        for n in (ex.EDU_DMA_MAX + 1, 8192, 0):
            with pytest.raises(ex.EduError) as ei:
                edu.dma_round_trip(bytes(n))
            assert f"{n} bytes" in str(ei.value) and "4095" in str(ei.value)
        assert CountingEdu.dma_calls == 2                     # refused before touching the device
        assert not pt._guest_ram                              # and before mapping guest memory
        assert edu.dma_round_trip(data[:100]) == data[:100]


def test_script_refuses_an_oversized_dma_with_a_message(edu_bdf):
    p = subprocess.run([sys.executable, SCRIPT, edu_bdf, "--dma-bytes", "4096"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith(f"edu_driver: {edu_bdf}: a DMA of 4096 bytes") and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, SCRIPT, edu_bdf, "--dma-bytes", "4095"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "dma: ok (4095 bytes)" in p.stdout
