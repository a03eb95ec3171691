"""Is a PCI device busy?  Taking it from its driver would break something.

Unbinding a driver is always allowed by the kernel, and it is the quickest way
to lose a host: the disk controller under a mounted filesystem, the network
card carrying the admin's SSH session, the console's VGA.  Before handing a
device to vfio-pci, :func:`usage_of` looks for:

* block devices below the device's sysfs directory (NVMe namespaces, SATA or
  virtio disks and their partitions), and whatever is stacked on them
  (``holders/``: device-mapper, md), that are mounted (matched by the
  ``major:minor`` in ``/proc/self/mountinfo``, which also catches LVM and
  btrfs-by-path) or used as swap (``/proc/swaps``); the root filesystem is
  called out by name;
* network interfaces below the device that are up (IFF_UP in ``flags``) and
  have an address: an IPv4 route (``/proc/net/route``) or a non-link-local
  IPv6 address (``/proc/net/if_inet6``);
* ``boot_vga`` set: the firmware console.

All of it is read through the same root as the rest of the host model, so
the checks run against captured trees.
"""

from __future__ import annotations

import ipaddress
import os
import struct

from .._value import Value
from ..address import PciAddress
from ..errors import InvalidValue
from .sysfs import Host, PciDevice

IFF_UP = 0x1
MAX_STACK = 64        # bound on holder chains (dm on md on ...)


class Usage(Value):
    """One reason a device is busy."""
    bdf: str
    kind: str      # "rootfs", "mounted", "swap", "network", "boot-vga"
    what: str      # the block device, interface, ...
    detail: str    # human sentence

    def __init__(self, bdf: str, kind: str, what: str, detail: str):
        self.__dict__.update(bdf=bdf, kind=kind, what=what, detail=detail)

    def __str__(self) -> str:
        return self.detail


def _below(host: Host, class_dir: str, dev: PciDevice) -> list[str]:
    """Names in /sys/class/<class_dir> whose real directory is inside the device's."""
    prefix = dev.path.rstrip("/") + "/"
    out = []
    for name in host.sysfs.listdir(class_dir):
        real = host.sysfs.real(f"{class_dir}/{name}")
        # below a bridge sit other functions' disks and NICs: those are theirs, not the bridge's
        if real.startswith(prefix) and not any(PciAddress.is_sysfs_name(p) for p in real[len(prefix):].split("/")):
            out.append(name)
    return out


def _block_stack(host: Host, names: list[str]) -> dict[str, str]:
    """name -> "major:minor" for the given block devices and everything stacked on them."""
    found: dict[str, str] = {}
    todo = list(names)
    steps = 0
    while todo:
        steps += 1
        if steps > MAX_STACK * max(1, len(names)) + 4096:
            raise InvalidValue(f"holder chain under /sys/class/block does not end (loop at {todo[0]})")
        name = todo.pop()
        if name in found:
            continue
        majmin = host.sysfs.read_optional(f"sys/class/block/{name}/dev") or ""
        found[name] = majmin
        todo.extend(host.sysfs.listdir(f"sys/class/block/{name}/holders"))
    return found


def _mounts(host: Host) -> list[tuple[str, str, str]]:
    """(major:minor, mount point, source) for each line of /proc/self/mountinfo."""
    text = host.sysfs.read_optional("proc/self/mountinfo") or ""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10 or "-" not in f[6:]:
            continue
        sep = f.index("-", 6)
        src = f[sep + 2] if len(f) > sep + 2 else ""
        point = f[4].replace("\\040", " ")
        out.append((f[2], point, src))
    return out


def block_usage(host: Host, dev: PciDevice) -> list[Usage]:
    disks = _below(host, "sys/class/block", dev)
    if not disks:
        return []
    stack = _block_stack(host, disks)
    by_majmin = {mm: name for name, mm in stack.items() if mm}
    by_node = {f"/dev/{name}": name for name in stack}
    out = []
    for majmin, point, src in _mounts(host):
        name = by_majmin.get(majmin) or by_node.get(src)
        if name is None:
            continue
        if point == "/":
            out.append(Usage(dev.bdf, "rootfs", f"/dev/{name}",
                             f"{dev.bdf} holds the root filesystem (/dev/{name} mounted on /)"))
        else:
            out.append(Usage(dev.bdf, "mounted", f"/dev/{name}",
                             f"{dev.bdf}: /dev/{name} is mounted on {point}"))
    swaps = host.sysfs.read_optional("proc/swaps") or ""
    for line in swaps.splitlines()[1:]:
        f = line.split()
        if f and os.path.basename(f[0]) in stack and f[0].startswith("/dev/"):
            out.append(Usage(dev.bdf, "swap", f[0], f"{dev.bdf}: {f[0]} is in use as swap"))
    return out


def _ipv4_routes(host: Host) -> dict[str, list[str]]:
    text = host.sysfs.read_optional("proc/net/route") or ""
    out: dict[str, list[str]] = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            dest = str(ipaddress.IPv4Address(struct.pack("<I", int(f[1], 16))))  # no socket import for this
            mask = bin(int(f[7], 16)).count("1")
        except ValueError:
            continue
        if dest == "0.0.0.0" and mask == 0:
            continue              # a default route says nothing of an address of its own
        out.setdefault(f[0], []).append(f"{dest}/{mask}")
    return out


def _ipv6_addresses(host: Host) -> dict[str, list[str]]:
    text = host.sysfs.read_optional("proc/net/if_inet6") or ""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 6 or len(f[0]) != 32:
            continue
        addr = ipaddress.IPv6Address(int(f[0], 16))
        if addr.is_link_local:      # every interface that is up has one: not a configuration
            continue
        out.setdefault(f[5], []).append(f"{addr}/{int(f[2], 16)}")
    return out


def net_usage(host: Host, dev: PciDevice) -> list[Usage]:
    ifaces = _below(host, "sys/class/net", dev)
    if not ifaces:
        return []
    v4, v6 = _ipv4_routes(host), _ipv6_addresses(host)
    out = []
    for name in ifaces:
        flags = host.sysfs.read_optional(f"sys/class/net/{name}/flags")
        up = flags is not None and int(flags, 16) & IFF_UP
        addrs = v4.get(name, []) + v6.get(name, [])
        if up and addrs:
            out.append(Usage(dev.bdf, "network", name,
                             f"{dev.bdf}: network interface {name} is up with {', '.join(addrs)}"))
    return out


def usage_of(host: Host, dev: PciDevice) -> list[Usage]:
    """Every reason not to take ``dev`` from its driver; [] when it is free."""
    out = block_usage(host, dev) + net_usage(host, dev)
    if dev.boot_vga:
        out.append(Usage(dev.bdf, "boot-vga", dev.bdf, f"{dev.bdf} is the boot VGA device (the console)"))
    return out


def interfaces_of(host: Host, dev: PciDevice) -> dict:
    """Block devices and network interfaces below ``dev`` (for display)."""
    return {"block": _below(host, "sys/class/block", dev), "net": _below(host, "sys/class/net", dev)}
