"""vfio.pci.ids's fast lookups and answer cache give exactly what a line-by-line
parse of pci.ids gives: the same names, the same None, the same PciIdsError
(path and line) for a malformed block, on the system database and on
seeded mutations of it; a cached answer is never stale.

The oracle (:class:`LineParser`) is the straightforward whole-block parser the
module used before it searched the bytes; it lives here, not in the package.
"""

from __future__ import annotations

import os
import random

import pytest

import vfio
from vfio.pci import ids as ids_mod
from vfio.pci.ids import DEFAULT_PATHS, PciIds, PciIdsError

SYSTEM = next((p for p in DEFAULT_PATHS if os.path.exists(p)), None)
needs_db = pytest.mark.skipif(SYSTEM is None, reason="no pci.ids installed (apt-get install pci.ids)")


class LineParser:
    """Reference: text mode read, a vendor's block parsed line by line on its first lookup."""

    def __init__(self, path):
        self.path = path
        with open(path, encoding="utf-8", errors="replace") as f:
            self.text = "\n" + f.read()
        self.vendors, self.devices, self.subs, self.classes = {}, {}, {}, None

    def _block(self, start):
        lines, pos, text = [], start, self.text
        while pos < len(text):
            nl = text.find("\n", pos)
            nl = len(text) if nl < 0 else nl
            line = text[pos:nl]
            if lines and line and not line.startswith(("\t", "#")):
                break
            lines.append(line)
            pos = nl + 1
        return lines

    def _vendor(self, v):
        if v in self.vendors:
            return
        self.vendors[v] = None
        at = self.text.find(f"\n{v:04x}  ")
        if at < 0 or self.text.find("\nC ", 0, at) >= 0:
            return
        device = None
        for i, line in enumerate(self._block(at + 1)):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                if not line.startswith("\t"):
                    self.vendors[v] = line.split(None, 1)[1].strip()
                elif line.startswith("\t\t"):
                    if device is not None:
                        a, b, name = line.strip().split(None, 2)
                        self.subs[(v, device, int(a, 16), int(b, 16))] = name.strip()
                else:
                    code, name = line.strip().split(None, 1)
                    device = int(code, 16)
                    self.devices[(v, device)] = name.strip()
            except (ValueError, IndexError) as e:
                raise PciIdsError(f"{self.path}:{self.text.count(chr(10), 0, at + 1) + i}: "
                                  f"cannot parse {line!r} ({e})") from None

    def _load_classes(self):
        if self.classes is not None:
            return self.classes
        self.classes = {}
        at = self.text.find("\nC ")
        if at < 0:
            return self.classes
        c = s = None
        for i, line in enumerate(self.text[at + 1:].split("\n")):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                if line.startswith("C "):
                    code, name = line[2:].split(None, 1)
                    c, s = int(code, 16), None
                    self.classes[(c,)] = name.strip()
                elif not line.startswith("\t"):
                    break
                elif line.startswith("\t\t"):
                    if s is not None:
                        code, name = line.strip().split(None, 1)
                        self.classes[(c, s, int(code, 16))] = name.strip()
                else:
                    code, name = line.strip().split(None, 1)
                    s = int(code, 16)
                    self.classes[(c, s)] = name.strip()
            except ValueError as e:
                raise PciIdsError(f"{self.path}:{self.text.count(chr(10), 0, at + 1) + i}: "
                                  f"cannot parse {line!r} ({e})") from None
        return self.classes

    def vendor_name(self, v):
        self._vendor(v)
        return self.vendors.get(v)

    def device_name(self, v, d):
        self._vendor(v)
        return self.devices.get((v, d))

    def subsystem_name(self, v, d, a, b):
        self._vendor(v)
        return self.subs.get((v, d, a, b))

    def class_name(self, code):
        cl = self._load_classes()
        return cl.get((code >> 16, (code >> 8) & 0xFF)) or cl.get((code >> 16,))

    def prog_if_name(self, code):
        return self._load_classes().get((code >> 16, (code >> 8) & 0xFF, code & 0xFF))

    def __len__(self):
        end = self.text.find("\nC ")
        head = self.text if end < 0 else self.text[:end]
        return sum(1 for line in head.split("\n") if len(line) > 6 and line[4:6] == "  " and line[0] not in "\t#")


