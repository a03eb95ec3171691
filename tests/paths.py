"""Where the repository's parts are, for tests: one place instead of a
``os.path.dirname(__file__)`` chain in each test file."""

from __future__ import annotations

import os

#: The repository's top directory (this file is tests/paths.py).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Captured sysfs trees, kernel views, recorded answers (fixtures/README.md and below).
FIXTURES = os.path.join(REPO, "fixtures")
#: The developer tools (tools/vfio-harness, tools/capture-sysfs, ...).
TOOLS = os.path.join(REPO, "tools")
#: The example drivers.
EXAMPLES = os.path.join(REPO, "examples")
#: The shipped record files.
RECORDS = os.path.join(REPO, "records")
#: The test directory itself.
TESTS = os.path.join(REPO, "tests")
#: The captured sysfs trees (fixtures/sysfs/README.md).
SYSFS_TREES = os.path.join(FIXTURES, "sysfs")
#: The q35 test guest's captured tree: edu on vfio-pci, nvme, e1000e behind a root port, ICH9.
GUEST_TREE = os.path.join(SYSFS_TREES, "q35-guest")
#: Config-space dumps, and what lspci and the kernel said of them.
CONFIG_FIXTURES = os.path.join(FIXTURES, "config")
#: The kernel's view of devices (config, resource, lspci -vvv) captured in the guest.
KERNEL_VIEW = os.path.join(CONFIG_FIXTURES, "kernel-view")
