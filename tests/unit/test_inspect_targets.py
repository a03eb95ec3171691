"""vfio-inspect's command-line targets: any existing path is read as a record file
(so a FIFO or a directory is named as what it is), and the SR-IOV capability's VF
Device ID reads in hex as lspci prints it."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from vfio.host import inspect

from .test_inspect_kernel_view import BDF, tree
from tests.paths import KERNEL_VIEW

KV = Path(KERNEL_VIEW)


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    import contextlib
    with contextlib.redirect_stderr(err):
        rc = inspect.main(argv, out=out)
    return rc, out.getvalue(), err.getvalue()


def test_a_fifo_is_refused_as_what_it_is_without_blocking(tmp_path):
    fifo = tmp_path / "dev.vfiorec"
    os.mkfifo(fifo)
    rc, out, err = run([str(fifo)])
    assert rc == inspect.EXIT_USAGE
    assert "FIFO" in err and str(fifo) in err and out == ""


def test_a_directory_is_refused_as_what_it_is(tmp_path):
    rc, _, err = run([str(tmp_path)])
    assert rc == inspect.EXIT_USAGE and "directory" in err


def test_a_missing_path_is_no_such_file(tmp_path):
    rc, _, err = run([str(tmp_path / "nope.vfiorec")])
    assert rc == inspect.EXIT_USAGE and "no such file" in err


def test_sriov_vf_device_id_is_hex_as_lspci_shows(tmp_path):
    root = tree(tmp_path, "nvme-sriov-pf")
    rc, out, _ = run(["--root", root, BDF["nvme-sriov-pf"]])
    assert rc == inspect.EXIT_OK, out
    lspci = re.search(r"Device ID: ([0-9a-f]{4})", (KV / "nvme-sriov-pf.lspci").read_text()).group(1)
    m = re.search(r"vf_device_id=(\S+)", out)
    assert m, out
    assert int(m.group(1), 16) == int(lspci, 16) and m.group(1).startswith("0x")
