"""vfio-inspect: what this host offers for VFIO, and what a device exposes.

    vfio-inspect                      # interfaces, IOMMU groups, devices, viability
    vfio-inspect 0000:00:04.0         # + config space decoded; + VFIO regions/IRQs if on vfio-pci
    vfio-inspect 1b36:0010            # every device with these IDs
    vfio-inspect nvme.vfiorec         # a record file: the device as it was captured
    vfio-inspect UUID                 # a mediated device (mdev): type, parent, group, VFIO regions/IRQs
    vfio-inspect --json [...]         # the same as JSON (docs/vfio-inspect-json.md)
    vfio-inspect --watch [--json]     # stream PCI add/remove/bind/unbind events
    vfio-inspect --root DIR           # a captured tree (tools/capture-sysfs) instead of /

Exit status: 0 everything shown; 1 an error stopped the output (I/O error,
the kernel refused); 2 bad arguments (unknown device, malformed BDF, not a
record file); 3 shown, but some part could not be read -- the reason is
printed in its place (e.g. the device is on vfio-pci but its group could not
be opened, or its config space is cut short: INCOMPLETE lines say what is
missing); 130 interrupted (--watch ends this way); killed by SIGPIPE (141
in the shell) when the reader of the output goes away, as lspci is.

The listing answers, for every device: which IOMMU group, which driver, can
the group go to userspace now (viability, see :mod:`vfio.host.viability`) and
why not, and whether it is busy (:mod:`vfio.host.inuse`).  Config space is
decoded by :mod:`vfio.pci.config` (this module only lays it out); VFIO
regions and IRQs come from :func:`vfio.open_pci_device` or, for a record file,
from :func:`vfio.record.replay.open_replay` -- the same :class:`vfio.device.Device`
either way.
"""

from __future__ import annotations

import errno
import os
import sys

from . import ASSIGN_PLATFORM_STATE_FILE, ASSIGN_STATE_FILE
from .._cli import entry_point

from .inuse import interfaces_of, usage_of
from .sysfs import PCI_DEVICES, Host, HostError, PciDevice
from ..sysfs import MDEV_BUS_CLASS, MDEV_DEVICES
from .viability import VFIO_PCI_DRIVERS, Viability, group_viability

SCHEMA = "vfio-inspect/1"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

REGION_NAMES = {0: "BAR0", 1: "BAR1", 2: "BAR2", 3: "BAR3", 4: "BAR4", 5: "BAR5",
                6: "ROM", 7: "CONFIG", 8: "VGA"}
CAPTURED_TREE = "captured tree: the device cannot be opened"
IRQ_NAMES = {0: "INTx", 1: "MSI", 2: "MSI-X", 3: "ERR", 4: "REQ"}


# ---------------------------------------------------------------------------------------
# Names from the PCI ID database (vfio.pci.ids); numbers always stay visible
# ---------------------------------------------------------------------------------------

class Names:
    """Vendor, device and class names, or None where the database has none.

    ``available`` is False (and ``why`` says why) when :mod:`vfio.pci.ids`
    cannot be used; the output then shows numbers only and says so."""

    def __init__(self):
        self.why = ""
        try:
            from ..pci.ids import PciIds, PciIdsError
        except ImportError:
            self.db = None
            self.why = "PCI ID names unavailable: no vfio.pci.ids module"
            return
        try:
            self.db = PciIds.default()
        except (OSError, PciIdsError) as e:
            self.db = None
            self.why = f"PCI ID names unavailable: {e}"
            return
        if not self.db:             # PciIds.__bool__: is there a vendor line (without counting them)
            self.db = None
            self.why = "PCI ID names unavailable: no pci.ids installed (apt-get install pci.ids)"

    @property
    def available(self) -> bool:
        return self.db is not None

    def _call(self, fn, *a):
        if self.db is None or not hasattr(self.db, fn):
            return None
        return getattr(self.db, fn)(*a)

    def vendor(self, v: int) -> str | None:
        return self._call("vendor_name", v)

    def device(self, v: int, d: int) -> str | None:
        return self._call("device_name", v, d)

    def subsystem(self, v: int, d: int, sv: int, sd: int) -> str | None:
        return self._call("subsystem_name", v, d, sv, sd)

    def klass(self, code: int) -> str | None:
        return self._call("class_name", code)


# ---------------------------------------------------------------------------------------
# Building the report (plain dicts: the JSON document, and what the text is made from)
# ---------------------------------------------------------------------------------------

def _flag_names(value: int, table: dict) -> list[str]:
    return [name for bit, name in table.items() if value & bit]


def interfaces_report(host: Host) -> dict:
    info = host.interfaces()
    return {
        "container": info["container"],
        "cdev": info["cdev"],
        "noiommu_groups": info["noiommu_groups"],
        "groups_with_nodes": info["groups"],
        "noiommu_mode": info["noiommu_mode"],
    }


