"""Every code example of the documentation runs as written, against the real kernel.

The examples are the Python blocks of README.md (```python fences) and the
``::`` literal blocks of the docstrings of the public modules of the ``vfio``
package (module, class and function docstrings; modules whose name starts with
an underscore are private).  A README block runs as a script; a docstring block
runs, as doctest runs its examples, in a copy of its module's globals; a block
that defines ``test_`` functions is a pytest module and runs under pytest (with
the repository as rootdir).  Each runs in its own interpreter in the guest and
must exit 0: README blocks from the repository root, docstring blocks in an
empty temporary directory (a file they write lands there).
"""

from __future__ import annotations

import inspect
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import textwrap

import pytest

import vfio

pytestmark = pytest.mark.kernel

from tests.paths import REPO
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    return [(f"README.md block {i + 1}", m.group(1)) for i, m in enumerate(_FENCE.finditer(text))]


def literal_blocks(doc: str) -> list:
    """The ``::`` literal blocks of a reST docstring, dedented."""
    lines = inspect.cleandoc(doc).splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::"):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block = []
            while j < len(lines) and (not lines[j].strip() or lines[j][:1].isspace()):
                block.append(lines[j])
                j += 1
            code = textwrap.dedent("\n".join(block)).strip("\n")
            if code:
                out.append(code + "\n")
            i = j
        else:
            i += 1
    return out


def public_modules() -> list:
    names = ["vfio"]
    for info in pkgutil.walk_packages(vfio.__path__, "vfio."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def docstring_blocks() -> list:
    found = []
    for name in public_modules():
        mod = importlib.import_module(name)
        docs = [(name, mod.__doc__)]
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                docs.append((f"{name}.{attr}", obj.__doc__))
                if inspect.isclass(obj):
                    for mname, meth in sorted(vars(obj).items()):
                        if not mname.startswith("_") and inspect.isfunction(meth):
                            docs.append((f"{name}.{attr}.{mname}", meth.__doc__))
        for where, doc in docs:
            for k, code in enumerate(literal_blocks(doc or "")):
                found.append((f"{where} docstring example {k + 1}", name, code))
    return found


#: What an example uses -> the marker of the guests that have it: an example that
#: creates mediated devices needs the kernel's sample mdev parents (the built x86
#: kernels), so the legs without them deselect it, as they do the mdev tests.
_NEEDS = {"vfio.host.mdev": "mdev", "open_mdev_device": "mdev"}


def _marks(code: str) -> list:
    return [getattr(pytest.mark, m) for word, m in _NEEDS.items() if word in code]


def _run(argv: list, what: str, code: str, cwd: str = REPO) -> None:
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (f"{what} failed (exit {p.returncode}):\n{code}\n--- stdout\n{p.stdout}"
                               f"\n--- stderr\n{p.stderr}")


def test_the_examples_are_found():
    # the collectors below must see the examples this test is about
    assert [w for w, _ in readme_blocks()] == ["README.md block 1", "README.md block 2"]
    assert [bool(_marks(c)) for _, c in readme_blocks()] == [False, True]      # block 2 migrates mtty
    wheres = [w for w, _, _ in docstring_blocks()]
    assert "vfio docstring example 1" in wheres
    assert any(w.startswith("vfio.pci.config ") for w in wheres)


@pytest.mark.parametrize("what,code", [pytest.param(w, c, id=w, marks=_marks(c)) for w, c in readme_blocks()])
def test_readme_example_runs(what, code):
    _run([sys.executable, "-c", code], what, code)


@pytest.mark.parametrize("what,module,code", [pytest.param(w, m, c, id=w, marks=_marks(c))
                                               for w, m, c in docstring_blocks()])
def test_docstring_example_runs(what, module, code, tmp_path):
    if re.search(r"^def test_", code, re.M):
        path = tmp_path / "test_docstring_example.py"
        path.write_text(code)
        _run([sys.executable, "-m", "pytest", "-q", "-p", "no:benchmark", "-p", "no:cacheprovider",
              "--rootdir", REPO, "-c", os.path.join(REPO, "pyproject.toml"), str(path)], what, code)
        return
    runner = ("import importlib, sys\n"
              "ns = dict(vars(importlib.import_module(sys.argv[1])))\n"
              "exec(compile(sys.argv[2], sys.argv[3], 'exec'), ns)\n")
    _run([sys.executable, "-c", runner, module, code, what], what, code, cwd=str(tmp_path))
