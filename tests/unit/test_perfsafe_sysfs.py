"""SysfsTree.real's kernel-resolved fast path answers what
``os.path.relpath(os.path.realpath(path), root)`` answers, on the live tree
and on the captured ones, for links, plain paths, missing paths, loops and
links that leave the tree."""

from __future__ import annotations

import os

import pytest

from vfio.sysfs import SysfsTree
from tests.paths import SYSFS_TREES

ROOTS = ["/"] + [os.path.join(SYSFS_TREES, d) for d in sorted(os.listdir(SYSFS_TREES))
                 if os.path.isdir(os.path.join(SYSFS_TREES, d))]


def slow(tree: SysfsTree, rel: str) -> str:
    return os.path.relpath(os.path.realpath(tree.path(rel)), tree.root)


@pytest.mark.parametrize("root", ROOTS)
def test_real_equals_realpath_relpath(root):
    tree = SysfsTree(root)
    rels = ["", ".", "sys", "nonexistent/x", "sys/../sys/bus"]
    for d in ("sys/class/net", "sys/class/block", "sys/bus/pci/devices", "sys/kernel/iommu_groups"):
        rels += [f"{d}/{n}" for n in tree.listdir(d)[:40]]
    rels += [f"{r}/driver" for r in rels if r.startswith("sys/bus/pci/devices/")]
    assert len(rels) > 5
    for rel in rels:
        assert tree.real(rel) == slow(tree, rel), rel


def test_relative_root_trailing_slash_loops_and_links_out(tmp_path, monkeypatch):
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "a" / "f").write_text("")
    (tmp_path / "t" / "up").symlink_to("a/../a/f")
    (tmp_path / "t" / "out").symlink_to(tmp_path)                  # leaves the tree
    (tmp_path / "t" / "loop").symlink_to("loop")
    (tmp_path / "t" / "dangling").symlink_to("nowhere/x")
    monkeypatch.chdir(tmp_path)
    for root in ("t", "t/", str(tmp_path / "t"), str(tmp_path / "t") + "/"):
        tree = SysfsTree(root)
        for rel in ("up", "out", "loop", "dangling", "a", "a/f", "missing", ""):
            assert tree.real(rel) == slow(tree, rel), (root, rel)