def device_summary(host: Host, dev: PciDevice, names: Names, viab: dict) -> dict:
    v = viab.get(dev.iommu_group)
    if dev.iommu_group is None:
        # some IOMMUs (virtio-iommu via ACPI VIOT) attach a device, and give it its
        # group, only when a driver probes it: then the group is merely not known yet
        why = ("no IOMMU group yet: the IOMMU attaches the device when a driver probes it "
               "(vfio-assign binds it and then checks its group)") if host.has_iommu else \
            "no IOMMU group (no IOMMU, or not enabled)"
        viable = False
    else:
        viable, why = v.viable, v.why_not()
    below = interfaces_of(host, dev)
    return {
        "bdf": dev.bdf,
        "vendor_id": dev.vendor, "device_id": dev.device,
        "subsystem_vendor_id": dev.subsystem_vendor, "subsystem_device_id": dev.subsystem_device,
        "class_code": dev.class_code, "revision": dev.revision,
        "vendor_name": names.vendor(dev.vendor), "device_name": names.device(dev.vendor, dev.device),
        "class_name": names.klass(dev.class_code),
        "driver": dev.driver, "driver_override": dev.driver_override,
        "iommu_group": dev.iommu_group, "parent": dev.parent,
        "viable": viable, "why_not_viable": why,
        "in_use": [{"kind": u.kind, "what": u.what, "detail": u.detail} for u in usage_of(host, dev)],
        "block_devices": below["block"], "net_interfaces": below["net"],
        "boot_vga": dev.boot_vga, "numa_node": dev.numa_node,
    }


def _interrupted_report(host: Host, platform: bool = False) -> dict:
    """Devices an interrupted vfio-assign run left half-way (its state file, read only).

    With no state file (the usual case: nothing was ever assigned, or every
    assignment ended cleanly) the answer is the one
    :func:`vfio.host.assign.interrupted_report` gives for a missing file, and
    that module -- the largest the listing would import -- is not loaded."""
    path = host.sysfs.path(ASSIGN_PLATFORM_STATE_FILE if platform else ASSIGN_STATE_FILE)
    try:
        os.stat(path)
    except FileNotFoundError:               # what StateFile.load takes for "nothing recorded"
        return {"state_file": path, "error": None, "devices": []}
    except OSError:
        pass                                # unreadable: the state code words the error
    from .assign import interrupted_report
    return interrupted_report(host, path, platform=platform)


def host_report(host: Host, names: Names | None = None, ask_kernel: bool = True) -> dict:
    names = names or Names()
    groups = host.groups()
    viab: dict[str, Viability] = {g.number: group_viability(host, g, ask_kernel) for g in groups}
    return {
        "schema": SCHEMA,
        "kind": "host",
        "iommu": host.has_iommu,        # the kernel's IOMMU registrations, not VFIO's no-IOMMU groups
        "interfaces": interfaces_report(host),
        "names": {"available": names.available, "note": names.why},
        "groups": [{"group": g.number, "type": g.type, "devices": g.bdfs, "other_devices": list(g.others),
                    "viable": viab[g.number].viable, "viability_source": viab[g.number].source,
                    "why_not_viable": viab[g.number].why_not(), "note": viab[g.number].note}
                   for g in groups],
        "devices": [device_summary(host, d, names, viab) for d in host.devices()],
        # (vfio-assign) devices an interrupted assignment or release left half-way
        "interrupted_assignments": _interrupted_report(host),
        # the same for the device-tree devices vfio-assign bound (their own state file)
        "interrupted_platform_assignments": _interrupted_report(host, platform=True),
        # mediated devices: their parents (types, instances left) and the live mdevs
        **mdev_report(host),
        # device-tree devices (platform and AMBA buses): none on an ACPI/x86 host
        "platform_devices": [platform_summary(host, n) for n in host.platform_devices()],
    }


def mdev_report(host: Host) -> dict:
    """``mdev_parents`` (each with its types) and ``mdevs`` (see :mod:`vfio.host.mdev`)."""
    if not host.sysfs.exists(MDEV_BUS_CLASS) and not host.sysfs.exists(MDEV_DEVICES):
        return {"mdev_parents": [], "mdevs": []}    # no mdev framework: vfio.host.mdev stays unloaded
    from .mdev import MdevHost
    m = MdevHost(sysfs=host.sysfs)
    return {"mdev_parents": [{"name": p.name, "types": [t.to_dict() for t in p.types]} for p in m.parents()],
            "mdevs": [d.to_dict() for d in m.devices()]}


def mdev_device_report(host: Host, uuid: str, ask_kernel: bool = True) -> dict:
    """One mdev: its summary, and (live host) its VFIO regions and IRQs, opened by UUID."""
    from .mdev import MdevHost
    d = MdevHost(sysfs=host.sysfs).device(uuid)
    out = {"schema": SCHEMA, "kind": "mdev", **d.to_dict(), "vfio": None, "vfio_error": None}
    if host.root != "/":
        out["vfio_error"] = CAPTURED_TREE
    elif ask_kernel:
        import vfio
        try:
            with vfio.open_mdev_device(d.uuid) as vdev:
                out["vfio"] = vfio_report(vdev)
        except OSError as e:
            out["vfio_error"] = str(e)
    return out


def bar_sizes(host: Host, bdf: str) -> dict[int, int]:
    """BAR sizes from sysfs ``resource`` (lines 0-5; see :meth:`Host.resources`)."""
    return {r.line: r.size for r in host.resources(bdf)[:6] if r.size}


