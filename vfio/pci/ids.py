"""Names from the PCI ID database (``pci.ids``, as shipped by pciutils / hwdata).

The database maps vendor, device, subsystem and class codes to names.  It is
optional: every lookup returns ``None`` for an ID it does not know (or when no
database file was found), and callers print the number instead -- IDs always
stay visible as numbers, names are decoration.

File format (see the file's own header): ``vvvv  Vendor`` lines, then
``<TAB>dddd  Device`` lines under them, then ``<TAB><TAB>ssss ssss  Subsystem``
lines; after the devices a ``C cc  Class`` section with ``<TAB>ss  Subclass``
and ``<TAB><TAB>pp  Programming interface`` lines.  ``#`` starts a comment.

Example::

    ids = PciIds.default()            # Debian: /usr/share/misc/pci.ids
    ids.vendor_name(0x1af4)           # 'Red Hat, Inc.'
    ids.device_name(0x1af4, 0x1041)   # 'Virtio 1.0 network device'
    ids.class_name(0x020000)          # 'Ethernet controller'
    ids.prog_if_name(0x010601)        # 'AHCI 1.0'
"""

from __future__ import annotations

import os
import re
import stat
import weakref
from functools import lru_cache

from ..errors import Error

__all__ = ["PciIds", "DEFAULT_PATHS", "PciIdsError"]

#: Where distributions install the database, first found wins.
DEFAULT_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")

# Patterns as sources: re.compile (whose cache makes a second call a dict lookup) is
# called where they are used, so a run answered from the cache compiles none of them.
# The fast path's view of the file (bytes, with a newline put in front so that
# every line starts after one).  A vendor's block ends at the next line that is
# not empty and starts with neither a tab nor "#".
_BLOCK_END = rb"\n[^\t#\n]"
# Every line after a vendor line in the plain form pci.ids is written in: blank,
# comment, "\tdddd  Device" or "\t\tssss ssss  Subsystem", lower-case hex, names
# starting with a printable ASCII character.  A block whose lines all match is
# one the line parser would accept, and takes the same values from (see
# _load_vendor); any other block is parsed line by line as before.
_PLAIN_LINES = (
    rb"(?:\n(?:#[^\n]*|[\t ]*|\t[\t ]*#[^\n]*|\t[0-9a-f]{4}[\t ]+[!-~][^\n]*"
    rb"|\t\t[0-9a-f]{4}[\t ]+[0-9a-f]{4}[\t ]+[!-~][^\n]*)(?![^\n]))*+")
_PLAIN_VENDOR = rb"\n[0-9a-f]{4}  [\t ]*[!-~][^\n]*"
_DEVICE_LINE = rb"\n\t[0-9a-f]{4}[\t ]"
# a line __len__ counts, when its first six characters are ASCII (so bytes are characters)
_VENDORISH = rb"\n[^\t#\n\x80-\xff][\x00-\x09\x0b-\x7f]{3}  [^\n]"


class PciIdsError(Error, ValueError):
    """A pci.ids file that does not parse; names the path and line."""


