"""vfio-assign: hand PCI devices to vfio-pci and give them back.

    vfio-assign bind 0000:01:00.0            # by BDF (or 01:00.0)
    vfio-assign bind 8086:10d3 --dry-run     # every device with these IDs; print the writes only
    vfio-assign bind 00:1f.2 --whole-group   # take the IOMMU group's other members too
    vfio-assign bind 01:00.0 --user qemu     # and give /dev/vfio/N to user qemu
    vfio-assign release 01:00.0              # back to the driver it had
    vfio-assign release 00:1f.2 --whole-group   # and its group companions (or --split-group)
    vfio-assign release --all                # PCI and device-tree records alike
    vfio-assign status                       # what is recorded, checked against sysfs now
    vfio-assign bind a000000.virtio_mmio     # a device-tree device, by name: vfio-platform/vfio-amba

What bind prints: each device with its IOMMU group node, then how to hand the
devices to a guest: QEMU arguments (one `-device vfio-pci,host=BDF` per
function; the functions of one multifunction device share a guest slot,
`addr=SLOT.FN`, function 0 with `multifunction=on`, slot 0x10 up unless
--guest-slot says otherwise) and libvirt <hostdev> elements (managed='no')
for the domain's <devices>.  With --json the same are `qemu_args` (the
argument words, ready for an argv list), `libvirt_hostdev` (one string per
function), `qemu_note` (the slot choice) and `not_for_qemu` (devices QEMU
cannot use, e.g. in no-IOMMU mode, with the reason).  `status` compares every
record with sysfs and says what `release` will do about a difference; every
command says when an earlier run was interrupted half-way.  Device-tree
(platform, AMBA) devices are kept in their own state file beside the PCI one
(ROOT/run/vfio-assign/platform-state.json); `status`, `release --all` and the
interrupted-run note cover both unless --state names one file.

Exit status: 0 done; 1 a step failed and everything was rolled back (or an
I/O error before any change); 2 bad arguments or request refused (device in
use, companions in the group, no IOMMU, unknown device, a corrupt state file,
a --root that does not exist), nothing changed; 3 a step failed AND some
device is not back where it was (the message says where each one is, and
`vfio-assign release` puts it back); 4 another vfio-assign run holds the
state lock (with --no-wait).

See :mod:`vfio.host.assign` for what is done and why.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import sys

from .._cli import entry_point  # closed pipe, Ctrl-C, warnings: as tools end
from .assign import (DEFAULT_GUEST_SLOT, PLATFORM_STATE, STATE_SCHEMA, AssignmentFailed, AssignmentRefused, Assigner,
                     Condition, PlatformAssigner, StateLocked, guest_layout, interrupted, layout_note, libvirt_xml,
                     qemu_args)
from . import ASSIGN_STATE_FILE
from .sysfs import DryRunSysfs, Host, HostError, Sysfs

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_ROLLBACK_INCOMPLETE, EXIT_LOCKED = 0, 1, 2, 3, 4


def _owner(user: str | None, group: str | None) -> tuple | None:
    if user is None and group is None:
        return None
    try:
        uid = -1 if user is None else (int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid)
        gid = -1 if group is None else (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
    except KeyError as e:
        raise HostError(f"unknown user or group {e.args[0]}") from None
    return uid, gid


def _slot(text: str) -> int:
    try:
        n = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a slot number in hex (e.g. 0x10)") from None
    if not 1 <= n <= 0x1e:
        raise argparse.ArgumentTypeError(f"slot {text} is outside 0x01..0x1e")
    return n


def _parser() -> argparse.ArgumentParser:
    paras = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(prog="vfio-assign", description="\n\n".join(paras[:2]),
                                 epilog="\n\n".join(paras[2:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="/", help="system root (a captured tree for testing; default /)")
    common.add_argument("--state", help="state file (default ROOT/run/vfio-assign/state.json)")
    common.add_argument("--no-wait", action="store_true", help="fail (exit 4) instead of waiting for another run")
    common.add_argument("--dry-run", action="store_true", help="print the exact sysfs writes, change nothing")
    common.add_argument("--json", action="store_true",
                        help="machine-readable result on stdout (bind: with qemu_args and libvirt_hostdev)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bind", parents=[common], help="bind devices (and their IOMMU group) to vfio-pci; "
                       "prints the QEMU arguments and libvirt XML that pass them to a guest")
    b.add_argument("devices", nargs="+", metavar="BDF|VENDOR:DEVICE")
    b.add_argument("--whole-group", action="store_true", help="also take the group's other members from their drivers")
    b.add_argument("--force", action="store_true", help="take devices that are in use (mounted, up, boot VGA)")
    b.add_argument("--user", help="owner of /dev/vfio/N afterwards")
    b.add_argument("--group", help="group of /dev/vfio/N afterwards")
    b.add_argument("--guest-slot", type=_slot, default=DEFAULT_GUEST_SLOT, metavar="HEX",
                   help="first guest slot for a multifunction device in the QEMU/libvirt snippets (default 0x10)")
    r = sub.add_parser("release", parents=[common], help="put assigned devices back on their original drivers")
    r.add_argument("devices", nargs="*", metavar="BDF|VENDOR:DEVICE")
    r.add_argument("--all", action="store_true", help="every device recorded in the state file")
    r.add_argument("--force", action="store_true", help="release even while the group is held open")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--whole-group", action="store_true",
                   help="also release the devices assigned with the named ones in their IOMMU groups")
    g.add_argument("--split-group", action="store_true",
                   help="release only the named devices; their group companions stay on vfio-pci")
    sub.add_parser("status", parents=[common], help="show the recorded devices, checked against sysfs now")
    return ap


def _noiommu_reason(host: Host, bdf: str) -> str | None:
    """Why QEMU cannot take this device, or None when it can."""
    g = host.device(bdf).iommu_group
    if g is not None and host.is_noiommu_group(g):
        return (f"IOMMU group {g} is a no-IOMMU group (/dev/vfio/noiommu-{g}): nothing isolates the "
                "device's DMA, and QEMU's vfio-pci needs an IOMMU group (it cannot use this one); only "
                "a userspace driver that accepts no-IOMMU mode can (DPDK, vfio.open_pci_device)")
    return None


def _node(host: Host, group: str | None) -> str:
    if group is None:
        return "no IOMMU group"
    return f"IOMMU group {group}: /dev/vfio/{'noiommu-' if host.is_noiommu_group(group) else ''}{group}"


def _report_plan(host: Host, plan, args, out, platform_plan=None) -> None:
    """What a PCI run did (``platform_plan``: and the device-tree part of ``release --all``)."""
    bdfs = sorted([d.bdf for d in plan.devices] + [b for b, _ in plan.skipped]) if plan.kind == "assign" else []
    # a dry run has not bound anything yet: no group is a no-IOMMU one before vfio-pci makes it
    unusable = {b: r for b in bdfs if (r := _noiommu_reason(host, b))}
    usable = [b for b in bdfs if b not in unusable]
    if args.json:
        doc = {"action": plan.kind, "dry_run": args.dry_run,
               "devices": [{"bdf": d.bdf, "ids": d.ids, "driver_before": d.driver, "iommu_group": d.iommu_group}
                           for d in plan.devices],
               "skipped": [{"bdf": b, "reason": r} for b, r in plan.skipped],
               "writes": [{"kind": a.kind, "path": a.path, "value": a.value} for a in plan.actions(host)]}
        if plan.kind == "assign":
            doc["qemu_args"] = qemu_args(usable, args.guest_slot)
            doc["libvirt_hostdev"] = [libvirt_xml(p.host, p) for p in guest_layout(usable, args.guest_slot)]
            doc["qemu_note"] = layout_note(usable, args.guest_slot)
            doc["not_for_qemu"] = [{"bdf": b, "reason": r} for b, r in sorted(unusable.items())]
        if platform_plan is not None:
            doc["platform"] = _platform_doc(host, platform_plan, args)
        json.dump(doc, out, indent=1)
        out.write("\n")
        return
    if args.dry_run:
        _dry_run_text(host, plan, out, nothing=platform_plan is None or not platform_plan.ops)
        if platform_plan is not None and platform_plan.ops:
            _dry_run_text(host, platform_plan, out)
        return
    for b, reason in plan.skipped:
        print(f"{b}: {reason}", file=out)
    if plan.kind == "assign":
        for d in plan.devices:
            print(f"{d.bdf} [{d.ids}] on vfio-pci (was {d.driver or 'no driver'}), "
                  f"{_node(host, host.device(d.bdf).iommu_group)}", file=out)
        if usable:
            print("\nQEMU:\n  " + " ".join(qemu_args(usable, args.guest_slot)), file=out)
            note = layout_note(usable, args.guest_slot)
            if note:
                print(f"  ({note})", file=out)
            print("libvirt (inside <devices>):", file=out)
            for p in guest_layout(usable, args.guest_slot):
                print("  " + libvirt_xml(p.host, p).replace("\n", "\n  "), file=out)
        for b, r in sorted(unusable.items()):
            print(f"{b}: no QEMU or libvirt snippet: {r}", file=out)
    else:
        for d in plan.devices:
            now = host.device(d.bdf).driver
            print(f"{d.bdf} [{d.ids}] released: now on {now or 'no driver'}", file=out)
        if platform_plan is not None:
            _platform_text(host, platform_plan, out)
        if not any(p is not None and (p.devices or p.skipped) for p in (plan, platform_plan)):
            print("nothing recorded as assigned", file=out)


def _dry_run_text(host: Host, plan, out, nothing: bool = True) -> None:
    print("# dry run: these are the writes that would be made, in order", file=out)
    for a in plan.actions(host):
        print(a, file=out)
    if not plan.ops and nothing:
        print("# (nothing to do)", file=out)


def _platform_doc(host: Host, plan, args) -> dict:
    return {"action": plan.kind, "dry_run": args.dry_run,
            "devices": [{"name": n.name, "bus": n.bus.value, "dt_path": n.dt_path,
                         "driver_before": n.driver, "iommu_group": n.iommu_group} for n in plan.devices],
            "skipped": [{"name": b, "reason": r} for b, r in plan.skipped],
            "writes": [{"kind": a.kind, "path": a.path, "value": a.value} for a in plan.actions(host)]}


def _platform_text(host: Host, plan, out) -> None:
    for b, reason in plan.skipped:
        print(f"{b}: {reason}", file=out)
    for n in plan.devices:
        now = host.platform_device(n.name)
        if plan.kind == "assign":
            print(f"{n.name} ({n.dt_path}) on {now.driver} (was {n.driver or 'no driver'}), "
                  f"{_node(host, now.iommu_group)}", file=out)
        else:
            print(f"{n.name} ({n.dt_path}) released: now on {now.driver or 'no driver'}", file=out)


def _status(assigner: Assigner, args, out) -> None:
    rows = assigner.reconcile()
    plat = _platform_rows(assigner.host, args)
    if args.json:
        doc = {"schema": STATE_SCHEMA, "state_file": assigner.state_path, "devices": {r.bdf: r.as_dict() for r in rows}}
        if plat is not None:        # device-tree devices: their own state file
            doc["platform_state_file"], doc["platform_devices"] = plat[0], {r.bdf: r.as_dict() for r in plat[1]}
        json.dump(doc, out, indent=1)
        out.write("\n")
        return
    for r in (plat[1] if plat is not None else []):
        _status_line(r, f"{r.bdf} ({r.record.get('bus')}, {r.record.get('dt_path')})", out)
        if r.condition is Condition.ASSIGNED:
            origin = _dt_origin(assigner.host, r.bdf)
            if origin:
                print(f"    {origin}", file=out)
    for r in rows:
        _status_line(r, f"{r.bdf} [{r.record.get('ids')}]", out)
    if not rows and not (plat and plat[1]):
        print(f"nothing recorded as assigned ({assigner.state_path})", file=out)


def _status_line(r, head: str, out) -> None:
    """One record of ``status``: the same shape for a PCI function and a device-tree device."""
    rec = r.record
    if r.condition is Condition.ASSIGNED:
        print(f"{head} assigned since {rec.get('since')}, IOMMU group {rec.get('iommu_group')}, "
              f"original driver {rec.get('driver') or 'none'}", file=out)
        return
    print(f"{head} {r.condition.value.upper()}: {r.note}", file=out)
    print(f"    `vfio-assign release {r.bdf}` will: {'; '.join(r.release_will)}", file=out)


def _dt_origin(host: Host, name: str) -> str:
    """Where an assigned device-tree device's VFIO regions and IRQs come from (what a
    capture writes as DTPATH/DTINDEX): its node, ``compatible`` and ``reg`` entries;
    IRQ *i* is ``interrupts`` entry *i* of the same node.  '' when it has no node."""
    from ..platform import region_phys
    n = host.platform_device(name)
    if n.dt_path is None:
        return ""
    try:
        regs = region_phys(n, host.sysfs)
    except ValueError as e:             # a malformed reg: say so, the status goes on
        regs, bad = [], f" ({e})"
    else:
        bad = ""
    shown = ", ".join(f"reg[{i}] {'0x%x' % a if a is not None else 'untranslatable'}" for i, a in enumerate(regs))
    compat = f" [{', '.join(n.compatible)}]" if n.compatible else ""
    return (f"device-tree node {n.dt_path}{compat}: region i is reg[i] ({shown or 'none'}{bad}), "
            "IRQ i is interrupts[i]")


def _platform_rows(host: Host, args):
    """(state file, reconciled rows) of vfio-assign's device-tree records in the default
    platform state file, or None when there is none (the usual case) or ``--state``
    names another file (which then holds one kind of record: see it with that kind)."""
    path = host.sysfs.path(PLATFORM_STATE)
    if args.state is not None or not os.path.exists(path):
        return None
    return path, PlatformAssigner(host, path).reconcile()


def _state_files(host: Host, args, platform: bool) -> list:
    """(path, is_platform) of the state files a run looks at: the one --state names
    (of the run's kind), else the PCI and the device-tree one."""
    if args.state is not None:
        return [(args.state, platform)]
    return [(host.sysfs.path(ASSIGN_STATE_FILE), False), (host.sysfs.path(PLATFORM_STATE), True)]


def _say_interrupted(host: Host, args, platform: bool = False) -> None:
    """On every start: name the devices an interrupted run left half-way (PCI and
    device-tree records alike)."""
    for path, plat in _state_files(host, args, platform):
        try:
            left = interrupted(host, path, platform=plat)
        except HostError:
            continue        # a corrupt state file: the command using it says so
        for r in left:
            if r.condition is Condition.INTERRUPTED:
                print(f"vfio-assign: note: {r.bdf}: {r.note}; `vfio-assign release {r.bdf}` will: "
                      f"{'; '.join(r.release_will)}", file=sys.stderr)


def _attempt(fn):
    """(exit status, result) of one run: errors said on stderr, mapped to the exit statuses."""
    try:
        return EXIT_OK, fn()
    except StateLocked as e:
        print(f"vfio-assign: {e}", file=sys.stderr)
        return EXIT_LOCKED, None
    except AssignmentFailed as e:
        print(f"vfio-assign: {e}", file=sys.stderr)
        return (EXIT_ROLLBACK_INCOMPLETE if e.incomplete else EXIT_FAILED), None
    except (AssignmentRefused, HostError) as e:
        print(f"vfio-assign: {e}", file=sys.stderr)
        return EXIT_REFUSED, None
    except OSError as e:
        print(f"vfio-assign: {e}", file=sys.stderr)
        return EXIT_FAILED, None


#: Which exit status wins when ``release --all`` ran both kinds: the most serious.
_SEVERITY = (EXIT_ROLLBACK_INCOMPLETE, EXIT_FAILED, EXIT_LOCKED, EXIT_REFUSED, EXIT_OK)


def _is_platform(host: Host, name: str) -> bool:
    """Whether ``name`` is a device-tree (platform/AMBA) device name rather than a PCI spec."""
    if "/" in name or name in (".", ".."):
        return False
    return any(host.sysfs.is_dir(f"sys/bus/{bus}/devices/{name}") for bus in ("platform", "amba"))


def _platform_main(host: Host, args, out) -> int:
    """bind/release of device-tree devices (vfio-platform, vfio-amba): same rules,
    exit statuses, --dry-run and --json as for PCI; their own state file
    (ROOT/run/vfio-assign/platform-state.json unless --state)."""
    names = list(args.devices)
    mixed = [n for n in names if not _is_platform(host, n)]
    if mixed:
        print(f"vfio-assign: {', '.join(mixed)}: not platform/amba devices; bind PCI and device-tree "
              "devices in separate runs", file=sys.stderr)
        return EXIT_REFUSED
    _say_interrupted(host, args, platform=True)
    pa = PlatformAssigner(host, args.state, wait=not args.no_wait)
    if args.cmd == "bind":
        rc, plan = _attempt(lambda: pa.assign(names, force=args.force, owner=_owner(args.user, args.group),
                                              dry_run=args.dry_run))
    else:
        rc, plan = _attempt(lambda: pa.release(names, dry_run=args.dry_run, force=args.force))
    if rc != EXIT_OK:
        return rc
    if args.json:
        json.dump(_platform_doc(host, plan, args), out, indent=1)
        out.write("\n")
    elif args.dry_run:
        _dry_run_text(host, plan, out)
    else:
        _platform_text(host, plan, out)
    return EXIT_OK


@entry_point("vfio-assign")
def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    if not os.path.isdir(args.root):
        print(f"vfio-assign: --root {args.root}: no such directory", file=sys.stderr)
        return EXIT_REFUSED
    sysfs = DryRunSysfs(args.root) if getattr(args, "dry_run", False) else Sysfs(args.root)
    host = Host(sysfs=sysfs)
    if args.cmd in ("bind", "release") and args.devices and _is_platform(host, args.devices[0]):
        return _platform_main(host, args, out)
    assigner = Assigner(host, args.state, wait=not args.no_wait)
    if args.cmd == "status":        # status reports each record's condition itself
        return _attempt(lambda: _status(assigner, args, out))[0]
    _say_interrupted(host, args)
    if args.cmd == "bind":
        rc, plan = _attempt(lambda: assigner.assign(args.devices, whole_group=args.whole_group, force=args.force,
                                                    owner=_owner(args.user, args.group), dry_run=args.dry_run))
        if rc == EXIT_OK:
            _report_plan(host, plan, args, out)
        return rc
    if not args.devices and not args.all:
        print("vfio-assign release: name devices or pass --all", file=sys.stderr)
        return EXIT_REFUSED
    rc, plan = _attempt(lambda: assigner.release(None if args.all else args.devices, dry_run=args.dry_run,
                                                 force=args.force, whole_group=args.whole_group,
                                                 split_group=args.split_group))
    prc, pplan = EXIT_OK, None
    if args.all and args.state is None:
        # the device-tree records too; a missing file is left uncreated (nothing to release)
        pa = PlatformAssigner(host, wait=not args.no_wait)
        if os.path.exists(pa.state_path):
            prc, pplan = _attempt(lambda: pa.release(None, dry_run=args.dry_run, force=args.force))
    if plan is not None:
        _report_plan(host, plan, args, out, pplan)
    elif pplan is not None:         # the PCI part failed (said on stderr): report the rest alone
        if args.json:
            json.dump({"platform": _platform_doc(host, pplan, args)}, out, indent=1)
            out.write("\n")
        elif args.dry_run:
            _dry_run_text(host, pplan, out)
        else:
            _platform_text(host, pplan, out)
    return min((rc, prc), key=_SEVERITY.index)


if __name__ == "__main__":
    sys.exit(main())