def config_report(data: bytes, sizes: dict | None = None, source: str | None = None,
                  resources: list | None = None) -> dict:
    """The decoded config space (:meth:`vfio.pci.config.ConfigSpace.to_dict`, lenient).

    ``resources`` (sysfs ``resource`` lines) give the kernel's view of the BARs
    and the ROM: type, address and size where the register does not carry
    them (SR-IOV VFs, legacy IDE), marked ``virtual``."""
    from ..pci.config import ConfigSpace, ConfigSpaceError
    try:
        cs = ConfigSpace(data, allow_short=True, bar_sizes=sizes, resources=resources, source=source)
        d = cs.to_dict(strict=False)
        if source:
            d["source"] = source
        return d
    except ConfigSpaceError as e:
        return {"error": str(e), "offset": e.offset, "raw": bytes(data).hex()}


def vfio_report(dev) -> dict:
    """Regions and IRQ indexes of an open :class:`vfio.device.Device`."""
    from .. import uapi
    rflags = {uapi.VFIO_REGION_INFO_FLAG_READ: "read", uapi.VFIO_REGION_INFO_FLAG_WRITE: "write",
              uapi.VFIO_REGION_INFO_FLAG_MMAP: "mmap", uapi.VFIO_REGION_INFO_FLAG_CAPS: "caps"}
    iflags = {uapi.VFIO_IRQ_INFO_EVENTFD: "eventfd", uapi.VFIO_IRQ_INFO_MASKABLE: "maskable",
              uapi.VFIO_IRQ_INFO_AUTOMASKED: "automasked", uapi.VFIO_IRQ_INFO_NORESIZE: "noresize"}
    dflags = {uapi.VFIO_DEVICE_FLAGS_RESET: "reset", uapi.VFIO_DEVICE_FLAGS_PCI: "pci",
              uapi.VFIO_DEVICE_FLAGS_PLATFORM: "platform", uapi.VFIO_DEVICE_FLAGS_AMBA: "amba",
              uapi.VFIO_DEVICE_FLAGS_CAPS: "caps"}
    dt = getattr(dev, "dt", None)           # a platform device's device-tree origins
    info = dev.info
    regions = []
    for i in range(info.num_regions):
        try:
            r = dev.region_info(i)
        except OSError as e:
            if info.is_pci and i == uapi.VFIO_PCI_VGA_REGION_INDEX and e.errno == errno.EINVAL:
                # vfio-pci's answer for a device that is not VGA: the index exists for every
                # PCI device (num_regions counts it) but the region does not
                regions.append({"index": i, "name": REGION_NAMES.get(i), "absent": "not a VGA device"})
            else:
                regions.append({"index": i, "name": REGION_NAMES.get(i), "error": str(e)})
            continue
        caps = []
        for c in r.caps:
            d = {"type": type(c).__name__, "id": c.id, "version": c.version}
            if hasattr(c, "areas"):
                d["areas"] = [list(a) for a in c.areas]
            if hasattr(c, "subtype"):
                d["region_type"], d["region_subtype"] = c.type, c.subtype
            if hasattr(c, "data"):
                d["data"] = bytes(c.data).hex()
            caps.append(d)
        regions.append({"index": i, "name": REGION_NAMES.get(i) if info.is_pci else None,
                        "flags": r.flags, "flag_names": _flag_names(r.flags, rflags),
                        "size": r.size, "offset": r.offset, "caps": caps})
        if dt is not None and dt.region(i) is not None:
            regions[-1]["dt_origin"] = _origin(dt.region(i))
    irqs = []
    for i in range(info.num_irqs):
        try:
            q = dev.irq_info(i)
        except OSError as e:
            name = IRQ_NAMES.get(i) if info.is_pci else None
            if info.is_pci and i == uapi.VFIO_PCI_ERR_IRQ_INDEX and e.errno == errno.EINVAL:
                # vfio-pci's answer for a function without a PCI Express capability: there is
                # no AER to report, although num_irqs counts the index
                irqs.append({"index": i, "name": name, "absent": "no PCI Express capability, so no AER to report"})
            else:
                irqs.append({"index": i, "name": name, "error": str(e)})
            continue
        irqs.append({"index": i, "name": IRQ_NAMES.get(i) if info.is_pci else None, "count": q.count,
                     "flags": q.flags, "flag_names": _flag_names(q.flags, iflags)})
        if dt is not None and dt.irq(i) is not None:
            irqs[-1]["dt_origin"] = _origin(dt.irq(i))
    return {"interface": getattr(dev, "interface", None), "flags": info.flags,
            "flag_names": _flag_names(info.flags, dflags), "num_regions": info.num_regions,
            "num_irqs": info.num_irqs, "regions": regions, "irqs": irqs}


def _origin(o) -> dict:
    return {"path": o.path, "property": o.property_name, "index": o.index}