class PciIds:
    """A pci.ids database.  ``PciIds()`` is an empty database (every lookup None).

    The file (about 1.3 MB, 40,000 lines) is read once, as bytes, and never
    parsed as a whole: a vendor lookup finds the vendor's line with
    ``bytes.find``, checks its block with one regular expression (so a
    malformed line in it is still reported, with its line number, as the line
    parser reports it) and then finds the device or subsystem line it needs;
    the class section (the last few KiB) is parsed on the first class lookup.
    Answers are kept.  Costs on a 1.3 MB file: about the time of scanning the
    file up to the vendor once, and its block once -- less than lspci, which
    hashes the whole file.  A file that is not in the plain form (carriage
    returns, upper-case hex, odd whitespace) takes the line parser.  With an
    answer cache (:class:`_AnswerCache`) that knows every question asked, the
    file is opened but never read.
    """

    def __init__(self, path: str | None = None, *, cache_dir: str | None = None):
        """Raises ``OSError`` when ``path`` cannot be read.

        ``cache_dir``: keep the answers in a file there (:class:`_AnswerCache`),
        so that a later process asking the same questions of the same file
        does not search it again (``PciIds.default()`` uses the user's cache
        directory)."""
        self.path = path
        self._bytes: bytes | None = b"\n"     # None: not read yet (see _raw)
        self._fd = -1                          # kept open until then
        self._str: str | None = None
        self._vendors: dict[int, str | None] = {}
        self._devices: dict[tuple[int, int], str] = {}
        self._subsystems: dict[tuple[int, int, int, int], str] = {}
        self._classes: dict[tuple[int, ...], str] | None = None
        #: vendor -> (start, end) of its block in _raw, for a block in the plain form
        self._blocks: dict[int, tuple[int, int]] = {}
        self._absent: set[tuple] = set()        # device/subsystem keys looked up in a plain block, not there
        self._first_class: int | None = None    # offset of the first "\nC " line, once found
        self._no_class_below = 0                # no "\nC " line lies wholly before this offset
        self._clean: set[int] = set()           # vendors answered without the line parser, no error
        self._classes_ok = False                # the class section parsed without an error
        self._cache: _AnswerCache | None = None
        ident = None
        if path is not None:
            with open(path, "rb") as f:
                before = os.fstat(f.fileno())
                if cache_dir is not None:
                    cache = _AnswerCache(os.path.join(cache_dir, "pci-ids-answers"),
                                         _file_identity(path, before, before))
                    if cache.answers:
                        # answers kept for exactly this file (so it was in the plain form):
                        # it is read only if a question has no answer there, from this same
                        # open file, whatever happens to the path meanwhile
                        self._cache, self._plain, self._bytes = cache, True, None
                        self._fd = os.dup(f.fileno())
                        self._closer = weakref.finalize(self, os.close, self._fd)
                        return
                self._bytes = b"\n" + f.read()
                ident = _file_identity(path, before, os.fstat(f.fileno()))
        # text mode would have turned "\r\n" and "\r" into "\n": such a file takes the line parser
        self._plain = b"\r" not in self._bytes
        if cache_dir is not None and ident is not None and self._plain:
            self._cache = _AnswerCache(os.path.join(cache_dir, "pci-ids-answers"), ident)

    @property
    def _raw(self) -> bytes:
        """The file's bytes with a newline in front, read on first use when the
        answer cache answered everything until then."""
        if self._bytes is None:
            before = os.fstat(self._fd)
            data = b"\n" + os.pread(self._fd, before.st_size + 1, 0)
            ident = _file_identity(self.path, before, os.fstat(self._fd))
            self._closer()                      # closes the fd, once
            self._fd = -1
            self._bytes = data
            self._plain = b"\r" not in data
            if self._cache is not None and (ident != self._cache.ident or not self._plain):
                self._cache = None              # changed in place since: answers from it are not kept
        return self._bytes

    @classmethod
    def default(cls) -> "PciIds":
        """The system database (shared, read once), or an empty one if none is installed."""
        return _default()

    @property
    def _text(self) -> str:
        """The file as text mode reads it (UTF-8, undecodable bytes replaced,
        universal newlines), with a newline in front: what the line parser reads."""
        if self._str is None:
            t = self._raw.decode("utf-8", errors="replace")
            self._str = t if self._plain else t.replace("\r\n", "\n").replace("\r", "\n")
        return self._str

    def _lineno(self, pos: int) -> int:
        return self._text.count("\n", 0, pos)

    def _class_before(self, at: int) -> bool:
        """Whether a ``C`` line lies wholly before offset ``at`` of the bytes
        (scanning each part of the file at most once)."""
        if self._first_class is not None:               # -1: the file has no class section
            return 0 <= self._first_class and self._first_class + 3 <= at
        if at <= self._no_class_below:
            return False
        hit = self._raw.find(b"\nC ", max(0, self._no_class_below - 2), at)
        if hit >= 0:
            self._first_class = hit
            return True
        self._no_class_below = at
        return False

    def _find_vendor_line(self, vendor: int) -> int:
        """Offset of the first ``\\nvvvv  `` in the bytes, or -1 (as str.find would
        give in the text: ASCII bytes decode to themselves, in order)."""
        raw = self._raw
        key = b"\n%04x" % vendor
        at = raw.find(key)
        n = len(key)
        while at >= 0 and raw[at + n:at + n + 2] != b"  ":
            at = raw.find(key, at + 1)
        return at

    def _load_vendor(self, vendor: int) -> None:
        if vendor in self._vendors:
            return
        self._raw                       # read first: whether the file is plain is known then
        if not self._plain:
            return self._load_vendor_lines(vendor)
        self._vendors[vendor] = None
        raw = self._raw
        at = self._find_vendor_line(vendor)
        if at < 0 or self._class_before(at):            # not found, or past the device list
            self._clean.add(vendor)
            return
        m = re.compile(_BLOCK_END).search(raw, at + 1)
        end = m.start() if m else len(raw)
        head = re.compile(_PLAIN_VENDOR).match(raw, at, end)
        if head is None or re.compile(_PLAIN_LINES).fullmatch(raw, head.end(), end) is None:
            del self._vendors[vendor]
            return self._load_vendor_lines(vendor)
        self._vendors[vendor] = self._line(at + 1).split(None, 1)[1].strip()
        self._blocks[vendor] = (head.end(), end)
        self._clean.add(vendor)

    def _line(self, start: int) -> str:
        """The line of the bytes starting at ``start``, decoded as the text is."""
        nl = self._raw.find(b"\n", start)
        return self._raw[start:nl if nl >= 0 else len(self._raw)].decode("utf-8", errors="replace")

    def _device_lines(self, vendor: int, device: int) -> list[int]:
        """Offsets (at the newline) of the lines of ``device`` in a plain block, in file order."""
        lo, hi = self._blocks[vendor]
        if not 0 <= device <= 0xFFFF:
            return []
        raw, key, out = self._raw, b"\n\t%04x" % device, []
        at = raw.find(key, lo, hi)
        while at >= 0:
            if raw[at + 6:at + 7] in (b" ", b"\t"):
                out.append(at)
            at = raw.find(key, at + 1, hi)
        return out

    def _fast_device(self, vendor: int, device: int) -> None:
        key = (vendor, device)
        if key in self._devices or key in self._absent or vendor not in self._blocks:
            return
        self._absent.add(key)               # until found below: an unknown device is looked for once
        lines = self._device_lines(vendor, device)
        if lines:                       # a later line of the same device wins, as in the line parser
            self._devices[key] = self._line(lines[-1] + 1).strip().split(None, 1)[1].strip()
            self._absent.discard(key)

    def _fast_subsystem(self, vendor: int, device: int, sv: int, sd: int) -> None:
        key = (vendor, device, sv, sd)
        if key in self._subsystems or key in self._absent or vendor not in self._blocks:
            return
        self._absent.add(key)
        raw = self._raw
        hi = self._blocks[vendor][1]
        for at in self._device_lines(vendor, device):
            m = re.compile(_DEVICE_LINE).search(raw, at + 1, hi)   # the next device line ends its subsystems
            for line in raw[at + 1:m.start() if m else hi].decode("utf-8", errors="replace").split("\n")[1:]:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue                    # the line parser's skip
                if line.startswith("\t\t"):
                    a, b, name = line.strip().split(None, 2)
                    if (int(a, 16), int(b, 16)) == (sv, sd):
                        self._subsystems[key] = name.strip()
                        self._absent.discard(key)

    # ---- the line parser: files not in the plain form -------------------------------
    def _block(self, start: int) -> tuple[int, list[str]]:
        """The lines from ``start`` (a line start) up to the next top-level line."""
        lines, pos = [], start
        text = self._text
        while pos < len(text):
            nl = text.find("\n", pos)
            nl = len(text) if nl < 0 else nl
            line = text[pos:nl]
            if lines and line and not line.startswith(("\t", "#")):
                break
            lines.append(line)
            pos = nl + 1
        return start, lines

    def _load_vendor_lines(self, vendor: int) -> None:
        if vendor in self._vendors:
            return
        self._vendors[vendor] = None
        at = self._text.find(f"\n{vendor:04x}  ")
        if at < 0 or self._text.find("\nC ", 0, at) >= 0:      # not found, or past the device list
            return
        start, lines = self._block(at + 1)
        device = None
        for i, line in enumerate(lines):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                if not line.startswith("\t"):
                    self._vendors[vendor] = line.split(None, 1)[1].strip()
                elif line.startswith("\t\t"):
                    if device is not None:
                        sv, sd, name = line.strip().split(None, 2)
                        self._subsystems[(vendor, device, int(sv, 16), int(sd, 16))] = name.strip()
                else:
                    code, name = line.strip().split(None, 1)
                    device = int(code, 16)
                    self._devices[(vendor, device)] = name.strip()
            except (ValueError, IndexError) as e:
                raise PciIdsError(f"{self.path}:{self._lineno(start) + i}: cannot parse {line!r} ({e})") from None

    def _load_classes(self) -> dict:
        if self._classes is not None:
            return self._classes
        self._classes = {}
        self._raw                   # read first: whether the file is plain is known then
        if self._plain:             # the same text as the line parser's, from the bytes' tail
            if self._first_class is None:
                self._first_class = self._raw.find(b"\nC ")
            at = self._first_class
            if at < 0:
                return self._classes
            section = self._raw[at + 1:].decode("utf-8", errors="replace")
        else:
            at = self._text.find("\nC ")
            if at < 0:
                return self._classes
            section = self._text[at + 1:]
        cls_ = sub = None
        for i, line in enumerate(section.split("\n")):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                if line.startswith("C "):
                    code, name = line[2:].split(None, 1)
                    cls_, sub = int(code, 16), None
                    self._classes[(cls_,)] = name.strip()
                elif not line.startswith("\t"):
                    break                      # the next top-level section
                elif line.startswith("\t\t"):
                    if sub is not None:
                        code, name = line.strip().split(None, 1)
                        self._classes[(cls_, sub, int(code, 16))] = name.strip()
                else:
                    code, name = line.strip().split(None, 1)
                    sub = int(code, 16)
                    self._classes[(cls_, sub)] = name.strip()
            except ValueError as e:
                lineno = (self._raw.count(b"\n", 0, at + 1) if self._plain else self._lineno(at + 1)) + i
                raise PciIdsError(f"{self.path}:{lineno}: cannot parse {line!r} ({e})") from None
        self._classes_ok = True
        return self._classes

    # ---- lookups ---------------------------------------------------------------------
    # Each answer goes through the answer cache when there is one; an answer is
    # kept only when it came without an error anywhere in what was parsed for it
    # (a plain block, the whole class section), so a file whose block is broken
    # raises on every run, as it does without a cache.
    def _cached(self, key: str, keep, compute):
        """``compute()``, or the cache's answer for ``key``; a computed answer is
        kept when ``keep()`` says it came without an error."""
        cache = self._cache
        if cache is not None and key in cache.answers:
            return cache.answers[key]
        value = compute()
        if self._cache is not None and keep():
            self._cache.put(key, value)
        return value

    def vendor_name(self, vendor: int) -> str | None:
        def compute():
            self._load_vendor(vendor)
            return self._vendors.get(vendor)
        return self._cached(f"v{vendor:x}", lambda: vendor in self._clean, compute)

    def device_name(self, vendor: int, device: int) -> str | None:
        def compute():
            self._load_vendor(vendor)
            self._fast_device(vendor, device)
            return self._devices.get((vendor, device))
        return self._cached(f"d{vendor:x}:{device:x}", lambda: vendor in self._clean, compute)

    def subsystem_name(self, vendor: int, device: int, sub_vendor: int, sub_device: int) -> str | None:
        """The name listed under the device for this subsystem, or None."""
        def compute():
            self._load_vendor(vendor)
            self._fast_subsystem(vendor, device, sub_vendor, sub_device)
            return self._subsystems.get((vendor, device, sub_vendor, sub_device))
        return self._cached(f"s{vendor:x}:{device:x}:{sub_vendor:x}:{sub_device:x}",
                            lambda: vendor in self._clean, compute)

    def class_name(self, class_code: int) -> str | None:
        """Name of a 24-bit class code as lspci shows it: the subclass name, else the base class name."""
        def compute():
            c, s = class_code >> 16, (class_code >> 8) & 0xFF
            classes = self._load_classes()
            return classes.get((c, s)) or classes.get((c,))
        return self._cached(f"c{class_code:x}", lambda: self._classes_ok, compute)

    def prog_if_name(self, class_code: int) -> str | None:
        """Name of the programming interface (low byte) of a 24-bit class code, or None."""
        def compute():
            return self._load_classes().get((class_code >> 16, (class_code >> 8) & 0xFF, class_code & 0xFF))
        return self._cached(f"p{class_code:x}", lambda: self._classes_ok, compute)

    def __len__(self) -> int:
        """Number of vendors in the device list."""
        end = self._text.find("\nC ")
        head = self._text if end < 0 else self._text[:end]
        return sum(1 for line in head.split("\n") if len(line) > 6 and line[4:6] == "  " and line[0] != "\t"
                   and line[0] != "#")

    def __bool__(self) -> bool:
        """``len(self) > 0``, found without counting: is there a vendor line at all."""
        return self._cached("has-vendors", lambda: True, lambda: "yes" if self._any_vendor() else "") == "yes"

    def _any_vendor(self) -> bool:
        self._raw                       # read first: whether the file is plain is known then
        if self._plain:
            m = re.compile(_VENDORISH).search(self._raw)
            if m is not None and not self._class_before(m.start() + 3):    # not a C line, nor after one
                return True
        return len(self) > 0


