"""The width-exactness test's place in CI: its marker, its leg, the harness's trace plumbing."""

from __future__ import annotations

import os
import subprocess

from tests.unit.test_tools_harness import ROOT, _legs_selecting, _load_run_kernel_tests


def test_only_the_memwidth_leg_runs_the_trace_test_with_the_trace_on():
    assert _legs_selecting({"kernel", "qemu_trace"}, "test_memwidth_trace") == ["memwidth"]
    leg = {x.name: x for x in _load_run_kernel_tests().LEGS}["memwidth"]
    assert {"edu", "virtio-rng"} <= set(leg.bind.split(",")) <= set(leg.devices.split(","))
    assert leg.harness_args == ("--qemu-trace", "memory_region_ops_*")
    assert "memwidth" not in _legs_selecting({"kernel"}, "test_fd_layer")


def test_harness_knows_virtio_rng_and_wants_an_rwdir_for_the_trace():
    harness = os.path.join(ROOT, "tools", "vfio-harness")
    r = subprocess.run([harness, "--devices", "edu,bogus", "--", "true"], capture_output=True, text=True)
    assert r.returncode == 2 and "virtio-rng" in r.stderr.split("known:")[1]
    r = subprocess.run([harness, "--devices", "virtio-rng", "--rwdir", "", "--qemu-trace", "memory_region_ops_*",
                        "--", "true"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--qemu-trace needs a --rwdir" in r.stderr
