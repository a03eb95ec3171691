"""Process conventions shared by the console scripts (vfio-inspect, vfio-assign, vfio-capture).

A command-line tool is judged by how it ends as much as by what it prints:

* **A closed pipe** (``vfio-inspect | head``): the reader went away, nothing
  is wrong.  C tools such as ``lspci`` and coreutils are killed by SIGPIPE on
  their next write, silently, and the shell reports status 141 (128 + 13).
  Python instead ignores SIGPIPE and raises :class:`BrokenPipeError`, which
  used to end in a traceback and status 1.  :func:`entry_point` ends the
  process the way the C tools end: quietly, by SIGPIPE, so ``set -o pipefail``
  scripts see exactly what they see for ``lspci | head``.  (Python's own
  recipe exits 1, which a script cannot tell from a real failure.)  SIGPIPE is
  not simply reset to its default at start-up: a tool that is changing the
  host (vfio-assign binding a group) must not be killed between two sysfs
  writes by a write to a pipe; the exception unwinds through its rollback
  first, and the process dies only at the top.
* **Ctrl-C**: no traceback, status 130 (128 + SIGINT), as shells report it.
* **Warnings** (e.g. :class:`vfio.NoIommuWarning`): one line
  ``PROG: warning: MESSAGE`` on stderr, as tools word them, instead of
  Python's ``file:line: Category: message`` and the source line.

These apply when the function is the program, i.e. when the console script
(or ``python -m``) calls ``main()`` with no arguments.  Called with an
argument list (tests, other Python code) ``main`` behaves as a plain function:
the caller keeps its own warning handling and its process is never signalled.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

# select and signal are imported where they are used: only on the way out through a
# closed pipe, so every command's start-up does not pay for them

EXIT_INTERRUPTED = 130


def stdout_reader_gone(fd: int = 1) -> bool:
    """True when ``fd`` is a pipe (or socket) whose reading end is closed.

    poll(2) reports POLLERR on the writing end of a pipe without readers, so
    this is answered without writing anything."""
    import select
    try:
        p = select.poll()
        p.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in p.poll(0))
    except (OSError, ValueError):
        return False


def die_of_sigpipe() -> None:
    """End the process the way a C tool ends on a closed pipe: killed by SIGPIPE (shell status 141).

    stdout is pointed at /dev/null first so that nothing buffered is written
    (and fails again) while the interpreter shuts down."""
    import signal
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    # Not reached on POSIX; if the signal were blocked, the conventional status.
    os._exit(128 + signal.SIGPIPE)


def tool_warning_formatter(prog: str):
    """A :func:`warnings.showwarning` replacement printing ``PROG: warning: MESSAGE``."""
    def show(message, category, filename, lineno, file=None, line=None):
        out = file if file is not None else sys.stderr
        try:
            out.write(f"{prog}: warning: {' '.join(str(message).split())}\n")
        except (OSError, ValueError):
            pass            # stderr gone too: a warning is not worth dying for
    return show


class StdoutClosed(BaseException):
    """stdout's reader went away.  A BaseException, like KeyboardInterrupt, so that a
    command's ``except OSError`` (meant for the device or sysfs) does not report it
    as an error of its own; ``finally`` blocks and context managers still run."""


class _GuardedStdout:
    """sys.stdout as the command sees it: a write or flush that meets a closed pipe
    raises :class:`StdoutClosed` instead of :class:`BrokenPipeError`."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise StdoutClosed() from None

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        try:
            return self._stream.flush()
        except BrokenPipeError:
            raise StdoutClosed() from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def entry_point(prog: str):
    """Decorator for a console script's ``main(argv=None, ...)``.  See the module docstring."""
    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            if args or kwargs:
                return main(*args, **kwargs)
            real = sys.stdout
            try:
                with warnings.catch_warnings():
                    warnings.showwarning = tool_warning_formatter(prog)
                    sys.stdout = _GuardedStdout(real)
                    try:
                        rc = main()
                    except SystemExit as e:     # argparse: --help, usage errors
                        rc = e.code
                    finally:
                        sys.stdout = real
                real.flush()            # a broken pipe on the last buffered output surfaces here
            except StdoutClosed:
                die_of_sigpipe()
            except BrokenPipeError as e:
                if stdout_reader_gone():
                    die_of_sigpipe()
                # some other pipe or socket broke: a real error, said as one
                print(f"{prog}: {e}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED
            return rc
        return run
    return wrap