def _file_identity(path: str, before: os.stat_result, after: os.stat_result) -> str | None:
    """What changes whenever a file's contents may have: device, inode, size,
    modification and change times (ctime cannot be set back by a user).  None
    when the file changed while it was read."""
    ident = [(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for st in (before, after)]
    if ident[0] != ident[1]:
        return None
    return repr((os.path.abspath(path),) + ident[0])


class _AnswerCache:
    """The answers given for one pci.ids file, kept between processes.

    A ``vfio-inspect`` run asks the same few dozen questions of the same 1.3 MB
    file every time; searching it is most of what its names cost.  The answers
    are kept in a small text file in the user's cache directory (never in the
    package): a first line naming the pci.ids file's identity
    (:func:`_file_identity`: any change to the file makes every answer stale,
    and then the cache starts over), then ``key<TAB>name`` lines (an empty
    name: the database has none).  The file is used only when it is the
    user's own and writable by nobody else; it is replaced atomically, at
    exit, when a run added answers.  A cache that cannot be read or written
    is no cache: the lookups are made from pci.ids, as without one.
    """

    MAGIC = "vfio-toolkit pci.ids answers 1"
    MAX_BYTES = 1 << 20

    def __init__(self, path: str, ident: str):
        self.path = path
        self.ident = ident
        self.answers: dict[str, str | None] = {}
        self._dirty = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022
                    or st.st_size > self.MAX_BYTES):
                return
            lines = f.read(self.MAX_BYTES).decode("utf-8", errors="replace").split("\n")
        if lines[0] != f"{self.MAGIC}\t{ident}":
            return
        for line in lines[1:]:
            key, tab, name = line.partition("\t")
            if tab:
                self.answers[key] = name or None

    def put(self, key: str, value: str | None) -> None:
        self.answers[key] = value
        if not self._dirty:
            self._dirty = True
            import atexit
            atexit.register(self.save)

    def save(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        text = "".join([f"{self.MAGIC}\t{self.ident}\n"] +
                       [f"{k}\t{v or ''}\n" for k, v in self.answers.items() if v is None or "\n" not in v])
        d = os.path.dirname(self.path)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError:         # a cache that cannot be written is no cache (see the class docstring)
            try:
                os.unlink(tmp)
            except OSError:
                pass


def user_cache_dir() -> str | None:
    """``$XDG_CACHE_HOME/vfio-toolkit`` (default ``~/.cache/vfio-toolkit``), or None
    when there is no home directory to put it in."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "vfio-toolkit")


@lru_cache(maxsize=1)
def _default() -> PciIds:
    for p in DEFAULT_PATHS:
        if os.path.exists(p):
            return PciIds(p, cache_dir=user_cache_dir())
    return PciIds()