def outcome(fn):
    try:
        return ("ok", fn())
    except PciIdsError as e:
        return ("PciIdsError", str(e))


QUERIES = ([("vendor_name", (v,)) for v in (0x1AF4, 0x8086, 0x1B36, 0x1234, 0xFFFF, 0x0001, 0x12345, -1)]
           + [("device_name", (0x1AF4, d)) for d in (0x1041, 0x1000, 0x1110, 0x9999, 0x10000)]
           + [("device_name", (0x8086, d)) for d in (0x0D57, 0x0007, 0x100E, 0x10D3)]
           + [("subsystem_name", k) for k in ((0x1AF4, 0x1110, 0x1AF4, 0x1100), (0x1AF4, 0x1000, 0x01DE, 0xFFFB),
                                              (0x8086, 0x100E, 0x8086, 0x001E), (0x1AF4, 0x1041, 0, 0))]
           + [("class_name", (c,)) for c in (0x060000, 0xFFFF00, 0x018000, 0x020000, 0x010601, 0x990000)]
           + [("prog_if_name", (0x010601,)), ("prog_if_name", (0x0C0330,))])


def same_answers(path, new, rnd, queries=QUERIES) -> bool:
    """Asserts the same outcomes, in a shuffled order; True when one was an error."""
    old = LineParser(path)
    qs = list(queries)
    rnd.shuffle(qs)
    failed = False
    for name, args in qs:
        a, b = outcome(lambda: getattr(old, name)(*args)), outcome(lambda: getattr(new, name)(*args))
        assert a == b, (name, args)
        failed |= a[0] != "ok"
    assert len(old) == len(new) and bool(new) == (len(old) > 0)
    return failed


@needs_db
def test_system_database_every_vendor_and_device_as_the_line_parser():
    old, new = LineParser(SYSTEM), PciIds(SYSTEM)
    text = old.text
    vendors = sorted({int(line[:4], 16) for line in text[:text.find("\nC ")].split("\n")
                      if len(line) > 6 and line[4:6] == "  " and line[0] not in "\t#"})
    rnd = random.Random(11)
    for v in rnd.sample(vendors, 150) + [0x8086, 0x1AF4, 0x1B36, 0x10DE]:
        assert new.vendor_name(v) == old.vendor_name(v)
        devs = [d for (vv, d) in old.devices if vv == v]
        for d in devs[:40] + [0xFFFF]:
            assert new.device_name(v, d) == old.device_name(v, d), (hex(v), hex(d))
        for (vv, d, a, b) in [k for k in old.subs if k[0] == v][:20]:
            assert new.subsystem_name(v, d, a, b) == old.subsystem_name(v, d, a, b)
    for c in list(old._load_classes())[:200]:
        code = (c + (0, 0))[:3]
        code = code[0] << 16 | code[1] << 8 | code[2]
        assert new.class_name(code) == old.class_name(code) and new.prog_if_name(code) == old.prog_if_name(code)


MUTATIONS = [b"\tzzzz  bad", b"\t\tzz", b"\t1041\n", b"\t\t1af4 1100\n", b"8086\n", b"C zz  bad\n", b"\t\t", b"\t",
             b"  ", b"#", b"\r", b"\r\n", b"\xc3", b"\xff", b"C 01  X", b"", b"\x0c", b"\xc2\xa0", b"1af4  Dup",
             b"\t1041  Dup", b"\t\t1af4 1100  Dup", b"\tAB12  up", b"\t\t# c", b"\t# c"]


