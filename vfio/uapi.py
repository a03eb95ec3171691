"""The kernel ABI: every VFIO and iommufd ioctl number, uapi struct and constant,
and the one raw ``fcntl.ioctl`` call of the toolkit.

This module mirrors ``include/uapi/linux/vfio.h`` and ``include/uapi/linux/iommufd.h``
as of Linux 6.12.  Nothing else in the package imports ``fcntl``: every other
module asks this one, so the exact layout of the ABI lives in one place and is
checked in one place (``tests/unit/test_uapi_header.py`` compiles a C program
against the system's ``linux/vfio.h`` and, when available, the 6.12 source's,
and compares every number, size and offset with the definitions below).

Why these tools:

* ioctl numbers come from ``ioctl_opt.IO`` -- VFIO and iommufd commands are all
  plain ``_IO(';', nr)`` (no size or direction bits: the size travels in the
  struct's own ``argsz``/``size`` field instead), which ioctl-opt computes
  exactly as the C macro does.
* structs are ``ctypes.Structure``: the kernel ABI uses C alignment
  (``__aligned_u64``), unions and flexible array members, which ctypes models
  exactly; cstruct mis-sizes unions and C-aligned structs (it is used for the
  packed record-file format instead, see :mod:`vfio.record`).

Variable-length calls (info with a capability chain, SET_IRQS with data, hot
reset with a list of group fds) are built here once each
(:func:`build_irq_set`, :func:`build_hot_reset`) and their capability chains
walked once (:func:`iter_caps`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import TYPE_CHECKING

from ioctl_opt import IO

from ._value import Value
from .errors import InvalidValue, VfioError

if TYPE_CHECKING:
    from collections.abc import Iterator

u8, u16, u32, u64, s32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32

# --------------------------------------------------------------------------------------
# linux/vfio.h: container and IOMMU model constants
# --------------------------------------------------------------------------------------
VFIO_API_VERSION = 0

# extensions (VFIO_CHECK_EXTENSION) and IOMMU types (VFIO_SET_IOMMU)
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
VFIO_TYPE1_NESTING_IOMMU = 6
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_TYPE = ord(";")
VFIO_BASE = 100


def _vfio(n: int) -> int:
    return IO(VFIO_TYPE, VFIO_BASE + n)


VFIO_GET_API_VERSION = _vfio(0)
VFIO_CHECK_EXTENSION = _vfio(1)
VFIO_SET_IOMMU = _vfio(2)
VFIO_GROUP_GET_STATUS = _vfio(3)
VFIO_GROUP_SET_CONTAINER = _vfio(4)
VFIO_GROUP_UNSET_CONTAINER = _vfio(5)
VFIO_GROUP_GET_DEVICE_FD = _vfio(6)
VFIO_DEVICE_GET_INFO = _vfio(7)
VFIO_DEVICE_GET_REGION_INFO = _vfio(8)
VFIO_DEVICE_GET_IRQ_INFO = _vfio(9)
VFIO_DEVICE_SET_IRQS = _vfio(10)
VFIO_DEVICE_RESET = _vfio(11)
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _vfio(12)
VFIO_DEVICE_PCI_HOT_RESET = _vfio(13)
VFIO_DEVICE_QUERY_GFX_PLANE = _vfio(14)
VFIO_DEVICE_GET_GFX_DMABUF = _vfio(15)
VFIO_DEVICE_IOEVENTFD = _vfio(16)
VFIO_DEVICE_FEATURE = _vfio(17)
VFIO_DEVICE_BIND_IOMMUFD = _vfio(18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _vfio(19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _vfio(20)
VFIO_MIG_GET_PRECOPY_INFO = _vfio(21)
# container-side numbers share the device-side space (different fds)
VFIO_IOMMU_GET_INFO = _vfio(12)
VFIO_IOMMU_MAP_DMA = _vfio(13)
VFIO_IOMMU_UNMAP_DMA = _vfio(14)
VFIO_IOMMU_ENABLE = _vfio(15)
VFIO_IOMMU_DISABLE = _vfio(16)
VFIO_IOMMU_DIRTY_PAGES = _vfio(17)
VFIO_IOMMU_SPAPR_TCE_GET_INFO = _vfio(12)
VFIO_IOMMU_SPAPR_REGISTER_MEMORY = _vfio(17)
VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY = _vfio(18)
VFIO_IOMMU_SPAPR_TCE_CREATE = _vfio(19)
VFIO_IOMMU_SPAPR_TCE_REMOVE = _vfio(20)
VFIO_EEH_PE_OP = _vfio(21)


class vfio_info_cap_header(ctypes.Structure):
    _fields_ = [("id", u16), ("version", u16), ("next", u32)]


# ---- group ---------------------------------------------------------------------------
class vfio_group_status(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32)]


VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1


# ---- device info ---------------------------------------------------------------------
class vfio_device_info(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("num_regions", u32), ("num_irqs", u32),
                ("cap_offset", u32), ("pad", u32)]


VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2
VFIO_DEVICE_FLAGS_AMBA = 1 << 3
VFIO_DEVICE_FLAGS_CCW = 1 << 4
VFIO_DEVICE_FLAGS_AP = 1 << 5
VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6
VFIO_DEVICE_FLAGS_CAPS = 1 << 7
VFIO_DEVICE_FLAGS_CDX = 1 << 8

VFIO_DEVICE_API_PCI_STRING = "vfio-pci"
VFIO_DEVICE_API_PLATFORM_STRING = "vfio-platform"
VFIO_DEVICE_API_AMBA_STRING = "vfio-amba"
VFIO_DEVICE_API_CCW_STRING = "vfio-ccw"
VFIO_DEVICE_API_AP_STRING = "vfio-ap"

VFIO_DEVICE_INFO_CAP_ZPCI_BASE = 1
VFIO_DEVICE_INFO_CAP_ZPCI_GROUP = 2
VFIO_DEVICE_INFO_CAP_ZPCI_UTIL = 3
VFIO_DEVICE_INFO_CAP_ZPCI_PFIP = 4
VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP = 5


class vfio_device_info_cap_pci_atomic_comp(ctypes.Structure):
    _fields_ = [("header", vfio_info_cap_header), ("flags", u32), ("reserved", u32)]


VFIO_PCI_ATOMIC_COMP32 = 1 << 0
VFIO_PCI_ATOMIC_COMP64 = 1 << 1
VFIO_PCI_ATOMIC_COMP128 = 1 << 2


# ---- regions -------------------------------------------------------------------------
class vfio_region_info(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("index", u32), ("cap_offset", u32),
                ("size", u64), ("offset", u64)]


VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1
VFIO_REGION_INFO_CAP_TYPE = 2
VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3
VFIO_REGION_INFO_CAP_NVLINK2_SSATGT = 4
VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD = 5


class vfio_region_sparse_mmap_area(ctypes.Structure):
    _fields_ = [("offset", u64), ("size", u64)]


class vfio_region_info_cap_sparse_mmap(ctypes.Structure):
    _fields_ = [("header", vfio_info_cap_header), ("nr_areas", u32), ("reserved", u32)]
    # followed by nr_areas x vfio_region_sparse_mmap_area


class vfio_region_info_cap_type(ctypes.Structure):
    _fields_ = [("header", vfio_info_cap_header), ("type", u32), ("subtype", u32)]


VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 1 << 31
VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xFFFF
VFIO_REGION_TYPE_GFX = 1
VFIO_REGION_TYPE_CCW = 2
VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3
VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION = 1
VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG = 2
VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG = 3
VFIO_REGION_SUBTYPE_NVIDIA_NVLINK2_RAM = 1
VFIO_REGION_SUBTYPE_IBM_NVLINK2_ATSD = 1
VFIO_REGION_SUBTYPE_GFX_EDID = 1
VFIO_REGION_SUBTYPE_CCW_ASYNC_CMD = 1
VFIO_REGION_SUBTYPE_CCW_SCHIB = 2
VFIO_REGION_SUBTYPE_CCW_CRW = 3
VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED = 1


class vfio_region_gfx_edid(ctypes.Structure):
    _fields_ = [("edid_offset", u32), ("edid_max_size", u32), ("edid_size", u32),
                ("max_xres", u32), ("max_yres", u32), ("link_state", u32)]


VFIO_DEVICE_GFX_LINK_STATE_UP = 1
VFIO_DEVICE_GFX_LINK_STATE_DOWN = 2


class vfio_region_info_cap_nvlink2_ssatgt(ctypes.Structure):
    _fields_ = [("header", vfio_info_cap_header), ("tgt", u64)]


class vfio_region_info_cap_nvlink2_lnkspd(ctypes.Structure):
    _fields_ = [("header", vfio_info_cap_header), ("link_speed", u32), ("__pad", u32)]


class vfio_device_migration_info(ctypes.Structure):
    """The v1 migration region header (deprecated, kept for completeness)."""
    _fields_ = [("device_state", u32), ("reserved", u32), ("pending_bytes", u64),
                ("data_offset", u64), ("data_size", u64)]


VFIO_DEVICE_STATE_V1_STOP = 0
VFIO_DEVICE_STATE_V1_RUNNING = 1 << 0
VFIO_DEVICE_STATE_V1_SAVING = 1 << 1
VFIO_DEVICE_STATE_V1_RESUMING = 1 << 2

# fixed vfio-pci region and IRQ indexes
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9

VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

VFIO_CCW_CONFIG_REGION_INDEX = 0
VFIO_CCW_NUM_REGIONS = 1
VFIO_CCW_IO_IRQ_INDEX = 0
VFIO_CCW_CRW_IRQ_INDEX = 1
VFIO_CCW_REQ_IRQ_INDEX = 2
VFIO_CCW_NUM_IRQS = 3
VFIO_AP_REQ_IRQ_INDEX = 0
VFIO_AP_NUM_IRQS = 1

#: vfio-pci places region N at file offset N << 40 (VFIO_PCI_OFFSET_SHIFT in the kernel,
#: not uapi: userspace must use the offset GET_REGION_INFO reports; replay mimics it).
VFIO_PCI_OFFSET_SHIFT = 40


# ---- interrupts ----------------------------------------------------------------------
class vfio_irq_info(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("index", u32), ("count", u32)]


VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3


class vfio_irq_set(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("index", u32), ("start", u32), ("count", u32)]
    # followed by data[]: u8 per vector (DATA_BOOL) or s32 per vector (DATA_EVENTFD)


VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD
VFIO_IRQ_SET_ACTION_TYPE_MASK = VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER


# ---- PCI hot reset -------------------------------------------------------------------
class _dep_dev_id(ctypes.Union):
    _fields_ = [("group_id", u32), ("devid", u32)]


class vfio_pci_dependent_device(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("u", _dep_dev_id), ("segment", u16), ("bus", u8), ("devfn", u8)]


VFIO_PCI_DEVID_OWNED = 0
VFIO_PCI_DEVID_NOT_OWNED = -1 & 0xFFFFFFFF


class vfio_pci_hot_reset_info(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("count", u32)]
    # followed by count x vfio_pci_dependent_device


VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1


class vfio_pci_hot_reset(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("count", u32)]
    # followed by count x s32 group fds


# ---- graphics, ioeventfd -------------------------------------------------------------
class _plane_id(ctypes.Union):
    _fields_ = [("region_index", u32), ("dmabuf_id", u32)]


class vfio_device_gfx_plane_info(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("argsz", u32), ("flags", u32), ("drm_plane_type", u32), ("drm_format", u32),
                ("drm_format_mod", u64), ("width", u32), ("height", u32), ("stride", u32),
                ("size", u32), ("x_pos", u32), ("y_pos", u32), ("x_hot", u32), ("y_hot", u32),
                ("u", _plane_id), ("reserved", u32)]


VFIO_GFX_PLANE_TYPE_PROBE = 1 << 0
VFIO_GFX_PLANE_TYPE_DMABUF = 1 << 1
VFIO_GFX_PLANE_TYPE_REGION = 1 << 2


class vfio_device_ioeventfd(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("offset", u64), ("data", u64), ("fd", s32),
                ("reserved", u32)]


VFIO_DEVICE_IOEVENTFD_8 = 1 << 0
VFIO_DEVICE_IOEVENTFD_16 = 1 << 1
VFIO_DEVICE_IOEVENTFD_32 = 1 << 2
VFIO_DEVICE_IOEVENTFD_64 = 1 << 3
VFIO_DEVICE_IOEVENTFD_SIZE_MASK = 0xF


# ---- device features -----------------------------------------------------------------
class vfio_device_feature(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32)]
    # followed by the feature's data


VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18

VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0
VFIO_DEVICE_FEATURE_MIGRATION = 1
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5
VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6
VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7
VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8
VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9
VFIO_DEVICE_FEATURE_BUS_MASTER = 10


class vfio_device_feature_migration(ctypes.Structure):
    _fields_ = [("flags", u64)]


VFIO_MIGRATION_STOP_COPY = 1 << 0
VFIO_MIGRATION_P2P = 1 << 1
VFIO_MIGRATION_PRE_COPY = 1 << 2


class vfio_device_feature_mig_state(ctypes.Structure):
    _fields_ = [("device_state", u32), ("data_fd", s32)]


# enum vfio_device_mig_state
VFIO_DEVICE_STATE_ERROR = 0
VFIO_DEVICE_STATE_STOP = 1
VFIO_DEVICE_STATE_RUNNING = 2
VFIO_DEVICE_STATE_STOP_COPY = 3
VFIO_DEVICE_STATE_RESUMING = 4
VFIO_DEVICE_STATE_RUNNING_P2P = 5
VFIO_DEVICE_STATE_PRE_COPY = 6
VFIO_DEVICE_STATE_PRE_COPY_P2P = 7
VFIO_DEVICE_STATE_NR = 8


class vfio_precopy_info(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("initial_bytes", u64), ("dirty_bytes", u64)]


class vfio_device_low_power_entry_with_wakeup(ctypes.Structure):
    _fields_ = [("wakeup_eventfd", s32), ("reserved", u32)]


class vfio_device_feature_dma_logging_control(ctypes.Structure):
    _fields_ = [("page_size", u64), ("num_ranges", u32), ("__reserved", u32), ("ranges", u64)]


class vfio_device_feature_dma_logging_range(ctypes.Structure):
    _fields_ = [("iova", u64), ("length", u64)]


class vfio_device_feature_dma_logging_report(ctypes.Structure):
    _fields_ = [("iova", u64), ("length", u64), ("page_size", u64), ("bitmap", u64)]


class vfio_device_feature_mig_data_size(ctypes.Structure):
    _fields_ = [("stop_copy_length", u64)]


class vfio_device_feature_bus_master(ctypes.Structure):
    _fields_ = [("op", u32)]


VFIO_DEVICE_FEATURE_CLEAR_MASTER = 0
VFIO_DEVICE_FEATURE_SET_MASTER = 1


# ---- iommufd binding of a cdev -------------------------------------------------------
class vfio_device_bind_iommufd(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("iommufd", s32), ("out_devid", u32)]


class vfio_device_attach_iommufd_pt(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("pt_id", u32)]


class vfio_device_detach_iommufd_pt(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32)]


# ---- type1 IOMMU ---------------------------------------------------------------------
class vfio_iommu_type1_info(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("iova_pgsizes", u64), ("cap_offset", u32),
                ("pad", u32)]


VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3


class vfio_iova_range(ctypes.Structure):
    _fields_ = [("start", u64), ("end", u64)]


class vfio_iommu_type1_info_cap_iova_range(ctypes.Structure):
    _fields_ = [("header", vfio_info_cap_header), ("nr_iovas", u32), ("reserved", u32)]
    # followed by nr_iovas x vfio_iova_range


class vfio_iommu_type1_info_cap_migration(ctypes.Structure):
    _fields_ = [("header", vfio_info_cap_header), ("flags", u32), ("pgsize_bitmap", u64),
                ("max_dirty_bitmap_size", u64)]


class vfio_iommu_type1_info_dma_avail(ctypes.Structure):
    _fields_ = [("header", vfio_info_cap_header), ("avail", u32)]


class vfio_iommu_type1_dma_map(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("vaddr", u64), ("iova", u64), ("size", u64)]


VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2


class vfio_bitmap(ctypes.Structure):
    _fields_ = [("pgsize", u64), ("size", u64), ("data", u64)]


class vfio_iommu_type1_dma_unmap(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("iova", u64), ("size", u64)]
    # followed by an optional vfio_bitmap (GET_DIRTY_BITMAP)


VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2


class vfio_iommu_type1_dirty_bitmap(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32)]
    # followed by vfio_iommu_type1_dirty_bitmap_get for GET_BITMAP


VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0
VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1
VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2


class vfio_iommu_type1_dirty_bitmap_get(ctypes.Structure):
    _fields_ = [("iova", u64), ("size", u64), ("bitmap", vfio_bitmap)]


# ---- sPAPR / EEH (for completeness of the ABI; not used on x86) -----------------------
class vfio_iommu_spapr_tce_ddw_info(ctypes.Structure):
    _fields_ = [("pgsizes", u64), ("max_dynamic_windows_supported", u32), ("levels", u32)]


class vfio_iommu_spapr_tce_info(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("dma32_window_start", u32),
                ("dma32_window_size", u32), ("ddw", vfio_iommu_spapr_tce_ddw_info)]


VFIO_IOMMU_SPAPR_INFO_DDW = 1 << 0


class vfio_eeh_pe_err(ctypes.Structure):
    _fields_ = [("type", u32), ("func", u32), ("addr", u64), ("mask", u64)]


class _eeh_u(ctypes.Union):
    _fields_ = [("err", vfio_eeh_pe_err)]


class vfio_eeh_pe_op(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("argsz", u32), ("flags", u32), ("op", u32), ("u", _eeh_u)]


class vfio_iommu_spapr_register_memory(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("vaddr", u64), ("size", u64)]


class vfio_iommu_spapr_tce_create(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("page_shift", u32), ("__resv1", u32),
                ("window_size", u64), ("levels", u32), ("__resv2", u32), ("start_addr", u64)]


class vfio_iommu_spapr_tce_remove(ctypes.Structure):
    _fields_ = [("argsz", u32), ("flags", u32), ("start_addr", u64)]


# --------------------------------------------------------------------------------------
# linux/iommufd.h
# --------------------------------------------------------------------------------------
IOMMUFD_TYPE = ord(";")
IOMMUFD_CMD_BASE = 0x80
IOMMU_DESTROY = IO(IOMMUFD_TYPE, 0x80)
IOMMU_IOAS_ALLOC = IO(IOMMUFD_TYPE, 0x81)
IOMMU_IOAS_ALLOW_IOVAS = IO(IOMMUFD_TYPE, 0x82)
IOMMU_IOAS_COPY = IO(IOMMUFD_TYPE, 0x83)
IOMMU_IOAS_IOVA_RANGES = IO(IOMMUFD_TYPE, 0x84)
IOMMU_IOAS_MAP = IO(IOMMUFD_TYPE, 0x85)
IOMMU_IOAS_UNMAP = IO(IOMMUFD_TYPE, 0x86)
IOMMU_OPTION = IO(IOMMUFD_TYPE, 0x87)
IOMMU_VFIO_IOAS = IO(IOMMUFD_TYPE, 0x88)
IOMMU_HWPT_ALLOC = IO(IOMMUFD_TYPE, 0x89)
IOMMU_GET_HW_INFO = IO(IOMMUFD_TYPE, 0x8A)
IOMMU_HWPT_SET_DIRTY_TRACKING = IO(IOMMUFD_TYPE, 0x8B)
IOMMU_HWPT_GET_DIRTY_BITMAP = IO(IOMMUFD_TYPE, 0x8C)
IOMMU_HWPT_INVALIDATE = IO(IOMMUFD_TYPE, 0x8D)
IOMMU_FAULT_QUEUE_ALLOC = IO(IOMMUFD_TYPE, 0x8E)


class iommu_destroy(ctypes.Structure):
    _fields_ = [("size", u32), ("id", u32)]


class iommu_ioas_alloc(ctypes.Structure):
    _fields_ = [("size", u32), ("flags", u32), ("out_ioas_id", u32)]


class iommu_iova_range(ctypes.Structure):
    _fields_ = [("start", u64), ("last", u64)]


class iommu_ioas_iova_ranges(ctypes.Structure):
    _fields_ = [("size", u32), ("ioas_id", u32), ("num_iovas", u32), ("__reserved", u32),
                ("allowed_iovas", u64), ("out_iova_alignment", u64)]


class iommu_ioas_allow_iovas(ctypes.Structure):
    _fields_ = [("size", u32), ("ioas_id", u32), ("num_iovas", u32), ("__reserved", u32),
                ("allowed_iovas", u64)]


IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2


class iommu_ioas_map(ctypes.Structure):
    _fields_ = [("size", u32), ("flags", u32), ("ioas_id", u32), ("__reserved", u32),
                ("user_va", u64), ("length", u64), ("iova", u64)]


class iommu_ioas_copy(ctypes.Structure):
    _fields_ = [("size", u32), ("flags", u32), ("dst_ioas_id", u32), ("src_ioas_id", u32),
                ("length", u64), ("dst_iova", u64), ("src_iova", u64)]


class iommu_ioas_unmap(ctypes.Structure):
    _fields_ = [("size", u32), ("ioas_id", u32), ("iova", u64), ("length", u64)]


IOMMU_OPTION_RLIMIT_MODE = 0
IOMMU_OPTION_HUGE_PAGES = 1
IOMMU_OPTION_OP_SET = 0
IOMMU_OPTION_OP_GET = 1


class iommu_option(ctypes.Structure):
    _fields_ = [("size", u32), ("option_id", u32), ("op", u16), ("__reserved", u16),
                ("object_id", u32), ("val64", u64)]


IOMMU_VFIO_IOAS_GET = 0
IOMMU_VFIO_IOAS_SET = 1
IOMMU_VFIO_IOAS_CLEAR = 2


class iommu_vfio_ioas(ctypes.Structure):
    _fields_ = [("size", u32), ("ioas_id", u32), ("op", u16), ("__reserved", u16)]


IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
IOMMU_HWPT_DATA_NONE = 0
IOMMU_HWPT_DATA_VTD_S1 = 1


class iommu_hwpt_vtd_s1(ctypes.Structure):
    _fields_ = [("flags", u64), ("pgtbl_addr", u64), ("addr_width", u32), ("__reserved", u32)]


class iommu_hwpt_alloc(ctypes.Structure):
    _fields_ = [("size", u32), ("flags", u32), ("dev_id", u32), ("pt_id", u32),
                ("out_hwpt_id", u32), ("__reserved", u32), ("data_type", u32), ("data_len", u32),
                ("data_uptr", u64), ("fault_id", u32), ("__reserved2", u32)]


IOMMU_HW_INFO_TYPE_NONE = 0
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0


class iommu_hw_info_vtd(ctypes.Structure):
    _fields_ = [("flags", u32), ("__reserved", u32), ("cap_reg", u64), ("ecap_reg", u64)]


class iommu_hw_info(ctypes.Structure):
    _fields_ = [("size", u32), ("flags", u32), ("dev_id", u32), ("data_len", u32),
                ("data_uptr", u64), ("out_data_type", u32), ("out_max_pasid_log2", u8),
                ("__reserved", u8 * 3), ("out_capabilities", u64)]


class iommu_hwpt_set_dirty_tracking(ctypes.Structure):
    _fields_ = [("size", u32), ("flags", u32), ("hwpt_id", u32), ("__reserved", u32)]


IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1


class iommu_hwpt_get_dirty_bitmap(ctypes.Structure):
    _fields_ = [("size", u32), ("hwpt_id", u32), ("flags", u32), ("__reserved", u32),
                ("iova", u64), ("length", u64), ("page_size", u64), ("data", u64)]


# --------------------------------------------------------------------------------------
# The raw call and the variable-length builders
# --------------------------------------------------------------------------------------
def ioctl(fd: int, request: int, arg=0, what: str = "") -> int:
    """The toolkit's one ``fcntl.ioctl``.

    ``arg`` is an int, or a mutable buffer (``bytearray``/``ctypes`` object) the
    kernel reads and fills in place.  Returns the ioctl's int result; raises
    :class:`VfioError` with the kernel's errno and ``what`` was being done.
    """
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        # mutate_flag=True: the kernel writes back into the caller's buffer; with a
        # bytes-like immutable object fcntl would return a copy instead of the result
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as e:
        raise VfioError(e.errno if e.errno is not None else errno.EIO, what or f"ioctl {request:#x}") from None


def open_node(path: str, flags: int, what: str, hints: dict | None = None) -> int:
    """The toolkit's one ``open(2)`` of a VFIO or iommufd node (a group, the
    container, ``/dev/iommu``, a device cdev): returns the fd.

    Raises :class:`VfioError` with the kernel's errno and ``what`` was being done
    (name the node in it), followed by ``hints[errno]`` when the caller has one
    for that errno (why EBUSY or EACCES happens on this kind of node).
    """
    try:
        return os.open(path, flags)
    except OSError as e:
        err = e.errno if e.errno is not None else errno.EIO
        raise VfioError(err, what + (hints or {}).get(err, "")) from None


def build_irq_set(flags: int, index: int, start: int, count: int, data: bytes = b"") -> bytearray:
    """A complete ``struct vfio_irq_set`` (header + data), with argsz covering both."""
    hdr = vfio_irq_set(ctypes.sizeof(vfio_irq_set) + len(data), flags, index, start, count)
    return bytearray(bytes(hdr) + bytes(data))


def irq_set_data_eventfds(fds) -> bytes:
    """DATA_EVENTFD payload: one s32 per vector; -1 de-assigns that vector."""
    return struct.pack(f"<{len(fds)}i", *fds)


def irq_set_data_bools(values) -> bytes:
    """DATA_BOOL payload: one u8 per vector."""
    return bytes(1 if v else 0 for v in values)


def build_hot_reset(group_fds, flags: int = 0) -> bytearray:
    """A complete ``struct vfio_pci_hot_reset`` with its list of group (or iommufd) fds."""
    data = struct.pack(f"<{len(group_fds)}i", *group_fds)
    hdr = vfio_pci_hot_reset(ctypes.sizeof(vfio_pci_hot_reset) + len(data), flags, len(group_fds))
    return bytearray(bytes(hdr) + data)


def info_buffer(struct_type, argsz: int, **fields) -> bytearray:
    """A zeroed info buffer of ``argsz`` bytes starting with ``struct_type(argsz=argsz, **fields)``."""
    head = struct_type(argsz=argsz, **fields)
    buf = bytearray(max(argsz, ctypes.sizeof(struct_type)))
    buf[:ctypes.sizeof(struct_type)] = bytes(head)
    return buf


#: An info answer larger than this is taken as a broken kernel or backend, not followed.
MAX_INFO_ARGSZ = 1 << 20


def variable_info(call, fixed_type, what: str) -> bytes:
    """The one retry loop of variable-length VFIO info calls (device, region and
    IOMMU info): ``call(argsz)`` returns the kernel's answer for a buffer of
    ``argsz`` bytes; when its ``argsz`` field asks for more (a capability chain
    follows the fixed part), ask again with that size.  Bounded: a few rounds,
    and an argsz above :data:`MAX_INFO_ARGSZ` is refused (EOVERFLOW)."""
    argsz = ctypes.sizeof(fixed_type)
    for _ in range(4):
        buf = call(argsz)
        need = fixed_type.from_buffer_copy(buf).argsz
        if need <= argsz:
            return buf
        if need > MAX_INFO_ARGSZ:
            raise VfioError(errno.EOVERFLOW, f"{what}: kernel asks for an implausible argsz {need}")
        argsz = need
    raise VfioError(errno.EAGAIN, f"{what}: argsz kept growing")


class RawCap(Value):
    """One entry of a VFIO info capability chain: id, version, offset in the
    buffer and the bytes from its header up to the next capability (or buffer end).
    A frozen value (:mod:`vfio._value`: the fd layer is imported by vfio-inspect's
    listing, which does without :mod:`dataclasses`)."""
    id: int
    version: int
    offset: int
    data: bytes

    def __init__(self, id: int, version: int, offset: int, data: bytes):
        self.__dict__.update(id=id, version=version, offset=offset, data=data)


#: A chain longer than this is treated as corrupt (the kernel emits a handful).
MAX_CAPS = 64


def iter_caps(buf: bytes, cap_offset: int, what: str, min_offset: int = 0) -> Iterator[RawCap]:
    """Walk a ``vfio_info_cap_header`` chain in an info buffer.

    Offsets are from the start of the buffer (as the kernel writes them).  The
    walk is bounded by :data:`MAX_CAPS`, refuses offsets before ``min_offset``
    (the fixed part of the info struct), past the buffer, misaligned, or already
    visited (a loop), raising :class:`ValueError` that names the offset.
    """
    seen = set()
    off = cap_offset
    hdr_size = ctypes.sizeof(vfio_info_cap_header)
    while off:
        if len(seen) >= MAX_CAPS:
            raise InvalidValue(f"{what}: capability chain longer than {MAX_CAPS} entries")
        if off in seen:
            raise InvalidValue(f"{what}: capability chain loops back to offset {off:#x}")
        if off < min_offset or off % 4 or off + hdr_size > len(buf):
            raise InvalidValue(f"{what}: capability at offset {off:#x} is outside the "
                                 f"{len(buf)}-byte info buffer (fixed part {min_offset:#x} bytes)")
        seen.add(off)
        hdr = vfio_info_cap_header.from_buffer_copy(buf, off)
        end = hdr.next if hdr.next > off else len(buf)
        yield RawCap(hdr.id, hdr.version, off, bytes(buf[off:min(end, len(buf))]))
        off = hdr.next


def check_cap_size(cap: RawCap, struct_type, what: str) -> None:
    if len(cap.data) < ctypes.sizeof(struct_type):
        raise InvalidValue(f"{what}: capability {cap.id} at offset {cap.offset:#x} is "
                             f"{len(cap.data)} bytes, shorter than {struct_type.__name__}")