def platform_summary(host: Host, node) -> dict:
    """One device-tree device (a :class:`vfio.platform.PlatformNode`) of the host listing."""
    from ..platform import region_phys
    try:
        phys = [a for a in region_phys(node, host.sysfs)]
        phys_error = None
    except (OSError, ValueError) as e:
        phys, phys_error = [], str(e)
    return {
        "name": node.name, "bus": node.bus.value, "dt_path": node.dt_path,
        "compatible": list(node.compatible), "driver": node.driver,
        "driver_override": node.driver_override, "iommu_group": node.iommu_group,
        "vfio_driver": node.bus.vfio_driver, "on_vfio": node.driver == node.bus.vfio_driver,
        "reg": [{"index": i, "address": a} for i, a in enumerate(phys)], "reg_error": phys_error,
    }


def platform_report(host: Host, node, ask_kernel: bool = True) -> dict:
    """A device-tree device: its summary and, when it is on vfio-platform/vfio-amba on
    the live host, its VFIO regions and IRQs with their device-tree origins."""
    rep = dict(platform_summary(host, node), schema=SCHEMA, kind="platform", vfio=None, vfio_error=None)
    if not rep["on_vfio"] or not ask_kernel:
        return rep
    if host.root != "/":
        rep["vfio_error"] = CAPTURED_TREE
        return rep
    import warnings
    from ..platform import open_platform_device
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")         # no-IOMMU mode: said by the group's name
            with open_platform_device(node.name) as dev:
                rep["vfio"] = vfio_report(dev)
    except OSError as e:
        rep["vfio_error"] = str(e)
    return rep


def open_vfio(bdf: str):
    """Open a device bound to vfio-pci on the live host (see :func:`vfio.open_pci_device`)."""
    import vfio
    return vfio.open_pci_device(bdf)


def device_report(host: Host, dev: PciDevice, names: Names | None = None, ask_kernel: bool = True) -> dict:
    """Summary + decoded config space + (on vfio-pci, live host) VFIO regions and IRQs."""
    names = names or Names()
    viab = {}
    if dev.iommu_group is not None:
        viab[dev.iommu_group] = group_viability(host, host.group(dev.iommu_group), ask_kernel)
    out = device_summary(host, dev, names, viab)
    out["subsystem_name"] = names.subsystem(dev.vendor, dev.device, dev.subsystem_vendor, dev.subsystem_device)
    try:
        data = host.config(dev.bdf)
        try:
            resources, res_error = host.resources(dev.bdf), None
        except HostError as e:          # a malformed resource file: decode from the registers alone
            resources, res_error = None, str(e)
        out["config"] = config_report(data, None, host.sysfs.shown(f"{PCI_DEVICES}/{dev.bdf}/config"), resources)
        if res_error:
            out["config"]["resources_error"] = res_error
    except OSError as e:
        out["config"] = {"error": str(e)}
    out["physfn"] = host.sysfs.link_name(f"{PCI_DEVICES}/{dev.bdf}/physfn")
    out["vfio"] = None
    out["vfio_error"] = None
    if dev.driver in VFIO_PCI_DRIVERS:
        if host.root != "/":
            out["vfio_error"] = CAPTURED_TREE
        else:
            try:
                with open_vfio(dev.bdf) as vdev:
                    out["vfio"] = vfio_report(vdev)
            except OSError as e:
                out["vfio_error"] = str(e)
    return out


def record_report(path: str, names: Names | None = None) -> dict:
    """A record file shown like a device: config space, regions, IRQs.

    The file is replayed (:func:`vfio.record.replay.open_replay`), so it is read
    with the same checks as any replay.  What the file leaves out -- a region
    or IRQ index below ``num_regions``/``num_irqs`` with no record (the kernel
    refused it at capture), config space that is absent or unreadable -- is
    listed under ``"absent"`` and the rest is shown; it never stops the report.
    Raises :class:`vfio.record.format.RecordFormatError` (a ``ValueError``) for a
    file that is not a record file replay accepts, ``OSError`` when it cannot be
    opened or a call the file's own data should answer fails.
    """
    from .. import uapi
    from ..errors import RegionAccessError
    from ..record.replay import open_replay
    names = names or Names()
    with open_replay(path) as dev:
        rep = {"schema": SCHEMA, "kind": "record", "file": path, "vfio": vfio_report(dev)}
        v = rep["vfio"]
        rec = dev.backend.record       # which indexes the file has no record for
        if rec.cassette is not None:    # a recorded session (vfio.record.cassette)
            from ..record.cassette import summary
            rep["cassette"] = summary(rec)
        rep["absent"] = [f"region {r['index']}" + (f" ({r['name']})" if r.get("name") else "")
                         for r in v["regions"] if r["index"] not in rec.regions]
        rep["absent"] += [f"irq {q['index']}" + (f" ({q['name']})" if q.get("name") else "")
                          for q in v["irqs"] if q["index"] not in rec.interrupts]
        if dev.info.is_pci:
            sizes = {r["index"]: r["size"] for r in v["regions"] if r["index"] < 6 and r.get("size")}
            cfg_index = uapi.VFIO_PCI_CONFIG_REGION_INDEX
            if cfg_index not in rec.regions:
                rep["config"] = {"error": f"no config space: the file has no region {cfg_index} (CONFIG)"}
            else:
                try:
                    cfg = dev.region(cfg_index)
                    data = cfg.read(0, cfg.info.size)
                except (OSError, RegionAccessError) as e:
                    rep["config"] = {"error": f"config space not readable: {e}"}
                else:
                    rep["config"] = config_report(data, sizes, path)
            c = rep["config"]
            if "vendor_id" in c:
                rep["vendor_name"] = names.vendor(c["vendor_id"])
                rep["device_name"] = names.device(c["vendor_id"], c["device_id"])
                rep["class_name"] = names.klass(c["class_code"])
    return rep


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------