@needs_db
@pytest.mark.parametrize("seed", range(2))
def test_mutated_databases_answer_and_fail_as_the_line_parser(tmp_path, seed):
    """Seeded edits around the looked-up vendors' blocks and the class section:
    malformed lines (errors with the same line number), carriage returns (the
    text-mode path), duplicates (the later line wins), odd whitespace."""
    with open(SYSTEM, "rb") as f:
        base = f.read().split(b"\n")
    at = {v: next(i for i, line in enumerate(base) if line.startswith(v)) for v in (b"1af4", b"8086")}
    rnd = random.Random(seed)
    errors = 0
    for case in range(12):
        lines = list(base)
        for _ in range(rnd.randint(1, 4)):
            i = rnd.choice([rnd.randrange(len(lines)), at[b"1af4"] + rnd.randint(-2, 30),
                            at[b"8086"] + rnd.randint(-2, 30), len(lines) - rnd.randint(1, 300)])
            i = max(0, min(i, len(lines) - 1))
            m, op = rnd.choice(MUTATIONS), rnd.randrange(4)
            if op == 0:
                lines.insert(i, m + lines[i][:rnd.randint(0, 20)])
            elif op == 1:
                cut = rnd.randint(0, len(lines[i]))
                lines[i] = lines[i][:cut] + m + lines[i][cut:]
            elif op == 2:
                del lines[i]
            else:
                lines[i] = m + lines[i]
        p = tmp_path / f"pci{case}.ids"
        p.write_bytes(b"\n".join(lines))
        errors += same_answers(str(p), PciIds(str(p)), rnd)
    assert errors, "the mutations should reach a malformed block at least once"


SAMPLE = b"""\
# comment
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
\t\t1af4 1100  QEMU Virtual Machine
\t1042  Virtio 1.0 block device
8086  Intel Corporation
\t10d3  82574L Gigabit Network Connection
C 02  Network controller
\t00  Ethernet controller
"""


def ask_all(db):
    return [outcome(lambda: getattr(db, n)(*a)) for n, a in QUERIES]


def test_cached_answers_equal_fresh_ones_and_go_stale_when_the_file_changes(tmp_path):
    p, cache = tmp_path / "pci.ids", tmp_path / "cache"
    p.write_bytes(SAMPLE)
    first = PciIds(str(p), cache_dir=str(cache))
    fresh = ask_all(first)
    first._cache.save()
    saved = (cache / "pci-ids-answers").read_text()
    assert "v1af4\tRed Hat, Inc.\n" in saved and "d1af4:1041\tVirtio 1.0 network device\n" in saved
    again = PciIds(str(p), cache_dir=str(cache))
    assert again._cache.answers and ask_all(again) == fresh == ask_all(PciIds(str(p)))
    # the same size, another name: a new identity (mtime/ctime), so nothing old is answered
    p.write_bytes(SAMPLE.replace(b"Red Hat, Inc.", b"Red Cap, Inc."))
    changed = PciIds(str(p), cache_dir=str(cache))
    assert changed._cache.answers == {}
    assert changed.vendor_name(0x1AF4) == "Red Cap, Inc."


def test_a_broken_block_is_never_cached_so_it_fails_on_every_run(tmp_path):
    p, cache = tmp_path / "pci.ids", tmp_path / "cache"
    p.write_bytes(b"1af4  Red Hat, Inc.\n\tzzzz  bad device\n")
    for _ in range(2):
        db = PciIds(str(p), cache_dir=str(cache))
        with pytest.raises(PciIdsError, match=r"pci.ids:2"):
            db.device_name(0x1AF4, 0x1000)
        assert db.vendor_name(0x1AF4) == "Red Hat, Inc."        # as the line parser, after its error
        db._cache.save()
    saved = cache / "pci-ids-answers"
    assert not saved.exists() or "1af4" not in saved.read_text()


