"""Dispatcher on a bare epoll: what it did over ``selectors`` it still does,
including the cases a fast path could get wrong (an eventfd closed or removed
by an earlier handler of the same wakeup, a subclass with its own read())."""

from __future__ import annotations

import errno

import pytest

from vfio.errors import VfioError
from vfio.irq import Dispatcher, EventFd


def test_an_eventfd_closed_by_an_earlier_handler_raises_ebadf_not_a_stray_read():
    a, b = EventFd("a"), EventFd("b")
    with Dispatcher() as d:
        def close_other(e, n):
            (b if e is a else a).close()
        d.add(a, close_other)
        d.add(b, close_other)
        a.signal()
        b.signal()
        with pytest.raises(VfioError) as ei:
            d.poll(1)
        assert ei.value.errno == errno.EBADF
    a.close()
    b.close()


def test_an_eventfd_removed_by_an_earlier_handler_is_skipped():
    a, b = EventFd("a"), EventFd("b")
    seen = []
    with Dispatcher() as d:
        def handler(e, n):
            seen.append(e.label)
            d.remove(b if e is a else a)
        d.add_all([a, b], handler)
        a.signal()
        b.signal()
        assert d.poll(1) == 1 and len(seen) == 1
        other = b if seen == ["a"] else a
        assert other.read() == 1                    # still pending: it was not read for nobody
    a.close()
    b.close()


def test_a_subclass_read_is_called_and_counts_pass_through():
    class Halving(EventFd):
        def read(self):
            return super().read() // 2
    h, plain = Halving("h"), EventFd("p")
    got = {}
    with Dispatcher() as d:
        d.add_all([h, plain], lambda e, n: got.__setitem__(e.label, n))
        h.signal(6)
        plain.signal(5)
        assert d.poll(1) == 2 and got == {"h": 3, "p": 5}
        h.signal(1)                                 # read() gives 0: no handler runs
        assert d.poll(0.01) == 0
    h.close()
    plain.close()


def test_errors_as_before():
    e = EventFd("e")
    with Dispatcher() as d:
        d.add(e, lambda *_: None)
        with pytest.raises(KeyError):
            d.add(e, lambda *_: None)
        d.remove(e)
        with pytest.raises(KeyError):
            d.remove(e)
        assert d.poll(0) == 0                       # empty: still polls
    e.close()
    with pytest.raises(VfioError) as ei:
        Dispatcher().add(e, lambda *_: None)
    assert ei.value.errno == errno.EBADF


def test_poll_none_waits_and_a_short_timeout_rounds_up():
    e = EventFd("e")
    with Dispatcher() as d:
        d.add(e, lambda *_: None)
        assert d.poll(0.0001) == 0                  # 0.1 ms: epoll waits 1 ms, does not spin
        e.signal()
        assert d.poll(None) == 1
    e.close()