def _yn(b) -> str:
    return "yes" if b else "no"


def _ident(d: dict) -> str:
    cls = f"{d['class_name']} [{d['class_code'] >> 8:04x}]" if d.get("class_name") else f"[{d['class_code'] >> 8:04x}]"
    vn, dn = d.get("vendor_name"), d.get("device_name")
    name = " ".join(x for x in (vn, dn) if x) or "(unknown)"
    rev = f" (rev {d['revision']:02x})" if d.get("revision") else ""
    return f"{cls}: {name} [{d['vendor_id']:04x}:{d['device_id']:04x}]{rev}"


def render_interfaces(rep: dict, out) -> None:
    i = rep["interfaces"]
    print("VFIO interfaces on this host:", file=out)
    print(f"  legacy container  /dev/vfio/vfio:                {_yn(i['container'])}", file=out)
    print(f"  cdev + iommufd    /dev/vfio/devices, /dev/iommu: {_yn(i['cdev'])}", file=out)
    nm = i["noiommu_mode"]
    mode = "" if nm is None else f" (no-IOMMU mode {'ON: unsafe' if nm else 'off'})"
    print(f"  no-IOMMU groups   /dev/vfio/noiommu-N:           "
          f"{', '.join(i['noiommu_groups']) or 'none'}{mode}", file=out)
    if not rep["iommu"]:
        print("IOMMU: none -- the kernel made no IOMMU groups (no IOMMU, or not enabled with "
              "intel_iommu=on / amd_iommu=on).  No device can be assigned safely; VFIO would "
              "need no-IOMMU mode, which gives userspace unrestricted DMA.", file=out)


def render_host(rep: dict, out) -> None:
    render_interfaces(rep, out)
    for key in ("interrupted_assignments", "interrupted_platform_assignments"):
        ia = rep.get(key)
        if ia and (ia["devices"] or ia["error"]):   # else render_interrupted prints nothing
            from .assign import render_interrupted
            render_interrupted(ia, out)
    if not rep["names"]["available"]:
        print(f"({rep['names']['note']})", file=out)
    devs = {d["bdf"]: d for d in rep["devices"]}
    mdevs = {m["uuid"]: m for m in rep.get("mdevs") or []}

    def line(d):
        extra = [f"driver: {d['driver'] or 'none'}"]
        if d["driver_override"]:
            extra.append(f"override: {d['driver_override']}")
        if d["in_use"]:
            # the details start with the BDF, already at the start of the line
            extra.append("IN USE: " + "; ".join(u["detail"].removeprefix(d["bdf"]).lstrip(": ")
                                                for u in d["in_use"]))
        return f"  {d['bdf']} {_ident(d)}  " + ", ".join(extra)

    for g in rep["groups"]:
        src = " (kernel)" if g["viability_source"] == "kernel" else ""
        head = f"\nIOMMU group {g['group']}" + (f" [{g['type']}]" if g["type"] else "") + ": "
        head += f"viable{src}" if g["viable"] else f"not viable{src}: {g['why_not_viable']}"
        if g["note"]:
            head += f" ({g['note']})"
        print(head, file=out)
        for b in g["devices"]:
            print(line(devs[b]), file=out)
        for b in g.get("other_devices") or []:
            print(f"  {mdev_line(mdevs[b]) if b in mdevs else b}", file=out)
    loose = [d for d in rep["devices"] if d["iommu_group"] is None]
    if loose:
        print("\nDevices without an IOMMU group:", file=out)
        for d in loose:
            print(line(d), file=out)
    render_mdevs(rep, out)
    plat = rep.get("platform_devices") or []
    if plat:
        print("\nDevice-tree devices (platform, amba):", file=out)
        for p in plat:
            regs = ", ".join(f"reg[{r['index']}] {r['address']:#x}" for r in p["reg"] if r["address"] is not None)
            extra = [f"driver: {p['driver'] or 'none'}"]
            if p["driver_override"]:
                extra.append(f"override: {p['driver_override']}")
            extra.append(f"IOMMU group: {p['iommu_group'] if p['iommu_group'] is not None else 'none'}")
            compat = f" [{p['compatible'][0]}]" if p["compatible"] else ""
            print(f"  {p['name']} ({p['bus']}) {p['dt_path']}{compat}" + (f" {regs}" if regs else "")
                  + "  " + ", ".join(extra), file=out)


def mdev_line(m: dict) -> str:
    return (f"{m['uuid']} mdev {m['type']} of {m['parent']} ({m['device_api']}), driver: {m['driver'] or 'none'}"
            + (f", cdev /dev/vfio/devices/{m['cdev']}" if m.get("cdev") else ""))


