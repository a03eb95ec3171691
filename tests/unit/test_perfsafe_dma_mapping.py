"""DmaSpace.map builds its DmaMapping without a call into the dataclass
``__init__`` (a Python call costs microseconds under an emulated CPU): the
object it returns is the one ``__init__`` would build, field for field, and a
field added to DmaMapping without a value in map() fails here."""

from __future__ import annotations

import dataclasses

from vfio.dma import DmaBuffer, DmaMapping, DmaSpace


class _Space(DmaSpace):
    min_page_size = 4096

    def iova_ranges(self):
        return [(0, (1 << 32) - 1)]

    def _map(self, vaddr, iova, size, readable, writable):
        pass

    def _unmap(self, iova, size):
        return size


def test_map_builds_the_mapping_init_would():
    space = _Space()
    buf = DmaBuffer(0x3000)
    try:
        m = space.map(buf)
        assert type(m) is DmaMapping
        assert vars(m) == vars(DmaMapping(space, buf, m.iova, m.size))
        assert set(vars(m)) == {f.name for f in dataclasses.fields(DmaMapping)}
        assert (m.space, m.buffer, m.size, m.owns_buffer) == (space, buf, 0x3000, False)
        assert m.mapped and space.unmap(m) == 0x3000 and not m.mapped
        owned = space.alloc(0x1000)
        assert owned.owns_buffer is True and set(vars(owned)) == set(vars(m))
        owned.unmap()
    finally:
        buf.close()
