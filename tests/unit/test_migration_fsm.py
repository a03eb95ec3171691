"""The migration state machine walker (vfio.migration.next_state / transition_path)
against an oracle written from the kernel's *documented* rules, not its table:

* the arcs a driver must implement for its flags (the comment above
  vfio_mig_get_next_state() in drivers/vfio/vfio_main.c, Linux 6.12),
* the combination transitions that comment lists for a driver with every flag,
* include/uapi/linux/vfio.h: a combination path is a shortest one, with no
  saving-group state (PRE_COPY, PRE_COPY_P2P, STOP_COPY) in its interior;
  STOP_COPY -> PRE_COPY(_P2P) is blocked; ERROR cannot be asked for.

The kernel test (tests/kernel/test_migration_mtty.py) walks a real mtty device
through every pair and compares with :func:`oracle_path` too.
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from vfio.migration import MigFlag, MigState, UnsupportedTransition, next_state, supported_states, transition_path

S = MigState
F = MigFlag
ALL = F.STOP_COPY | F.P2P | F.PRE_COPY


def _arcs(text: str) -> set:
    out = set()
    for line in text.strip().splitlines():
        a, b = (s.strip() for s in line.split("->"))
        out.add((S[a], S[b]))
    return out


# the driver's mandatory arcs, per flag, as the kernel comment lists them
_BASE_ARCS = _arcs("""
RESUMING -> STOP
STOP -> RESUMING
STOP -> STOP_COPY
STOP_COPY -> STOP
""")
_P2P_ARCS = _arcs("""
RUNNING -> RUNNING_P2P
RUNNING_P2P -> RUNNING
RUNNING_P2P -> STOP
STOP -> RUNNING_P2P
""")
_PRE_ARCS = _arcs("""
RUNNING -> PRE_COPY
PRE_COPY -> RUNNING
PRE_COPY -> STOP_COPY
""")
_PRE_P2P_ARCS = _arcs("""
PRE_COPY -> RUNNING
PRE_COPY -> PRE_COPY_P2P
PRE_COPY_P2P -> PRE_COPY
PRE_COPY_P2P -> RUNNING_P2P
PRE_COPY_P2P -> STOP_COPY
RUNNING -> PRE_COPY
RUNNING_P2P -> PRE_COPY_P2P
""")
_NO_P2P_ARCS = _arcs("""
RUNNING -> STOP
STOP -> RUNNING
""")

#: The combination transitions the kernel comment lists for a driver with every flag.
COMBINATIONS_ALL_FLAGS = [tuple(S[s.strip()] for s in line.split("->")) for line in """
PRE_COPY -> PRE_COPY_P2P -> STOP_COPY
PRE_COPY -> RUNNING -> RUNNING_P2P
PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP
PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP -> RESUMING
PRE_COPY_P2P -> RUNNING_P2P -> RUNNING
PRE_COPY_P2P -> RUNNING_P2P -> STOP
PRE_COPY_P2P -> RUNNING_P2P -> STOP -> RESUMING
RESUMING -> STOP -> RUNNING_P2P
RESUMING -> STOP -> RUNNING_P2P -> PRE_COPY_P2P
RESUMING -> STOP -> RUNNING_P2P -> RUNNING
RESUMING -> STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
RESUMING -> STOP -> STOP_COPY
RUNNING -> RUNNING_P2P -> PRE_COPY_P2P
RUNNING -> RUNNING_P2P -> STOP
RUNNING -> RUNNING_P2P -> STOP -> RESUMING
RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY
RUNNING_P2P -> RUNNING -> PRE_COPY
RUNNING_P2P -> STOP -> RESUMING
RUNNING_P2P -> STOP -> STOP_COPY
STOP -> RUNNING_P2P -> PRE_COPY_P2P
STOP -> RUNNING_P2P -> RUNNING
STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
STOP_COPY -> STOP -> RESUMING
STOP_COPY -> STOP -> RUNNING_P2P
STOP_COPY -> STOP -> RUNNING_P2P -> RUNNING
""".strip().splitlines()]

BLOCKED = {(S.STOP_COPY, S.PRE_COPY), (S.STOP_COPY, S.PRE_COPY_P2P)}
SAVING = {S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY}
#: arcs that start a data transfer session (vfio.h: "will return a new data_fd")
OPENS_DATA_FD = _arcs("""
RUNNING -> PRE_COPY
RUNNING_P2P -> PRE_COPY_P2P
STOP -> STOP_COPY
STOP -> RESUMING
""")

FLAG_SETS = [F.STOP_COPY, F.STOP_COPY | F.P2P, F.STOP_COPY | F.PRE_COPY, ALL]


def oracle_states(flags: MigFlag) -> set:
    states = {S.RUNNING, S.STOP, S.STOP_COPY, S.RESUMING}
    if F.P2P in flags:
        states.add(S.RUNNING_P2P)
    if F.PRE_COPY in flags:
        states.add(S.PRE_COPY)
        if F.P2P in flags:
            states.add(S.PRE_COPY_P2P)
    return states


def oracle_arcs(flags: MigFlag) -> set:
    arcs = set(_BASE_ARCS)
    if F.P2P in flags:
        arcs |= _P2P_ARCS
    else:
        arcs |= _NO_P2P_ARCS
    if F.PRE_COPY in flags:
        arcs |= _PRE_P2P_ARCS if F.P2P in flags else _PRE_ARCS
    if F.P2P in flags and F.PRE_COPY in flags:
        arcs.discard((S.PRE_COPY, S.STOP_COPY))    # goes through PRE_COPY_P2P when P2P exists
    return arcs


def oracle_path(a: MigState, b: MigState, flags: MigFlag = ALL):
    """The arcs the kernel takes from ``a`` to ``b`` (list of (src, dst)), or None if blocked.
    With every flag: the kernel comment's own list; otherwise the uAPI's rule (all
    shortest paths over the mandatory arcs with no saving state inside) -- returned
    as a set of candidate paths when several are equally short."""
    if a == b:
        return []
    if (a, b) in BLOCKED:
        return None
    if flags == ALL:
        for combo in COMBINATIONS_ALL_FLAGS:
            if combo[0] == a and combo[-1] == b:
                return list(zip(combo, combo[1:]))
        assert (a, b) in oracle_arcs(flags), f"the oracle has no rule for {a.name}->{b.name}"
        return [(a, b)]
    return _shortest(a, b, flags)


def _shortest(a, b, flags):
    arcs = oracle_arcs(flags)
    best, found = None, []
    q = deque([[a]])
    while q:
        path = q.popleft()
        if best is not None and len(path) > best:
            break
        cur = path[-1]
        if cur == b:
            best = len(path)
            found.append(list(zip(path, path[1:])))
            continue
        if len(path) > 1 and cur in SAVING:
            continue            # a saving state may only start or end a path
        for (x, y) in sorted(arcs):
            if x == cur and y not in path:
                q.append(path + [y])
    return found or None


def test_oracle_is_complete_for_every_flag_set():
    for flags in FLAG_SETS:
        states = oracle_states(flags)
        for a, b in itertools.product(states, repeat=2):
            p = oracle_path(a, b, flags)
            assert p is not None or (a, b) in BLOCKED, (flags, a, b)


def test_supported_states_match_the_uapi():
    for flags in FLAG_SETS:
        assert supported_states(flags) == oracle_states(flags)


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: str(f.value))
def test_every_pair_follows_the_kernel_rules(flags):
    states = oracle_states(flags)
    arcs = oracle_arcs(flags)
    for a, b in itertools.product(sorted(states), repeat=2):
        want = oracle_path(a, b, flags)
        if want is None:
            with pytest.raises(UnsupportedTransition) as ei:
                transition_path(a, b, flags)
            assert ei.value.current == a and ei.value.target == b
            assert "STOP_COPY" in str(ei.value) and b.name in str(ei.value)
            continue
        got = list(transition_path(a, b, flags))
        assert all(arc in arcs for arc in got), (a, b, got)
        if flags == ALL or a == b:
            assert got == want, f"{a.name}->{b.name}: {got} vs the kernel comment's {want}"
        else:
            assert got in want, f"{a.name}->{b.name}: {got} is not a shortest valid path {want}"


def test_all_flags_pairs_are_the_kernel_list_exactly():
    # 7 states: 42 ordered pairs = 15 direct arcs + 25 listed combinations + 2 blocked
    pairs = [(a, b) for a, b in itertools.product(oracle_states(ALL), repeat=2) if a != b]
    direct = [p for p in pairs if p not in BLOCKED and len(transition_path(*p, ALL)) == 1]
    assert len(pairs) == 42
    combos = {(c[0], c[-1]) for c in COMBINATIONS_ALL_FLAGS}
    assert len(combos) == 25
    assert len(direct) == 15 and set(direct) == oracle_arcs(ALL)


def test_unsupported_targets_are_refused_before_any_call():
    with pytest.raises(UnsupportedTransition, match="does not support PRE_COPY"):
        next_state(S.RUNNING, S.PRE_COPY, F.STOP_COPY | F.P2P)
    with pytest.raises(UnsupportedTransition, match="does not support RUNNING_P2P"):
        next_state(S.STOP, S.RUNNING_P2P, F.STOP_COPY)
    with pytest.raises(UnsupportedTransition, match="does not support ERROR"):
        next_state(S.RUNNING, S.ERROR, ALL)
    with pytest.raises(UnsupportedTransition, match="current state ERROR"):
        next_state(S.ERROR, S.RUNNING, ALL)
    with pytest.raises(UnsupportedTransition, match="STOP_COPY is mandatory"):
        next_state(S.RUNNING, S.STOP, F.P2P)
    e = UnsupportedTransition
    assert issubclass(e, ValueError)
    import vfio
    assert issubclass(e, vfio.Error)


def test_skipped_states_without_p2p():
    # without P2P the table's RUNNING_P2P steps are skipped: RUNNING -> STOP directly
    assert transition_path(S.RUNNING, S.STOP, F.STOP_COPY) == ((S.RUNNING, S.STOP),)
    assert transition_path(S.RUNNING, S.STOP_COPY, F.STOP_COPY) == ((S.RUNNING, S.STOP), (S.STOP, S.STOP_COPY))
    # without P2P, PRE_COPY -> STOP_COPY is one arc
    assert transition_path(S.PRE_COPY, S.STOP_COPY, F.STOP_COPY | F.PRE_COPY) == ((S.PRE_COPY, S.STOP_COPY),)