def render_mdevs(rep: dict, out) -> None:
    """Mediated device parents with their types, and the mdevs without an IOMMU group
    (the others are listed in their groups)."""
    parents = rep.get("mdev_parents") or []
    if parents:
        print("\nMediated device parents (mdev_supported_types):", file=out)
        for p in parents:
            print(f"  {p['name']}:", file=out)
            for t in p["types"]:
                name = f" \"{t['name']}\"" if t["name"] and t["name"] != t["type"] else ""
                print(f"    {t['type']}{name} [{t['device_api']}]: {t['available_instances']} more available, "
                      f"{len(t['devices'])} in use", file=out)
    loose = [m for m in rep.get("mdevs") or [] if m["iommu_group"] is None]
    if loose:
        print("\nMediated devices without an IOMMU group:", file=out)
        for m in loose:
            print(f"  {mdev_line(m)}", file=out)


def render_mdev(d: dict, out) -> None:
    print(f"\n{mdev_line(d)}", file=out)
    g = d["iommu_group"]
    print(f"  IOMMU group: {g if g is not None else 'none'}" + (f" (/dev/vfio/{g})" if g is not None else ""), file=out)
    if d["vfio"]:
        render_vfio(d["vfio"], out)
    elif d["vfio_error"]:
        print(f"  VFIO: cannot open: {d['vfio_error']}", file=out)


_REGISTER_SUFFIXES = ("ctl", "cap", "sta", "control", "status", "flags", "mask", "severity",
                      "vector", "command", "pmc", "pmcsr", "offset", "capability", "_id")


def _render_fields(fields: dict, out, indent: str) -> None:
    parts = []
    for k, v in fields.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) and "kind" in x and "address" in x for x in v):
            # BAR-like entries (the SR-IOV capability's VF BARs)
            v = "[" + "; ".join(f"BAR{x['index']} {x['kind']}{' prefetchable' if x.get('prefetchable') else ''} "
                                f"at {x['address']:#x}" for x in v) + "]"
        elif isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v) and any(
                x > 9 for x in v):
            v = "[" + ",".join(hex(x) for x in v) + "]"
        elif isinstance(v, dict):
            v = ",".join(f"{a}{'+' if b is True else '-' if b is False else '=' + str(b)}" for a, b in v.items())
        elif isinstance(v, bool):
            v = "+" if v else "-"
        elif isinstance(v, int) and (v > 255 or (v > 9 and k.endswith(_REGISTER_SUFFIXES))):
            v = hex(v)          # registers and offsets read best in hex, quantities in decimal
        parts.append(f"{k}={v}")
    line = indent
    for p in parts:
        if len(line) + len(p) > 100 and line.strip():
            print(line.rstrip(), file=out)
            line = indent
        line += p + " "
    if line.strip():
        print(line.rstrip(), file=out)


def _size(n: int) -> str:
    """A size as lspci writes it: 16K, 256K, 1M, or bytes."""
    for suffix in ("", "K", "M", "G", "T"):
        if n % 1024 or suffix == "T":
            return f"{n}{suffix}"
        n //= 1024
    return str(n)


def _bar_line(b: dict) -> str:
    """One BAR as lspci -vv words it, with our hex; [virtual] where the address is the kernel's."""
    at = f"{b['address']:#x}" if b["address"] else "<unassigned>"
    if b["kind"] == "io":
        text = f"I/O ports at {at}"
    else:
        width = "64-bit" if b["kind"] == "mem64" else "32-bit"
        text = f"Memory at {at} ({width}, {'' if b['prefetchable'] else 'non-'}prefetchable)"
    if b.get("virtual"):
        text += " [virtual]"
    elif b.get("disabled"):
        text += " [disabled]"
    if b.get("origin") == "enhanced":
        text += " [enhanced]"
    if b.get("size"):
        text += f" [size={_size(b['size'])}]"
    return text


def _config_heading(c: dict) -> str:
    n = c["length"]
    where = f" of {c['source']}" if c.get("source") else ""
    if c.get("header_only"):
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            return f"  config space: {n} bytes (header only: run as root for capabilities)"
        return f"  config space: {n} bytes{where} (INCOMPLETE: only the 64-byte header; capabilities not decoded)"
    if c.get("truncated"):
        return f"  config space: {n} bytes{where} (INCOMPLETE: cut short, see below)"
    return f"  config space: {n} bytes"


