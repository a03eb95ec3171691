"""Capture: a device to a record file.

Two sources:

* :func:`capture_device` -- a device opened through VFIO (any
  :class:`vfio.device.Device`, so also a replayed one): ``GET_INFO`` with its
  capability chain, ``GET_REGION_INFO`` for every index below ``num_regions``
  (with the raw chain: sparse mmap areas, MSI-X mappable, region type),
  ``GET_IRQ_INFO`` for every IRQ index, config space and the ROM read through
  the config/ROM regions, and optionally the first bytes of each BAR.  Indexes
  the kernel refuses with EINVAL get no record, which is how replay knows to
  refuse them too.  This is what the kernel tells a VFIO user, byte for byte.
  A device-tree device (vfio-platform, vfio-amba) also gets, under each region
  and interrupt, the DTPATH of its node and the DTINDEX of the ``reg`` or
  ``interrupts`` entry it comes from (:mod:`vfio.platform`), and each region the
  physical address of that ``reg`` entry (PHYS).
* :func:`capture_sysfs` -- a PCI device *not* bound to vfio-pci, from
  ``/sys/bus/pci/devices/BDF`` alone: config space (all of it as root, the
  first 64 bytes otherwise), the BAR and ROM resources with their physical
  addresses, and IRQ counts from the MSI/MSI-X/PCIe capabilities.  Region and
  IRQ info are *synthesized* the way vfio-pci 6.12 would report them (offsets
  ``index << 40``, memory BARs mmap-able, the MSI-X BAR with the
  MSI-X-mappable capability, INTx maskable + automasked, ERR only for PCIe).
  Missing, and said so in a NOTE record: the virtualized config-space view
  vfio-pci gives (sysfs shows the raw one), ROM contents, BAR contents,
  device-specific regions (IGD, ...), device-info capabilities, and whether
  the kernel's reset works (RESET is assumed from the ``reset`` attribute).

Both read sysfs through :class:`vfio.sysfs.SysfsTree`, so ``sysfs=`` may name
a tree captured from another machine by ``tools/capture-sysfs``
(``vfio-capture --sysfs --root TREE``) as well as the live system.

Reading BARs can have side effects (clear-on-read registers), so BAR contents
are captured only when asked (``bar_bytes``).
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import platform
import struct

from .. import uapi
from ..errors import VfioError
from . import format as F
from ..address import PciAddress
from ..pci.config import ConfigSpace, KernelResource, parse_resources
from ..pci.regs import CAP_ID_EXP, BarKind
from ..sysfs import PCI_DEVICES, SysfsTree

SYSFS_PCI = "/" + PCI_DEVICES
_REGION_INFO_SIZE = ctypes.sizeof(uapi.vfio_region_info)      # 32: the chain starts after it


def _pci_info(name: str) -> F.PciInfo | None:
    a = PciAddress.find_in(name)
    if a is None:
        return None
    return F.PciInfo(a.domain, a.bus, a.device, a.function)


_BAR_KIND = {BarKind.IO: F.BAR_PIO, BarKind.MEM32: F.BAR_MMIO32, BarKind.MEM64: F.BAR_MMIO64}


def _bar_info(cs: ConfigSpace | None, index: int) -> F.PciBarInfo | None:
    """BAR type of region ``index`` as the (captured) config space decodes it."""
    if index == uapi.VFIO_PCI_ROM_REGION_INDEX:
        return F.PciBarInfo(F.BAR_ROM, index)
    bar = cs.bar(index) if cs is not None else None
    if bar is None:
        return None
    return F.PciBarInfo(_BAR_KIND[bar.kind], index, F.BAR_PREFETCHABLE if bar.prefetchable else 0)


def _resources(tree: SysfsTree, bdf: str) -> list[KernelResource]:
    """The sysfs ``resource`` file (BARs 0-5, ROM 6, ...); raises
    :class:`~vfio.errors.VfioError` naming the path when it cannot be read,
    :class:`~vfio.errors.InvalidValue` naming the path and line when it is malformed."""
    rel = f"{tree.pci_device(bdf)}/resource"
    return parse_resources(tree.read(rel), tree.shown(rel))


def _note(source: str, extra: str = "") -> F.Note:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return F.Note(f"captured by vfio-capture {source} on Linux {platform.release()} at {now}{extra}")


def _read_registers(region, length: int) -> bytes:
    """BAR contents one 32-bit access at a time: a bulk pread becomes 8-byte
    accesses in the kernel, which registers such as edu's (below 0x80) answer
    with all ones; 4 bytes is the width every device register accepts."""
    n = length & ~3
    out = b"".join(struct.pack("<I", region.read32(off)) for off in range(0, n, 4))
    return out + (region.read(n, length - n) if length > n else b"")


def capture_device(dev, *, bar_bytes: int = 0, sysfs: SysfsTree | str = SYSFS_PCI,
                   note: str = "") -> F.DeviceRecord:
    """Record what ``dev`` (a :class:`vfio.device.Device`) reports through VFIO.
    ``sysfs`` (a :class:`~vfio.sysfs.SysfsTree`, or the path of a PCI devices
    directory) gives the BARs' physical addresses from the device's ``resource``
    file, when it has one."""
    tree = SysfsTree.of(sysfs)
    info = dev.info
    recs: list = []
    pci = _pci_info(dev.name) if info.is_pci else None
    if pci is not None:
        recs.append(pci)
    # the chain as the kernel wrote it: each cap's bytes run to the next (or the buffer end)
    recs.append(F.DeviceInfo(info.flags, info.num_regions, info.num_irqs, b"".join(c.data for c in info.caps)))
    resources = []
    if pci is not None and tree.exists(f"{tree.pci_device(pci.bdf)}/resource"):
        resources = _resources(tree, pci.bdf)
    cfg = b""
    if info.is_pci:
        try:
            creg = dev.region(uapi.VFIO_PCI_CONFIG_REGION_INDEX)
            cfg = creg.read(0, creg.size) if creg.info.readable and creg.size else b""
        except VfioError as e:
            if e.errno != errno.EINVAL:
                raise
    cs = ConfigSpace(cfg, allow_short=True, source=f"config space of {dev.name}") if len(cfg) >= 0x40 else None
    dt, dt_phys = _dt_of(dev, tree)
    for index in range(info.num_regions):
        try:
            ri = dev.region_info(index)
        except VfioError as e:
            if e.errno == errno.EINVAL:     # the kernel has no such region: no record, replay refuses too
                continue
            raise
        flags = ri.flags & (F.REGION_READ | F.REGION_WRITE | F.REGION_MMAP)
        kids = []
        addr = 0
        is_cfg = info.is_pci and index == uapi.VFIO_PCI_CONFIG_REGION_INDEX
        if info.is_pci and index <= uapi.VFIO_PCI_ROM_REGION_INDEX and ri.size:
            bar = _bar_info(cs, index)
            if bar is not None:
                kids.append(bar)
            if index < len(resources) and resources[index].start:
                addr = resources[index].start
                flags |= F.REGION_PHYS
        if info.is_pci and index == uapi.VFIO_PCI_ROM_REGION_INDEX:
            flags |= F.REGION_ROM
        if is_cfg:
            kids.append(F.PciConfigSpace())
        origin = dev.region_origin(index) if dt is None else dt.region(index)
        if origin is not None:
            kids += [F.DtPath(origin.path), F.DtIndex(int(origin.prop), origin.index)]
            if index < len(dt_phys) and dt_phys[index] is not None and ri.size:
                addr = dt_phys[index]
                flags |= F.REGION_PHYS
        kids.append(F.RegionInfo(ri.flags, bytes(ri.raw[_REGION_INFO_SIZE:])))
        data = b""
        if is_cfg:
            data = cfg
        elif ri.readable and ri.size:
            if flags & F.REGION_ROM:
                data = dev.region(index).read(0, ri.size)
            elif bar_bytes:
                data = _read_registers(dev.region(index), min(bar_bytes, ri.size))
        if data:
            kids.append(F.RegionData(0, data))
        recs.append(F.Region(index, flags, ri.offset, ri.size, addr, kids))
    for index in range(info.num_irqs):
        try:
            ii = dev.irq_info(index)
        except VfioError as e:
            if e.errno == errno.EINVAL:
                continue
            raise
        origin = dev.irq_origin(index) if dt is None else dt.irq(index)
        kids = [F.DtPath(origin.path), F.DtIndex(int(origin.prop), origin.index)] if origin is not None else []
        recs.append(F.Interrupt(index, ii.flags, ii.count, kids))
    extra = f"; BAR contents: first {bar_bytes} bytes" if bar_bytes else "; BAR contents: not captured"
    recs.append(_note(f"through VFIO from {dev.name}", extra + (f"; {note}" if note else "")))
    return F.DeviceRecord(recs)


def _dt_of(dev, tree: SysfsTree):
    """A platform device's device-tree origins and region addresses: its own
    (:attr:`vfio.device.Device.dt`, from the opener or a replayed capture), else
    looked up in sysfs by its name when the kernel says it is a platform or AMBA
    device.  Returns (origins or None to use the device's own, physical addresses)."""
    info = dev.info
    if not info.flags & (uapi.VFIO_DEVICE_FLAGS_PLATFORM | uapi.VFIO_DEVICE_FLAGS_AMBA):
        return None, []
    from .. import platform as P
    try:
        node = P.find_platform_device(dev.name, tree)
    except (VfioError, ValueError):
        return None, []         # not on this system (a replayed capture): the device's own origins
    dt = dev.dt if dev.dt is not None else P.dt_origins(node, info.num_regions, info.num_irqs)
    try:
        phys = P.region_phys(node, tree)
    except (VfioError, ValueError):
        phys = []               # a reg property this reader cannot decode: no PHYS flag
    return dt, phys


_MSIX_MAPPABLE_CAP = struct.pack("<HHI", uapi.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 0)


def capture_sysfs(bdf: str, *, sysfs: SysfsTree | str = SYSFS_PCI) -> F.DeviceRecord:
    """Record what sysfs shows of a PCI device (see the module docstring for what is missing).

    ``sysfs``: a :class:`~vfio.sysfs.SysfsTree` -- the live system, or a tree
    captured by ``tools/capture-sysfs`` -- or the path of a PCI devices directory.
    Raises :class:`~vfio.errors.VfioError` (ENODEV: no such device; the errno of
    a failed read, naming the file), ``ValueError`` naming the file for a
    malformed address, config space or ``resource`` file."""
    bdf = str(PciAddress.parse(bdf))
    tree = SysfsTree.of(sysfs)
    ddir = tree.pci_device(bdf)
    if not tree.is_dir(ddir):
        raise VfioError(errno.ENODEV, f"capture of {bdf} from sysfs: no {tree.shown(ddir)}")
    crel = f"{ddir}/config"
    cpath = tree.shown(crel)
    cfg = tree.read_bytes(crel)
    cfg_size = tree.size(crel)          # 256 or 4096 whatever we may read
    cfg = cfg[:cfg_size]
    if len(cfg) < 0x40:
        raise ValueError(f"{cpath}: only {len(cfg)} bytes readable, less than the 64-byte header")
    resources = _resources(tree, bdf)
    cs = ConfigSpace(cfg, allow_short=True, source=cpath)
    msi_cap, msix_cap, pcie_cap = cs.msi, cs.msix, cs.find(CAP_ID_EXP)   # raises, naming cpath, if corrupt
    msix_bar = msix_cap.table_bir if msix_cap is not None else None
    has_reset = tree.exists(f"{ddir}/reset")
    is_vga = cfg[0x0B] == 0x03 and cfg[0x0A] == 0x00
    vflags = uapi.VFIO_DEVICE_FLAGS_PCI | (uapi.VFIO_DEVICE_FLAGS_RESET if has_reset else 0)
    recs: list = [_pci_info(bdf), F.DeviceInfo(vflags, uapi.VFIO_PCI_NUM_REGIONS, uapi.VFIO_PCI_NUM_IRQS)]
    rw = F.REGION_READ | F.REGION_WRITE
    for index in range(uapi.VFIO_PCI_ROM_REGION_INDEX + 1):
        r = resources[index] if index < len(resources) else KernelResource(index, 0, 0, 0)
        start, end, rflags = r.start, r.end, r.flags
        size = end - start + 1 if end else 0
        offset = index << uapi.VFIO_PCI_OFFSET_SHIFT
        if not size:
            recs.append(F.Region(index, 0, offset, 0, 0, [F.RegionInfo(0)]))
            continue
        kids = [_bar_info(cs, index)]
        caps_b = b""
        if index == uapi.VFIO_PCI_ROM_REGION_INDEX:
            flags = F.REGION_READ | F.REGION_ROM
        elif rflags & 0x200:                             # IORESOURCE_MEM: vfio-pci mmaps memory BARs
            flags = rw | F.REGION_MMAP
            if index == msix_bar:
                caps_b = _MSIX_MAPPABLE_CAP
        else:
            flags = rw
        vfl = (flags & 7) | (uapi.VFIO_REGION_INFO_FLAG_CAPS if caps_b else 0)
        kids.append(F.RegionInfo(vfl, caps_b))
        recs.append(F.Region(index, flags | F.REGION_PHYS, offset, size, start, [k for k in kids if k]))
    recs.append(F.Region(uapi.VFIO_PCI_CONFIG_REGION_INDEX, rw, 7 << uapi.VFIO_PCI_OFFSET_SHIFT, cfg_size, 0,
                         [F.PciConfigSpace(), F.RegionInfo(rw), F.RegionData(0, cfg)]))
    if is_vga:
        recs.append(F.Region(uapi.VFIO_PCI_VGA_REGION_INDEX, rw, 8 << uapi.VFIO_PCI_OFFSET_SHIFT, 0xC0000, 0,
                             [F.RegionInfo(rw)]))
    ev = uapi.VFIO_IRQ_INFO_EVENTFD
    noresize = ev | uapi.VFIO_IRQ_INFO_NORESIZE
    recs.append(F.Interrupt(uapi.VFIO_PCI_INTX_IRQ_INDEX,
                            ev | uapi.VFIO_IRQ_INFO_MASKABLE | uapi.VFIO_IRQ_INFO_AUTOMASKED, 1 if cfg[0x3D] else 0))
    msi = msi_cap.vectors_capable if msi_cap is not None else 0
    recs.append(F.Interrupt(uapi.VFIO_PCI_MSI_IRQ_INDEX, noresize, msi))
    msix = msix_cap.table_size if msix_cap is not None else 0
    # MSI-X is NORESIZE unless the platform supports dynamic allocation, which sysfs does not show
    recs.append(F.Interrupt(uapi.VFIO_PCI_MSIX_IRQ_INDEX, noresize, msix))
    if pcie_cap is not None:
        recs.append(F.Interrupt(uapi.VFIO_PCI_ERR_IRQ_INDEX, noresize, 1))
    recs.append(F.Interrupt(uapi.VFIO_PCI_REQ_IRQ_INDEX, noresize, 1))
    missing = ("; from sysfs, not through VFIO: region and IRQ info synthesized as vfio-pci would report "
               f"them; config space is the raw view ({len(cfg)} of {cfg_size} bytes readable), not vfio-pci's "
               "virtualized one; missing: ROM and BAR contents, device-specific regions, device-info "
               "capabilities, dynamic MSI-X; RESET assumed from the sysfs reset attribute")
    recs.append(_note(f"from sysfs ({bdf})", missing))
    return F.DeviceRecord(recs)
