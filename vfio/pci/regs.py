"""PCI configuration-space register offsets, bit masks and capability IDs.

Every number here is spelled as in the kernel's ``include/uapi/linux/pci_regs.h``
(6.12) with the ``PCI_`` prefix dropped, so a name can be grepped in both
places.  This is the one module that holds them: the decoder
(:mod:`vfio.pci.config`), the virtual config space (:mod:`vfio.pci.vconfig`)
and the passthrough model import from here rather than re-spelling offsets.

Layout reminder: the first 64 bytes are the standard header (type 0 for
endpoints, type 1 for PCI-to-PCI bridges, type 2 for CardBus bridges); the
standard capability list lives in the rest of the first 256 bytes; PCI Express
and PCI-X 2.0 devices have 4096 bytes with the extended capability list
starting at 0x100.
"""

from __future__ import annotations

from enum import Enum

CFG_SPACE_SIZE = 256
CFG_SPACE_EXP_SIZE = 4096
STD_HEADER_SIZEOF = 64
STD_NUM_BARS = 6

# ---- header, common part ----------------------------------------------------
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
COMMAND_IO = 0x1
COMMAND_MEMORY = 0x2
COMMAND_MASTER = 0x4
COMMAND_SPECIAL = 0x8
COMMAND_INVALIDATE = 0x10
COMMAND_VGA_PALETTE = 0x20
COMMAND_PARITY = 0x40
COMMAND_WAIT = 0x80
COMMAND_SERR = 0x100
COMMAND_FAST_BACK = 0x200
COMMAND_INTX_DISABLE = 0x400

STATUS = 0x06
STATUS_IMM_READY = 0x01
STATUS_INTERRUPT = 0x08
STATUS_CAP_LIST = 0x10
STATUS_66MHZ = 0x20
STATUS_UDF = 0x40
STATUS_FAST_BACK = 0x80
STATUS_PARITY = 0x100
STATUS_DEVSEL_MASK = 0x600
STATUS_SIG_TARGET_ABORT = 0x800
STATUS_REC_TARGET_ABORT = 0x1000
STATUS_REC_MASTER_ABORT = 0x2000
STATUS_SIG_SYSTEM_ERROR = 0x4000
STATUS_DETECTED_PARITY = 0x8000
#: The status bits a device sets and software clears by writing 1.
STATUS_W1C = (STATUS_PARITY | STATUS_SIG_TARGET_ABORT | STATUS_REC_TARGET_ABORT
              | STATUS_REC_MASTER_ABORT | STATUS_SIG_SYSTEM_ERROR | STATUS_DETECTED_PARITY)

CLASS_REVISION = 0x08
REVISION_ID = 0x08
CLASS_PROG = 0x09
CLASS_DEVICE = 0x0A
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
HEADER_TYPE_MASK = 0x7F
HEADER_TYPE_NORMAL = 0
HEADER_TYPE_BRIDGE = 1
HEADER_TYPE_CARDBUS = 2
HEADER_TYPE_MFD = 0x80
BIST = 0x0F

BASE_ADDRESS_0 = 0x10
BASE_ADDRESS_SPACE_IO = 0x01
BASE_ADDRESS_MEM_TYPE_MASK = 0x06
BASE_ADDRESS_MEM_TYPE_32 = 0x00
BASE_ADDRESS_MEM_TYPE_1M = 0x02
BASE_ADDRESS_MEM_TYPE_64 = 0x04
BASE_ADDRESS_MEM_PREFETCH = 0x08
BASE_ADDRESS_MEM_MASK = 0xFFFFFFF0
BASE_ADDRESS_IO_MASK = 0xFFFFFFFC
#: The address bits of a 64-bit memory BAR (both dwords).
BASE_ADDRESS_MEM64_MASK = 0xFFFFFFFFFFFFFFF0