def render_config(c: dict, out) -> None:
    if "error" in c and "vendor_id" not in c:
        print(f"  config space: cannot decode: {c['error']}", file=out)
        return
    print(_config_heading(c), file=out)
    flags = " ".join(f"{k}{'+' if v else '-'}" for k, v in c["command_flags"].items())
    print(f"    Control: {flags}", file=out)
    st = " ".join(f"{k}{'+' if v is True else '-' if v is False else '=' + str(v)}"
                  for k, v in c["status_flags"].items())
    print(f"    Status: {st}", file=out)
    print(f"    header type {c['header_type']:#04x}{' multi-function' if c['multifunction'] else ''}, "
          f"interrupt pin {c['interrupt_pin']} line {c['interrupt_line']}", file=out)
    if c.get("resources_error"):
        print(f"    kernel resources: cannot read: {c['resources_error']}", file=out)
    bars = c.get("bars")
    if isinstance(bars, dict):
        print(f"    BARs: cannot decode: {bars['error']}", file=out)
    else:
        for b in bars or []:
            print(f"    BAR{b['index']}: {_bar_line(b)}", file=out)
    rom = c.get("rom")
    if rom:
        text = f"Expansion ROM at {rom['address']:#x}" if rom["address"] else "Expansion ROM at <unassigned>"
        if rom.get("virtual"):
            text += " [virtual]"
        if not rom["enabled"]:
            text += " [disabled]"
        elif not rom.get("virtual") and not c["command_flags"]["memory"]:
            text += " [disabled by cmd]"          # lspci's words: enabled, but memory decode is off
        if rom.get("size"):
            text += f" [size={_size(rom['size'])}]"
        print(f"    {text}", file=out)
    for key, title in (("capabilities", "Capabilities"), ("extended_capabilities", "Extended capabilities")):
        caps = c.get(key)
        if isinstance(caps, dict):
            print(f"    {title}: list corrupt: {caps['error']}", file=out)
            continue
        for cap in caps or []:
            name = cap["name"] or f"unknown {'capability' if key == 'capabilities' else 'extended capability'} {cap['id']:#x}"
            ver = f" v{cap['version']}" if "version" in cap else ""
            if cap.get("truncated"):
                print(f"    [{cap['offset']:#05x}] {name}{ver} <truncated: {cap['truncated']}>", file=out)
                continue
            print(f"    [{cap['offset']:#05x}] {name}{ver}", file=out)
            _render_fields(cap["fields"], out, "        ")
    for cut in c.get("incomplete") or []:
        at = f" at {cut['offset']:#05x}" if cut.get("offset") is not None else ""
        print(f"    INCOMPLETE{at}: {cut['message']}", file=out)


def _origin_text(r: dict) -> str:
    o = r.get("dt_origin")
    return f" from {o['path']} {o['property']}[{o['index']}]" if o else ""


def render_vfio(v: dict, out) -> None:
    print(f"  VFIO (opened through: {v['interface']}): flags {v['flags']:#x} "
          f"[{' '.join(v['flag_names'])}], {v['num_regions']} regions, {v['num_irqs']} IRQ indexes", file=out)
    for r in v["regions"]:
        name = f" {r['name']}" if r.get("name") else ""
        if "absent" in r:
            print(f"    region {r['index']}{name}: absent ({r['absent']})", file=out)
            continue
        if "error" in r:
            print(f"    region {r['index']}{name}: {r['error']}", file=out)
            continue
        if not r["size"]:
            print(f"    region {r['index']}{name}: empty", file=out)
            continue
        caps = "".join(f" {c['type']}" + (f"{c['areas']}" if "areas" in c else "") for c in r["caps"])
        print(f"    region {r['index']}{name}: size {r['size']:#x} at offset {r['offset']:#x} "
              f"[{' '.join(r['flag_names'])}]{caps}{_origin_text(r)}", file=out)
    for q in v["irqs"]:
        name = f" {q['name']}" if q.get("name") else ""
        if "absent" in q:
            print(f"    irq {q['index']}{name}: absent ({q['absent']})", file=out)
        elif "error" in q:
            print(f"    irq {q['index']}{name}: {q['error']}", file=out)
        else:
            print(f"    irq {q['index']}{name}: count {q['count']} [{' '.join(q['flag_names'])}]{_origin_text(q)}",
                  file=out)


def render_device(d: dict, out) -> None:
    print(f"\n{d['bdf']} {_ident(d)}", file=out)
    sub = d.get("subsystem_name")
    print(f"  subsystem: {sub + ' ' if sub else ''}[{d['subsystem_vendor_id']:04x}:{d['subsystem_device_id']:04x}]", file=out)
    print(f"  driver: {d['driver'] or 'none'}" + (f" (override: {d['driver_override']})" if d["driver_override"] else ""), file=out)
    print(f"  IOMMU group: {d['iommu_group'] if d['iommu_group'] is not None else 'none'}; "
          + ("viable" if d["viable"] else f"not viable: {d['why_not_viable']}"), file=out)
    for u in d["in_use"]:
        print(f"  in use: {u['detail']}", file=out)
    if d["block_devices"] or d["net_interfaces"]:
        print(f"  below it: {' '.join(d['block_devices'] + d['net_interfaces'])}", file=out)
    render_config(d["config"], out)
    if d["vfio"]:
        render_vfio(d["vfio"], out)
    elif d["vfio_error"]:
        print(f"  VFIO: cannot open: {d['vfio_error']}", file=out)


def render_platform(p: dict, out) -> None:
    print(f"\n{p['name']} ({p['bus']}) device-tree node {p['dt_path'] or 'none'}"
          + (f" [{', '.join(p['compatible'])}]" if p["compatible"] else ""), file=out)
    print(f"  driver: {p['driver'] or 'none'}" + (f" (override: {p['driver_override']})" if p["driver_override"] else "")
          + f"; VFIO driver for it: {p['vfio_driver']}", file=out)
    print(f"  IOMMU group: {p['iommu_group'] if p['iommu_group'] is not None else 'none'}", file=out)
    for r in p["reg"]:
        print(f"  reg[{r['index']}]: " + (f"{r['address']:#x}" if r["address"] is not None else "not translatable"),
              file=out)
    if p["reg_error"]:
        print(f"  reg: {p['reg_error']}", file=out)
    if p["vfio"]:
        render_vfio(p["vfio"], out)
    elif p["vfio_error"]:
        print(f"  VFIO: cannot open: {p['vfio_error']}", file=out)