def test_a_cache_file_others_can_write_or_a_symlink_is_not_read(tmp_path):
    p, cache = tmp_path / "pci.ids", tmp_path / "cache"
    p.write_bytes(SAMPLE)
    db = PciIds(str(p), cache_dir=str(cache))
    db.vendor_name(0x1AF4)
    db._cache.save()
    f = cache / "pci-ids-answers"
    f.write_text(f.read_text().replace("Red Hat, Inc.", "forged"))
    os.chmod(f, 0o666)
    assert PciIds(str(p), cache_dir=str(cache)).vendor_name(0x1AF4) == "Red Hat, Inc."
    os.chmod(f, 0o600)
    assert PciIds(str(p), cache_dir=str(cache)).vendor_name(0x1AF4) == "forged"    # the user's own file
    f.rename(tmp_path / "elsewhere")
    f.symlink_to(tmp_path / "elsewhere")
    assert PciIds(str(p), cache_dir=str(cache)).vendor_name(0x1AF4) == "Red Hat, Inc."


def test_an_unwritable_cache_is_no_cache(tmp_path):
    p = tmp_path / "pci.ids"
    p.write_bytes(SAMPLE)
    blocker = tmp_path / "file"
    blocker.write_text("")
    db = PciIds(str(p), cache_dir=str(blocker / "sub"))     # a file where the directory would go
    assert db.vendor_name(0x8086) == "Intel Corporation"
    db._cache.save()                                        # nothing raised, nothing written
    assert not (blocker / "sub").exists()


def test_the_default_cache_is_in_the_users_cache_directory_not_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ids_mod.user_cache_dir() == str(tmp_path / "xdg" / "vfio-toolkit")
    monkeypatch.delenv("XDG_CACHE_HOME")
    d = ids_mod.user_cache_dir()
    pkg = os.path.dirname(os.path.abspath(vfio.__file__))
    assert d is None or not os.path.abspath(d).startswith(pkg)


@pytest.mark.parametrize("text", [b"", b"# only a comment\n", b"C 01  Mass storage controller\n\t06  SATA\n",
                                  b"1af4  Red Hat\nC 02  Net\n", b"\xc3\xa9bcd  x\n", b"ab\tc  name\n",
                                  b"1af4  \n", b"abcd  y\r\n"])
def test_truth_is_a_vendor_line_before_the_classes(tmp_path, text):
    p = tmp_path / "pci.ids"
    p.write_bytes(text)
    assert bool(PciIds(str(p))) == (len(LineParser(str(p))) > 0) and len(PciIds(str(p))) == len(LineParser(str(p)))


def test_answered_from_the_cache_the_file_is_not_read_until_a_question_is_new(tmp_path):
    p, cache = tmp_path / "pci.ids", tmp_path / "cache"
    p.write_bytes(SAMPLE)
    warm = PciIds(str(p), cache_dir=str(cache))
    assert warm.vendor_name(0x1AF4) == "Red Hat, Inc." and bool(warm)
    warm._cache.save()
    db = PciIds(str(p), cache_dir=str(cache))
    assert db.vendor_name(0x1AF4) == "Red Hat, Inc." and bool(db) and db._bytes is None
    # the path now names another file: the open one is still the one read
    other = tmp_path / "other.ids"
    other.write_bytes(SAMPLE.replace(b"Intel Corporation", b"Someone Else"))
    os.replace(other, p)
    assert db.vendor_name(0x8086) == "Intel Corporation" and db._bytes is not None and db._fd == -1
    assert PciIds(str(p)).vendor_name(0x8086) == "Someone Else"     # what a new lookup of the path sees


def test_a_file_changed_in_place_after_the_cache_answered_drops_the_cache(tmp_path):
    p, cache = tmp_path / "pci.ids", tmp_path / "cache"
    p.write_bytes(SAMPLE)
    warm = PciIds(str(p), cache_dir=str(cache))
    warm.vendor_name(0x1AF4)
    warm._cache.save()
    db = PciIds(str(p), cache_dir=str(cache))
    assert db.vendor_name(0x1AF4) == "Red Hat, Inc."                # from the cache
    with open(p, "r+b") as f:                                       # same inode, new contents
        f.write(SAMPLE.replace(b"Intel Corporation", b"Intel Corp. Two  "))
    assert db.vendor_name(0x8086) == "Intel Corp. Two"             # read now: the new contents
    assert db._cache is None                                        # nothing of it kept under the old identity
