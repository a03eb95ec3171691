"""vfio-inspect FILE and vfio-capture on record files the format allows but that
leave things out, and on arguments a new user gets wrong."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from vfio.host import inspect
from vfio.record import capture
from vfio.record import cli
from vfio.record import format as F

from tests.paths import REPO as ROOT
EDU = os.path.join(ROOT, "records", "edu.vfiorec")
NVME = os.path.join(ROOT, "records", "nvme.vfiorec")


def without(src: str, tmp_path, *, regions=(), irqs=(), name="cut.vfiorec") -> str:
    """The shipped capture with some REGION/INTERRUPT records left out (FORMAT.md allows it)."""
    rec = F.load(src)
    rec.records = [r for r in rec.records
                   if not (type(r) is F.Region and r.index in regions)
                   and not (type(r) is F.Interrupt and r.index in irqs)]
    p = str(tmp_path / name)
    F.save(rec, p)
    return p


def run(*argv):
    out = io.StringIO()
    rc = inspect.main(list(argv), out=out)
    return rc, out.getvalue()


def test_missing_bar_region_is_listed_as_absent_and_the_rest_shown(tmp_path, capsys):
    p = without(NVME, tmp_path, regions=(2,))
    rc, text = run(p)
    assert rc == inspect.EXIT_OK, capsys.readouterr().err
    assert "[1b36:0010]" in text                                   # config space decoded
    assert "region 0 BAR0: size 0x4000" in text and "region 7 CONFIG: size 0x1000" in text
    assert "region 2 BAR2: [Errno 22]" in text
    assert "not in the file: region 2 (BAR2), region 8 (VGA)" in text
    rc, text = run("--json", p)
    doc = json.loads(text)
    assert doc["absent"] == ["region 2 (BAR2)", "region 8 (VGA)"]
    assert doc["config"]["vendor_id"] == 0x1B36


def test_missing_config_region_is_partial_not_an_error(tmp_path, capsys):
    p = without(EDU, tmp_path, regions=(7,), irqs=(1,))
    rc, text = run(p)
    assert rc == inspect.EXIT_PARTIAL, capsys.readouterr().err
    assert "config space: cannot decode: no config space: the file has no region 7 (CONFIG)" in text
    assert "region 0 BAR0: size 0x100000" in text and "irq 0 INTx: count 1" in text
    assert "not in the file: region 7 (CONFIG), region 8 (VGA), irq 1 (MSI), irq 3 (ERR)" in text


def test_unreadable_config_region_is_partial(tmp_path):
    rec = F.load(EDU)
    cfg = rec.regions[7]
    cfg.flags &= ~(F.REGION_READ | F.REGION_WRITE)
    cfg.info.vfio_flags &= ~(F.REGION_READ | F.REGION_WRITE)
    p = str(tmp_path / "noread.vfiorec")
    F.save(rec, p)
    rc, text = run(p)
    assert rc == inspect.EXIT_PARTIAL
    assert "config space: cannot decode: config space not readable: region 7" in text
    assert "region 0 BAR0: size 0x100000" in text


def test_record_report_of_a_fifo_refuses_without_blocking(tmp_path):
    fifo = str(tmp_path / "x.vfiorec")
    os.mkfifo(fifo)
    code = ("import sys; from vfio.host.inspect import record_report\n"
            "try:\n    record_report(sys.argv[1])\nexcept ValueError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, fifo], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.stdout.strip() == f"{fifo}: is a FIFO, not a regular file: a record file must be one (nothing was read)"


# ---------------------------------------------------------------------------------------
# vfio-capture
# ---------------------------------------------------------------------------------------

def test_capture_show_of_a_fifo_refuses_without_blocking(tmp_path):
    fifo = str(tmp_path / "x.vfiorec")
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "vfio.record.cli", "--show", fifo], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"vfio-capture: {fifo}: is a FIFO, not a regular file: a record file must be one (nothing was read)\n"


@pytest.mark.parametrize("value", ["-1", "-4096", "lots"])
def test_capture_bar_bytes_must_be_a_byte_count(value, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(["0000:00:04.0", "-o", "x.vfiorec", "--bar-bytes", value])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "argument --bar-bytes:" in err and "outside" not in err


def test_capture_of_a_device_that_does_not_exist_says_so(tmp_path, monkeypatch, capsys):
    # whatever this host has in /dev/vfio or /dev/iommu, the device is looked up first
    monkeypatch.setattr(capture, "SYSFS_PCI", str(tmp_path))
    out = tmp_path / "x.vfiorec"
    for extra in ([], ["--sysfs"]):
        assert cli.main(["00:1f.7", "-o", str(out)] + extra) == 2
        err = capsys.readouterr().err
        assert err == f"vfio-capture: no such PCI device 0000:00:1f.7 (no {tmp_path}/0000:00:1f.7)\n"
        assert "iommu" not in err.lower() and not out.exists()


def test_capture_malformed_bdf_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(["zz:zz", "-o", "x.vfiorec"])
    assert ei.value.code == 2
    assert "'zz:zz' is not a PCI address" in capsys.readouterr().err
