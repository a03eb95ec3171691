"""How the console scripts end (vfio._cli): a closed pipe, Ctrl-C, warnings; and
vfio-inspect's "absent" VGA region / ERR IRQ.

Each CLI runs in a subprocess exactly as its console script runs it
(``sys.exit(main())``), with stdout on a pipe whose reading end is closed
before the process starts: the first write (or the final flush) meets EPIPE
every time, so the result does not depend on timing.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vfio.host import inspect
from tests.paths import GUEST_TREE, REPO

ROOT = Path(REPO)
GUEST = GUEST_TREE
EDU_REC = str(ROOT / "records" / "edu.vfiorec")

# (console script module, arguments that print something without needing a device)
CLIS = {
    "vfio-inspect": ("vfio.host.inspect", ["--root", GUEST]),
    "vfio-assign": ("vfio.host.assign_cli", ["--help"]),
    "vfio-capture": ("vfio.record.cli", ["--show", EDU_REC]),
}


def run_script(module: str, args: list[str], prelude: str = "", **kw) -> subprocess.CompletedProcess:
    code = f"import sys\n{prelude}\nfrom {module} import main\nsys.argv[1:] = {args!r}\nsys.exit(main())\n"
    return subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), stderr=subprocess.PIPE,
                          timeout=120, **kw)


def run_into_closed_pipe(module: str, args: list[str]) -> subprocess.CompletedProcess:
    r, w = os.pipe()
    os.close(r)
    try:
        return run_script(module, args, stdout=w)
    finally:
        os.close(w)


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_closed_pipe_ends_quietly_killed_by_sigpipe(prog):
    module, args = CLIS[prog]
    for _ in range(3):
        p = run_into_closed_pipe(module, args)
        # what lspci/coreutils do: killed by SIGPIPE (the shell shows 141), nothing on stderr.
        # Before: a BrokenPipeError traceback (or "[Errno 32] Broken pipe") and status 1.
        assert p.returncode == -signal.SIGPIPE, (p.returncode, p.stderr.decode())
        assert p.stderr == b""


def test_the_shell_sees_141_as_for_lspci():
    module, args = CLIS["vfio-inspect"]
    code = f"import sys; from {module} import main; sys.argv[1:] = {args!r}; sys.exit(main())"
    script = f'set -o pipefail; "$0" -c "$1" | head -c 0; echo "status=${{PIPESTATUS[0]}}"'
    out = subprocess.run(["bash", "-c", script, sys.executable, code], capture_output=True, text=True,
                         timeout=120, cwd=str(ROOT))
    assert "status=141" in out.stdout and "Traceback" not in out.stderr and "Broken pipe" not in out.stderr


def test_output_to_an_open_pipe_is_complete_and_exit_0():
    module, args = CLIS["vfio-inspect"]
    p = run_script(module, args, stdout=subprocess.PIPE)
    assert p.returncode == 0 and b"IOMMU group 3" in p.stdout and p.stderr == b""


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_ctrl_c_is_exit_130_without_a_traceback(prog):
    module, args = CLIS[prog]
    prelude = ("import argparse\n"
               "def boom(*a, **k): raise KeyboardInterrupt\n"
               "argparse.ArgumentParser.parse_args = boom\n")
    p = run_script(module, args, prelude, stdout=subprocess.PIPE)
    assert p.returncode == 130 and p.stderr == b""


def test_a_warning_is_one_tool_line():
    prelude = ("import warnings, vfio\n"
               "from vfio.host import inspect as I\n"
               "real = I.host_report\n"
               "def noisy(*a, **k):\n"
               "    warnings.warn('no-IOMMU mode: the device can DMA anywhere in\\n memory', vfio.NoIommuWarning)\n"
               "    return real(*a, **k)\n"
               "I.host_report = noisy\n")
    p = run_script("vfio.host.inspect", ["--root", GUEST], prelude, stdout=subprocess.PIPE)
    assert p.returncode == 0
    # before: "<file>:<line>: NoIommuWarning: ..." and the source line
    assert p.stderr.decode() == "vfio-inspect: warning: no-IOMMU mode: the device can DMA anywhere in memory\n"


def test_called_with_arguments_main_is_a_plain_function(recwarn):
    """Tests and other Python callers keep their own warning handling: nothing is reformatted."""
    import warnings

    from vfio._cli import entry_point

    @entry_point("x")
    def main(argv=None):
        warnings.warn("plain", UserWarning)
        return 7

    assert main([]) == 7
    assert [str(w.message) for w in recwarn] == ["plain"]


# ---- absent VGA region and ERR IRQ ------------------------------------------------------------

def test_vga_region_and_err_irq_of_an_ordinary_device_show_as_absent():
    # the replay backend answers EINVAL for both, as vfio-pci does for a conventional non-VGA device
    out = io.StringIO()
    assert inspect.main(["--json", EDU_REC], out=out) == 0
    v = json.loads(out.getvalue())["vfio"]
    vga, err = v["regions"][8], v["irqs"][3]
    assert vga == {"index": 8, "name": "VGA", "absent": "not a VGA device"}
    assert err == {"index": 3, "name": "ERR", "absent": "no PCI Express capability, so no AER to report"}
    out = io.StringIO()
    inspect.main([EDU_REC], out=out)
    text = out.getvalue()
    assert "region 8 VGA: absent (not a VGA device)" in text
    assert "irq 3 ERR: absent" in text
    assert "Errno 22" not in text and "EINVAL]" not in text.replace("replay answers EINVAL", "")


def test_other_errors_stay_errors():
    import errno

    from vfio.errors import VfioError

    class Dev:
        class info:
            num_regions, num_irqs, flags, is_pci = 9, 5, 2, True

        interface = "fake"

        def region_info(self, i):
            raise VfioError(errno.EINVAL if i != 8 else errno.EIO, f"region {i}")

        def irq_info(self, i):
            raise VfioError(errno.EPERM if i == 3 else errno.EINVAL, f"irq {i}")

    v = inspect.vfio_report(Dev())
    assert "error" in v["regions"][8] and "absent" not in v["regions"][8]       # EIO on VGA: a failure
    assert "error" in v["irqs"][3] and "absent" not in v["irqs"][3]             # EPERM on ERR: a failure
    assert "error" in v["regions"][0] and "error" in v["irqs"][0]               # EINVAL elsewhere: not ours to excuse
