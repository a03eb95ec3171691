"""Host side: what the machine has, and handing devices to vfio-pci and back.

* :mod:`vfio.host.sysfs` -- PCI devices, drivers and IOMMU groups from sysfs
  (under a configurable root, so captured trees in ``fixtures/sysfs/`` work too),
  and :class:`~vfio.host.sysfs.Sysfs`, the single door every change goes through.
* :mod:`vfio.host.viability` -- whether a group can be used through VFIO, the
  way the kernel decides it.
* :mod:`vfio.host.inuse` -- whether a device is busy (mounted disks, configured
  network interfaces, the boot VGA, the root filesystem).
* :mod:`vfio.host.assign` -- binding to vfio-pci and back with a state file and rollback
  (``vfio-assign``, :mod:`vfio.host.assign_cli`).
* :mod:`vfio.host.inspect` -- ``vfio-inspect``; :mod:`vfio.host.watch` -- live uevents.
* :mod:`vfio.host.simulate` -- a fixture tree that reacts to driver writes like
  the kernel (for tests without hardware).
"""

#: vfio-assign's state file, relative to the system root.  :mod:`vfio.host.assign`
#: owns the file; it is named here so that ``vfio-inspect`` can see there is none
#: (the usual case) without loading that module.
ASSIGN_STATE_FILE = "run/vfio-assign/state.json"
#: Its record of the device-tree (platform/AMBA) devices it bound, beside it (those
#: entries are keyed by device name, the PCI ones by BDF).
ASSIGN_PLATFORM_STATE_FILE = "run/vfio-assign/platform-state.json"