class ValueEnum(str, Enum):
    """An enum of strings that is its value everywhere a string is: ``==``, hashing, JSON,
    ``str()`` and f-strings (what ``enum.StrEnum`` of Python 3.11 does)."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class BarKind(ValueEnum):
    """What a BAR decodes: I/O space, 32-bit or 64-bit memory (the register's bits 2:0).

    ``bar.kind == "mem64"`` holds and JSON prints the value.  The obsolete
    "below 1 MiB" memory type is a ``MEM32``.
    """
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"

    @classmethod
    def of_register(cls, raw: int) -> "BarKind | None":
        """The kind a BAR register's low bits say; None for the reserved memory type 3."""
        if raw & BASE_ADDRESS_SPACE_IO:
            return cls.IO
        mtype = raw & BASE_ADDRESS_MEM_TYPE_MASK
        if mtype == BASE_ADDRESS_MEM_TYPE_64:
            return cls.MEM64
        if mtype in (BASE_ADDRESS_MEM_TYPE_32, BASE_ADDRESS_MEM_TYPE_1M):
            return cls.MEM32
        return None

    @property
    def slots(self) -> int:
        """BAR registers it takes (a 64-bit BAR uses the next one for its upper half)."""
        return 2 if self is BarKind.MEM64 else 1

    @property
    def width(self) -> int:
        """Bytes of its register(s)."""
        return 4 * self.slots

    @property
    def address_mask(self) -> int:
        """The address bits of its register(s): everything above the read-only flag bits."""
        return {BarKind.IO: BASE_ADDRESS_IO_MASK, BarKind.MEM32: BASE_ADDRESS_MEM_MASK,
                BarKind.MEM64: BASE_ADDRESS_MEM64_MASK}[self]

    def flag_bits(self, prefetchable: bool = False) -> int:
        """The register's read-only low bits for this kind (space, memory type, prefetchable)."""
        if self is BarKind.IO:
            return BASE_ADDRESS_SPACE_IO
        bits = BASE_ADDRESS_MEM_TYPE_64 if self is BarKind.MEM64 else BASE_ADDRESS_MEM_TYPE_32
        return bits | (BASE_ADDRESS_MEM_PREFETCH if prefetchable else 0)

    @property
    def size_limits(self) -> tuple[int, int]:
        """Smallest and largest size a BAR of this kind can have (PCI 3.0 6.2.5.1)."""
        return {BarKind.IO: (4, 256), BarKind.MEM32: (16, 1 << 31), BarKind.MEM64: (16, 1 << 63)}[self]

# ---- header type 0 -------------------------------------------------------------
CARDBUS_CIS = 0x28
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
ROM_ADDRESS_ENABLE = 0x01
ROM_ADDRESS_MASK = 0xFFFFF800
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
MIN_GNT = 0x3E
MAX_LAT = 0x3F

# ---- header type 1 (PCI-to-PCI bridge) -------------------------------------------
PRIMARY_BUS = 0x18
SECONDARY_BUS = 0x19
SUBORDINATE_BUS = 0x1A
SEC_LATENCY_TIMER = 0x1B
IO_BASE = 0x1C
IO_LIMIT = 0x1D
IO_RANGE_TYPE_MASK = 0x0F
IO_RANGE_TYPE_32 = 0x01
SEC_STATUS = 0x1E
MEMORY_BASE = 0x20
MEMORY_LIMIT = 0x22
PREF_MEMORY_BASE = 0x24
PREF_MEMORY_LIMIT = 0x26
PREF_RANGE_TYPE_MASK = 0x0F
PREF_RANGE_TYPE_64 = 0x01
PREF_BASE_UPPER32 = 0x28
PREF_LIMIT_UPPER32 = 0x2C
IO_BASE_UPPER16 = 0x30
IO_LIMIT_UPPER16 = 0x32
ROM_ADDRESS1 = 0x38
BRIDGE_CONTROL = 0x3E

# ---- header type 2 (CardBus bridge): only what the decoder needs -------------------
CB_CAPABILITY_LIST = 0x14

# ---- standard capability list --------------------------------------------------
CAP_LIST_ID = 0
CAP_LIST_NEXT = 1
CAP_FLAGS = 2

CAP_ID_PM = 0x01
CAP_ID_AGP = 0x02
CAP_ID_VPD = 0x03
CAP_ID_SLOTID = 0x04
CAP_ID_MSI = 0x05
CAP_ID_CHSWP = 0x06
CAP_ID_PCIX = 0x07
CAP_ID_HT = 0x08
CAP_ID_VNDR = 0x09
CAP_ID_DBG = 0x0A
CAP_ID_CCRC = 0x0B
CAP_ID_SHPC = 0x0C
CAP_ID_SSVID = 0x0D
CAP_ID_AGP3 = 0x0E
CAP_ID_SECDEV = 0x0F
CAP_ID_EXP = 0x10
CAP_ID_MSIX = 0x11
CAP_ID_SATA = 0x12
CAP_ID_AF = 0x13
CAP_ID_EA = 0x14

#: Names of standard capability IDs (IDs not listed stay numbers).
CAP_NAMES: dict[int, str] = {
    CAP_ID_PM: "Power Management",
    CAP_ID_AGP: "AGP",
    CAP_ID_VPD: "Vital Product Data",
    CAP_ID_SLOTID: "Slot Identification",
    CAP_ID_MSI: "MSI",
    CAP_ID_CHSWP: "CompactPCI HotSwap",
    CAP_ID_PCIX: "PCI-X",
    CAP_ID_HT: "HyperTransport",
    CAP_ID_VNDR: "Vendor-Specific",
    CAP_ID_DBG: "Debug port",
    CAP_ID_CCRC: "CompactPCI Central Resource Control",
    CAP_ID_SHPC: "PCI Standard Hot-Plug Controller",
    CAP_ID_SSVID: "Bridge Subsystem Vendor/Device ID",
    CAP_ID_AGP3: "AGP Target PCI-PCI bridge",
    CAP_ID_SECDEV: "Secure Device",
    CAP_ID_EXP: "PCI Express",
    CAP_ID_MSIX: "MSI-X",
    CAP_ID_SATA: "SATA Data/Index Configuration",
    CAP_ID_AF: "PCI Advanced Features",
    CAP_ID_EA: "Enhanced Allocation",
}

# Power Management
PM_PMC = 2
PM_CAP_VER_MASK = 0x0007
PM_CAP_PME_CLOCK = 0x0008
PM_CAP_DSI = 0x0020
PM_CAP_AUX_POWER = 0x01C0
PM_CAP_D1 = 0x0200
PM_CAP_D2 = 0x0400
PM_CAP_PME_MASK = 0xF800
PM_CAP_PME_SHIFT = 11
PM_CTRL = 4
PM_CTRL_STATE_MASK = 0x0003
PM_CTRL_NO_SOFT_RESET = 0x0008
PM_CTRL_PME_ENABLE = 0x0100
PM_CTRL_DATA_SEL_MASK = 0x1E00
PM_CTRL_DATA_SCALE_MASK = 0x6000
PM_CTRL_PME_STATUS = 0x8000
PM_PPB_EXTENSIONS = 6
PM_DATA_REGISTER = 7
PM_SIZEOF = 8
#: Aux current in mA by the 3-bit PMC field (PCI PM 1.2, table 3-2).
PM_AUX_CURRENT_MA = (0, 55, 100, 160, 220, 270, 320, 375)

# MSI
MSI_FLAGS = 0x02
MSI_FLAGS_ENABLE = 0x0001
MSI_FLAGS_QMASK = 0x000E
MSI_FLAGS_QSIZE = 0x0070
MSI_FLAGS_64BIT = 0x0080
MSI_FLAGS_MASKBIT = 0x0100
MSI_ADDRESS_LO = 0x04
MSI_ADDRESS_LO_MASK = 0xFFFFFFFC      # bits 1:0 are reserved (dword-aligned message address)
MSI_ADDRESS_HI = 0x08
MSI_DATA_32 = 0x08
MSI_MASK_32 = 0x0C
MSI_PENDING_32 = 0x10
MSI_DATA_64 = 0x0C
MSI_MASK_64 = 0x10
MSI_PENDING_64 = 0x14

# MSI-X
MSIX_FLAGS = 2
MSIX_FLAGS_QSIZE = 0x07FF
MSIX_FLAGS_MASKALL = 0x4000
MSIX_FLAGS_ENABLE = 0x8000
MSIX_TABLE = 4
MSIX_TABLE_BIR = 0x00000007
MSIX_TABLE_OFFSET = 0xFFFFFFF8
MSIX_PBA = 8
MSIX_PBA_BIR = 0x00000007
MSIX_PBA_OFFSET = 0xFFFFFFF8
CAP_MSIX_SIZEOF = 12
MSIX_ENTRY_SIZE = 16

# Vital Product Data
VPD_ADDR = 2
VPD_ADDR_F = 0x8000
VPD_DATA = 4
CAP_VPD_SIZEOF = 8

# Slot Identification
SID_ESR = 2
SID_ESR_NSLOTS = 0x1F
SID_ESR_FIC = 0x20
SID_CHASSIS_NR = 3

# Bridge subsystem vendor/device ID
SSVID_VENDOR_ID = 4
SSVID_DEVICE_ID = 6

# Advanced Features
AF_LENGTH = 2
AF_CAP = 3
AF_CAP_TP = 0x01
AF_CAP_FLR = 0x02
AF_CTRL = 4
AF_STATUS = 5
CAP_AF_SIZEOF = 6

# Enhanced Allocation
EA_NUM_ENT = 2
EA_NUM_ENT_MASK = 0x3F

# SATA (not in pci_regs.h: from the SATA AHCI spec, section 2.3 / lspci's ls-caps.c)
SATA_REVISION = 2
SATA_BAR = 4
SATA_BARLOC_MASK = 0x0000000F
SATA_BAROFST_MASK = 0x00FFFFF0
SATA_SIZEOF = 8

# Vendor-specific: byte 2 is the capability length in bytes
VNDR_LENGTH = 2

# PCI Express capability
EXP_FLAGS = 0x02
EXP_FLAGS_VERS = 0x000F
EXP_FLAGS_TYPE = 0x00F0
EXP_FLAGS_SLOT = 0x0100
EXP_FLAGS_IRQ = 0x3E00
EXP_TYPE_ENDPOINT = 0x0
EXP_TYPE_LEG_END = 0x1
EXP_TYPE_ROOT_PORT = 0x4
EXP_TYPE_UPSTREAM = 0x5
EXP_TYPE_DOWNSTREAM = 0x6
EXP_TYPE_PCI_BRIDGE = 0x7
EXP_TYPE_PCIE_BRIDGE = 0x8
EXP_TYPE_RC_END = 0x9
EXP_TYPE_RC_EC = 0xA
#: Device/port type names, spelled as lspci prints them.
EXP_TYPE_NAMES: dict[int, str] = {
    EXP_TYPE_ENDPOINT: "Endpoint",
    EXP_TYPE_LEG_END: "Legacy Endpoint",
    EXP_TYPE_ROOT_PORT: "Root Port",
    EXP_TYPE_UPSTREAM: "Upstream Port",
    EXP_TYPE_DOWNSTREAM: "Downstream Port",
    EXP_TYPE_PCI_BRIDGE: "PCI-Express to PCI/PCI-X Bridge",
    EXP_TYPE_PCIE_BRIDGE: "PCI/PCI-X to PCI-Express Bridge",
    EXP_TYPE_RC_END: "Root Complex Integrated Endpoint",
    EXP_TYPE_RC_EC: "Root Complex Event Collector",
}
EXP_DEVCAP = 0x04
EXP_DEVCAP_PAYLOAD = 0x00000007
EXP_DEVCAP_PHANTOM = 0x00000018
EXP_DEVCAP_EXT_TAG = 0x00000020
EXP_DEVCAP_L0S = 0x000001C0
EXP_DEVCAP_L1 = 0x00000E00
EXP_DEVCAP_RBER = 0x00008000
EXP_DEVCAP_PWR_VAL = 0x03FC0000
EXP_DEVCAP_PWR_SCL = 0x0C000000
EXP_DEVCAP_FLR = 0x10000000
EXP_DEVCTL = 0x08
EXP_DEVCTL_CERE = 0x0001
EXP_DEVCTL_NFERE = 0x0002
EXP_DEVCTL_FERE = 0x0004
EXP_DEVCTL_URRE = 0x0008
EXP_DEVCTL_RELAX_EN = 0x0010
EXP_DEVCTL_PAYLOAD = 0x00E0
EXP_DEVCTL_EXT_TAG = 0x0100
EXP_DEVCTL_PHANTOM = 0x0200
EXP_DEVCTL_AUX_PME = 0x0400
EXP_DEVCTL_NOSNOOP_EN = 0x0800
EXP_DEVCTL_READRQ = 0x7000
EXP_DEVCTL_BCR_FLR = 0x8000
EXP_DEVSTA = 0x0A
EXP_DEVSTA_CED = 0x0001
EXP_DEVSTA_NFED = 0x0002
EXP_DEVSTA_FED = 0x0004
EXP_DEVSTA_URD = 0x0008
EXP_DEVSTA_AUXPD = 0x0010
EXP_DEVSTA_TRPND = 0x0020
EXP_LNKCAP = 0x0C
EXP_LNKCAP_SLS = 0x0000000F
EXP_LNKCAP_MLW = 0x000003F0
EXP_LNKCAP_ASPMS = 0x00000C00
EXP_LNKCAP_L0SEL = 0x00007000
EXP_LNKCAP_L1EL = 0x00038000
EXP_LNKCAP_CLKPM = 0x00040000
EXP_LNKCAP_SDERC = 0x00080000
EXP_LNKCAP_DLLLARC = 0x00100000
EXP_LNKCAP_LBNC = 0x00200000
EXP_LNKCAP_PN = 0xFF000000
EXP_LNKCTL = 0x10
EXP_LNKCTL_ASPMC = 0x0003
EXP_LNKCTL_RCB = 0x0008
EXP_LNKCTL_LD = 0x0010
EXP_LNKCTL_RL = 0x0020
EXP_LNKCTL_CCC = 0x0040
EXP_LNKSTA = 0x12
EXP_LNKSTA_CLS = 0x000F
EXP_LNKSTA_NLW = 0x03F0
EXP_LNKSTA_LT = 0x0800
EXP_LNKSTA_SLC = 0x1000
EXP_LNKSTA_DLLLA = 0x2000
EXP_LNKSTA_LBMS = 0x4000
EXP_LNKSTA_LABS = 0x8000
EXP_SLTCAP = 0x14
EXP_SLTCAP_ABP = 0x00000001
EXP_SLTCAP_PCP = 0x00000002
EXP_SLTCAP_MRLSP = 0x00000004
EXP_SLTCAP_AIP = 0x00000008
EXP_SLTCAP_PIP = 0x00000010
EXP_SLTCAP_HPS = 0x00000020
EXP_SLTCAP_HPC = 0x00000040
EXP_SLTCAP_SPLV = 0x00007F80
EXP_SLTCAP_SPLS = 0x00018000
EXP_SLTCAP_EIP = 0x00020000
EXP_SLTCAP_NCCS = 0x00040000
EXP_SLTCAP_PSN = 0xFFF80000
EXP_SLTCTL = 0x18
EXP_SLTSTA = 0x1A
EXP_SLTSTA_ABP = 0x0001
EXP_SLTSTA_PFD = 0x0002
EXP_SLTSTA_MRLSC = 0x0004
EXP_SLTSTA_PDC = 0x0008
EXP_SLTSTA_CC = 0x0010
EXP_SLTSTA_PDS = 0x0040
EXP_SLTSTA_DLLSC = 0x0100
EXP_RTCTL = 0x1C
EXP_RTCAP = 0x1E
EXP_RTSTA = 0x20
EXP_DEVCAP2 = 0x24
EXP_DEVCTL2 = 0x28
EXP_DEVCTL2_ARI = 0x0020
EXP_DEVSTA2 = 0x2A
EXP_LNKCAP2 = 0x2C
EXP_LNKCAP2_SLS = 0x000000FE
EXP_LNKCTL2 = 0x30
EXP_LNKCTL2_TLS = 0x000F
EXP_LNKSTA2 = 0x32
EXP_SLTCAP2 = 0x34
EXP_SLTCTL2 = 0x38
EXP_SLTSTA2 = 0x3A
#: Bytes the PCIe capability occupies: version 1 endpoints with a link, and version 2.
CAP_EXP_ENDPOINT_SIZEOF_V1 = 20
CAP_EXP_SIZEOF_V2 = 0x3C
#: Link speed encodings (LNKCAP.SLS, LNKSTA.CLS, LNKCTL2.TLS) as lspci prints them.
EXP_LINK_SPEEDS: dict[int, str] = {1: "2.5GT/s", 2: "5GT/s", 3: "8GT/s", 4: "16GT/s", 5: "32GT/s", 6: "64GT/s"}
#: Max_Payload_Size / Max_Read_Request_Size encoding: bytes = 128 << code.
EXP_PAYLOAD_BYTES = tuple(128 << n for n in range(8))

# ---- extended capability list (PCIe, PCI-X 2.0) ------------------------------------
EXT_CAP_START = 0x100


def ext_cap_id(header: int) -> int:
    """PCI_EXT_CAP_ID(): the 16-bit capability ID in an extended capability header."""
    return header & 0x0000FFFF


def ext_cap_ver(header: int) -> int:
    """PCI_EXT_CAP_VER(): the 4-bit capability version."""
    return (header >> 16) & 0xF


def ext_cap_next(header: int) -> int:
    """PCI_EXT_CAP_NEXT(): the next-capability offset (bits 1:0 are reserved and dropped)."""
    return (header >> 20) & 0xFFC


def ext_cap_header(cap_id: int, version: int, next_offset: int) -> int:
    """Build an extended capability header dword (inverse of the three accessors)."""
    return (cap_id & 0xFFFF) | ((version & 0xF) << 16) | ((next_offset & 0xFFC) << 20)


EXT_CAP_ID_ERR = 0x01
EXT_CAP_ID_VC = 0x02
EXT_CAP_ID_DSN = 0x03
EXT_CAP_ID_PWR = 0x04
EXT_CAP_ID_RCLD = 0x05
EXT_CAP_ID_RCILC = 0x06
EXT_CAP_ID_RCEC = 0x07
EXT_CAP_ID_MFVC = 0x08
EXT_CAP_ID_VC9 = 0x09
EXT_CAP_ID_RCRB = 0x0A
EXT_CAP_ID_VNDR = 0x0B
EXT_CAP_ID_CAC = 0x0C
EXT_CAP_ID_ACS = 0x0D
EXT_CAP_ID_ARI = 0x0E
EXT_CAP_ID_ATS = 0x0F
EXT_CAP_ID_SRIOV = 0x10
EXT_CAP_ID_MRIOV = 0x11
EXT_CAP_ID_MCAST = 0x12
EXT_CAP_ID_PRI = 0x13
EXT_CAP_ID_AMD_XXX = 0x14
EXT_CAP_ID_REBAR = 0x15
EXT_CAP_ID_DPA = 0x16
EXT_CAP_ID_TPH = 0x17
EXT_CAP_ID_LTR = 0x18
EXT_CAP_ID_SECPCI = 0x19
EXT_CAP_ID_PMUX = 0x1A
EXT_CAP_ID_PASID = 0x1B
EXT_CAP_ID_DPC = 0x1D
EXT_CAP_ID_L1SS = 0x1E
EXT_CAP_ID_PTM = 0x1F
EXT_CAP_ID_DVSEC = 0x23
EXT_CAP_ID_DLF = 0x25
EXT_CAP_ID_PL_16GT = 0x26
EXT_CAP_ID_NPEM = 0x29
EXT_CAP_ID_PL_32GT = 0x2A
EXT_CAP_ID_DOE = 0x2E

#: Names of extended capability IDs (IDs not listed stay numbers).
EXT_CAP_NAMES: dict[int, str] = {
    EXT_CAP_ID_ERR: "Advanced Error Reporting",
    EXT_CAP_ID_VC: "Virtual Channel",
    EXT_CAP_ID_DSN: "Device Serial Number",
    EXT_CAP_ID_PWR: "Power Budgeting",
    EXT_CAP_ID_RCLD: "Root Complex Link Declaration",
    EXT_CAP_ID_RCILC: "Root Complex Internal Link Control",
    EXT_CAP_ID_RCEC: "Root Complex Event Collector",
    EXT_CAP_ID_MFVC: "Multi-Function Virtual Channel",
    EXT_CAP_ID_VC9: "Virtual Channel",
    EXT_CAP_ID_RCRB: "Root Complex Register Block",
    EXT_CAP_ID_VNDR: "Vendor-Specific",
    EXT_CAP_ID_CAC: "Config Access Correlation",
    EXT_CAP_ID_ACS: "Access Control Services",
    EXT_CAP_ID_ARI: "Alternative Routing-ID Interpretation",
    EXT_CAP_ID_ATS: "Address Translation Services",
    EXT_CAP_ID_SRIOV: "Single Root I/O Virtualization",
    EXT_CAP_ID_MRIOV: "Multi-Root I/O Virtualization",
    EXT_CAP_ID_MCAST: "Multicast",
    EXT_CAP_ID_PRI: "Page Request Interface",
    EXT_CAP_ID_REBAR: "Resizable BAR",
    EXT_CAP_ID_DPA: "Dynamic Power Allocation",
    EXT_CAP_ID_TPH: "TPH Requester",
    EXT_CAP_ID_LTR: "Latency Tolerance Reporting",
    EXT_CAP_ID_SECPCI: "Secondary PCI Express",
    EXT_CAP_ID_PMUX: "Protocol Multiplexing",
    EXT_CAP_ID_PASID: "Process Address Space ID",
    EXT_CAP_ID_DPC: "Downstream Port Containment",
    EXT_CAP_ID_L1SS: "L1 PM Substates",
    EXT_CAP_ID_PTM: "Precision Time Measurement",
    EXT_CAP_ID_DVSEC: "Designated Vendor-Specific",
    EXT_CAP_ID_DLF: "Data Link Feature",
    EXT_CAP_ID_PL_16GT: "Physical Layer 16.0 GT/s",
    EXT_CAP_ID_NPEM: "Native PCIe Enclosure Management",
    EXT_CAP_ID_PL_32GT: "Physical Layer 32.0 GT/s",
    EXT_CAP_ID_DOE: "Data Object Exchange",
}

# Advanced Error Reporting
ERR_UNCOR_STATUS = 0x04
ERR_UNCOR_MASK = 0x08
ERR_UNCOR_SEVER = 0x0C
ERR_COR_STATUS = 0x10
ERR_COR_MASK = 0x14
ERR_CAP = 0x18
ERR_CAP_FEP_MASK = 0x0000001F
ERR_CAP_ECRC_GENC = 0x00000020
ERR_CAP_ECRC_GENE = 0x00000040
ERR_CAP_ECRC_CHKC = 0x00000080
ERR_CAP_ECRC_CHKE = 0x00000100
ERR_HEADER_LOG = 0x1C
ERR_ROOT_COMMAND = 0x2C
ERR_ROOT_STATUS = 0x30
ERR_ROOT_ERR_SRC = 0x34
#: Registers every AER capability has (through the header log); root ports add 0x2c..0x37.
ERR_MIN_SIZEOF = 0x2C

# Device Serial Number
DSN_LOW = 4
DSN_HIGH = 8
DSN_SIZEOF = 12

# Vendor-specific extended capability / DVSEC
VNDR_HEADER = 4          # bits 15:0 ID, 19:16 revision, 31:20 length
DVSEC_HEADER1 = 4        # bits 15:0 vendor, 19:16 revision, 31:20 length
DVSEC_HEADER2 = 8        # bits 15:0 DVSEC ID

# Access Control Services
ACS_CAP = 0x04
ACS_EGRESS_BITS = 0x05
ACS_CTRL = 0x06
ACS_SV = 0x0001
ACS_TB = 0x0002
ACS_RR = 0x0004
ACS_CR = 0x0008
ACS_UF = 0x0010
ACS_EC = 0x0020
ACS_DT = 0x0040
ACS_SIZEOF = 8

# ARI
ARI_CAP = 0x04
ARI_CAP_MFVC = 0x0001
ARI_CAP_ACS = 0x0002
ARI_CTRL = 0x06
ARI_SIZEOF = 8

# ATS
ATS_CAP = 0x04
ATS_CAP_QDEP_MASK = 0x001F
ATS_CAP_PAGE_ALIGNED = 0x0020
ATS_CTRL = 0x06
ATS_CTRL_ENABLE = 0x8000
ATS_CTRL_STU_MASK = 0x001F
ATS_SIZEOF = 8

# PRI
PRI_CTRL = 0x04
PRI_STATUS = 0x06
PRI_MAX_REQ = 0x08
PRI_ALLOC_REQ = 0x0C
PRI_SIZEOF = 0x10

# PASID
PASID_CAP = 0x04
PASID_CTRL = 0x06
PASID_SIZEOF = 8

# SR-IOV
SRIOV_CAP = 0x04
SRIOV_CTRL = 0x08
SRIOV_STATUS = 0x0A
SRIOV_INITIAL_VF = 0x0C
SRIOV_TOTAL_VF = 0x0E
SRIOV_NUM_VF = 0x10
SRIOV_FUNC_LINK = 0x12
SRIOV_VF_OFFSET = 0x14
SRIOV_VF_STRIDE = 0x16
SRIOV_VF_DID = 0x1A
SRIOV_SUP_PGSIZE = 0x1C
SRIOV_SYS_PGSIZE = 0x20
SRIOV_BAR = 0x24
SRIOV_SIZEOF = 0x40

# LTR
LTR_MAX_SNOOP_LAT = 0x4
LTR_MAX_NOSNOOP_LAT = 0x6
LTR_SIZEOF = 8

# ---- virtio (virtio 1.x spec, 4.1.4): vendor-specific capabilities of vendor 0x1af4 ----
VIRTIO_VENDOR_ID = 0x1AF4
VIRTIO_PCI_CAP_CFG_TYPE = 3
VIRTIO_PCI_CAP_BAR = 4
VIRTIO_PCI_CAP_ID = 5
VIRTIO_PCI_CAP_OFFSET = 8
VIRTIO_PCI_CAP_LENGTH = 12
VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER = 16
#: cfg_type names as lspci prints them after "VirtIO: ".
VIRTIO_CFG_TYPE_NAMES: dict[int, str] = {1: "CommonCfg", 2: "Notify", 3: "ISR", 4: "DeviceCfg", 5: "PCICfg",
                                         8: "SharedMemory", 9: "VendorCfg"}

# ---- the kernel's view of a BAR: IORESOURCE_* flags (include/linux/ioport.h, 6.12) ----
# sysfs ``resource`` prints one "start end flags" line per BAR (0..5), then the
# ROM (6), then (with CONFIG_PCI_IOV) the six VF BARs of an SR-IOV PF (7..12),
# then bridge windows.  The low byte of ``flags`` holds bus-specific bits: for a
# PCI BAR the kernel keeps the register's own low bits there (I/O space, memory
# type, prefetchable), plus the two PCI bits below.
RESOURCE_LINE_BARS = 0
RESOURCE_LINE_ROM = 6
RESOURCE_LINE_IOV = 7                  # first of the 6 SR-IOV VF BAR lines of a PF
IORESOURCE_BITS = 0x000000FF           # bus-specific bits
IORESOURCE_TYPE_BITS = 0x00001F00
IORESOURCE_IO = 0x00000100
IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_READONLY = 0x00004000
IORESOURCE_SIZEALIGN = 0x00040000
IORESOURCE_MEM_64 = 0x00100000
IORESOURCE_UNSET = 0x20000000          # no address assigned yet
IORESOURCE_DISABLED = 0x10000000
IORESOURCE_ROM_ENABLE = 0x00000001     # bus-specific bit of a ROM resource: the ROM decode is enabled
IORESOURCE_PCI_FIXED = 0x00000010      # bus-specific: a fixed (legacy) address, e.g. a legacy-mode IDE port
IORESOURCE_PCI_EA_BEI = 0x00000020     # bus-specific: the BAR comes from an Enhanced Allocation entry