def render_record(rep: dict, out) -> None:
    print(f"record file {rep['file']}", file=out)
    c = rep.get("config")
    if c and "vendor_id" in c:
        d = {"class_name": rep.get("class_name"), "class_code": c["class_code"], "vendor_name": rep.get("vendor_name"),
             "device_name": rep.get("device_name"), "vendor_id": c["vendor_id"], "device_id": c["device_id"],
             "revision": c["revision"]}
        print(f"  {_ident(d)}", file=out)
    if c:
        render_config(c, out)
    render_vfio(rep["vfio"], out)
    if rep.get("absent"):
        print(f"  not in the file: {', '.join(rep['absent'])} (the kernel refused them at capture; "
              "replay answers EINVAL)", file=out)
    if rep.get("cassette"):
        from ..record.cassette import render_summary
        render_summary(rep["cassette"], out)


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------

def _parser() -> "argparse.ArgumentParser":
    import argparse
    ap = argparse.ArgumentParser(prog="vfio-inspect", description="\n\n".join(__doc__.split("\n\n")[:2]),
                                 epilog=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", metavar="BDF|VENDOR:DEVICE|RECORD_FILE")
    ap.add_argument("--json", action="store_true", help="JSON output (schema vfio-inspect/1)")
    ap.add_argument("--watch", action="store_true", help="stream PCI add/remove/bind/unbind events")
    ap.add_argument("--count", type=int, help="with --watch: stop after this many events")
    ap.add_argument("--timeout", type=float, help="with --watch: stop after this many seconds")
    ap.add_argument("--root", default="/", help="system root (a captured tree; default /)")
    ap.add_argument("--no-kernel", action="store_true",
                    help="predict viability from drivers only (do not open /dev/vfio/N)")
    return ap


class _Args:
    """What ``_parser().parse_args(argv)`` returns for the common command lines
    (no options, or BDF / ID / file arguments only), without importing argparse."""

    def __init__(self, targets: list):
        self.targets = targets
        self.json = self.watch = self.no_kernel = False
        self.count = self.timeout = None
        self.root = "/"


def _parse_args(argv):
    """The arguments as argparse would parse them.  Arguments that are all
    positional and cannot be taken for an option (none empty or starting
    with ``-``) need no parser; anything else goes through argparse: options, help,
    usage errors and their exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if all(isinstance(a, str) and a and a[0] != "-" for a in args):
        return _Args(args)
    return _parser().parse_args(argv)


@entry_point("vfio-inspect")
def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    args = _parse_args(argv)
    if args.watch:
        from .watch import watch_main
        return watch_main(args, out)
    host = Host(args.root)
    names = Names()
    try:
        reports = []
        if not args.targets:
            reports.append(host_report(host, names, not args.no_kernel))
        for t in args.targets:
            if os.path.exists(t):       # any file: the record reader names what is wrong with it (a FIFO, a directory)
                reports.append(record_report(t, names))
                continue
            if "/" in t:
                raise HostError(f"{t}: no such file")
            if any(host.sysfs.is_dir(f"sys/bus/{b}/devices/{t}") for b in ("platform", "amba")):
                reports.append(platform_report(host, host.platform_device(t), not args.no_kernel))
                continue
            if _looks_like_uuid(t):         # a mediated device
                reports.append(mdev_device_report(host, t, not args.no_kernel))
                continue
            for dev in host.find(t):
                r = device_report(host, dev, names, not args.no_kernel)
                r.update(schema=SCHEMA, kind="device")
                reports.append(r)
    except HostError as e:
        print(f"vfio-inspect: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:          # a malformed record file (RecordFormatError) or config dump
        print(f"vfio-inspect: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"vfio-inspect: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        import json
        doc = reports[0] if len(reports) == 1 else {"schema": SCHEMA, "kind": "list", "items": reports}
        json.dump(doc, out, indent=1)
        out.write("\n")
    else:
        for r in reports:
            {"host": render_host, "device": render_device, "record": render_record,
             "mdev": render_mdev, "platform": render_platform}[r["kind"]](r, out)
    return EXIT_PARTIAL if any(_incomplete(r) for r in reports) else EXIT_OK


def _looks_like_uuid(t: str) -> bool:
    return len(t) == 36 and t.count("-") == 4


def _incomplete(r: dict) -> bool:
    """True when part of a report could not be read (shown in place as an error)."""
    if r.get("vfio_error") and r["vfio_error"] != CAPTURED_TREE:
        return True
    cfg = r.get("config") or {}
    if cfg.get("truncated") or cfg.get("incomplete") or cfg.get("resources_error"):
        return True         # part of config space could not be decoded: said in place, exit 3
    if cfg.get("header_only") and not (hasattr(os, "geteuid") and os.geteuid() != 0):
        return True         # root got only the header: a cut capture, not the non-root view
    return "error" in cfg or any(isinstance(v, dict) and "error" in v for v in cfg.values())


if __name__ == "__main__":
    sys.exit(main())
