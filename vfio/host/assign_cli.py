"""vfio-assign: hand PCI devices to vfio-pci and give them back.

    vfio-assign bind 0000:01:00.0            # by BDF (or 01:00.0)
    vfio-assign bind 8086:10d3 --dry-run     # every device with these IDs; print the writes only
    vfio-assign bind 00:1f.2 --whole-group   # take the IOMMU group's other members too
    vfio-assign bind 01:00.0 --user qemu     # and give /dev/vfio/N to user qemu
    vfio-assign release 01:00.0              # back to the driver it had
    vfio-assign release --all
    vfio-assign status                       # what is recorded as assigned

Exit status: 0 done; 1 a step failed and everything was rolled back (or an
I/O error before any change); 2 bad arguments or request refused (device in
use, companions in the group, no IOMMU, unknown device), nothing changed;
3 a step failed AND the rollback did not complete (the message says which
devices need attention); 4 another vfio-assign run holds the state lock
(with --no-wait).

See :mod:`vfio.host.assign` for what is done and why.
"""

from __future__ import annotations

import argparse
import grp
import json
import pwd
import sys

from .assign import AssignmentFailed, AssignmentRefused, Assigner, StateLocked, libvirt_xml, qemu_args
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


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vfio-assign", description="\n\n".join(__doc__.split("\n\n")[:2]),
                                 epilog=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="/", help="system root (a captured tree for testing; default /)")
    common.add_argument("--state", help="state file (default ROOT/run/vfio-assign/state.json)")
    common.add_argument("--no-wait", action="store_true", help="fail (exit 4) instead of waiting for another run")
    common.add_argument("--dry-run", action="store_true", help="print the exact sysfs writes, change nothing")
    common.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bind", parents=[common], help="bind devices (and their IOMMU group) to vfio-pci")
    b.add_argument("devices", nargs="+", metavar="BDF|VENDOR:DEVICE")
    b.add_argument("--whole-group", action="store_true", help="also take the group's other members from their drivers")
    b.add_argument("--force", action="store_true", help="take devices that are in use (mounted, up, boot VGA)")
    b.add_argument("--user", help="owner of /dev/vfio/N afterwards")
    b.add_argument("--group", help="group of /dev/vfio/N afterwards")
    r = sub.add_parser("release", parents=[common], help="put assigned devices back on their original drivers")
    r.add_argument("devices", nargs="*", metavar="BDF|VENDOR:DEVICE")
    r.add_argument("--all", action="store_true", help="every device recorded in the state file")
    r.add_argument("--force", action="store_true", help="release even while the group is held open")
    sub.add_parser("status", parents=[common], help="show the devices recorded as assigned")
    return ap


def _report_plan(host: Host, plan, args, out) -> None:
    if args.json:
        doc = {"action": plan.kind, "dry_run": args.dry_run,
               "devices": [{"bdf": d.bdf, "ids": d.ids, "driver_before": d.driver, "iommu_group": d.iommu_group}
                           for d in plan.devices],
               "skipped": [{"bdf": b, "reason": r} for b, r in plan.skipped],
               "writes": [{"kind": a.kind, "path": a.path, "value": a.value} for a in plan.actions(host)]}
        if plan.kind == "assign":
            bdfs = [d.bdf for d in plan.devices] + [b for b, _ in plan.skipped]
            doc["qemu_args"] = qemu_args(sorted(bdfs))
            doc["libvirt_hostdev"] = [libvirt_xml(b) for b in sorted(bdfs)]
        json.dump(doc, out, indent=1)
        out.write("\n")
        return
    if args.dry_run:
        print("# dry run: these are the writes that would be made, in order", file=out)
        for a in plan.actions(host):
            print(a, file=out)
        if not plan.ops:
            print("# (nothing to do)", file=out)
        return
    for b, reason in plan.skipped:
        print(f"{b}: {reason}", file=out)
    if plan.kind == "assign":
        for d in plan.devices:
            print(f"{d.bdf} [{d.ids}] on vfio-pci (was {d.driver or 'no driver'}), "
                  f"IOMMU group {d.iommu_group}: /dev/vfio/{d.iommu_group}", file=out)
        bdfs = sorted([d.bdf for d in plan.devices] + [b for b, _ in plan.skipped])
        if bdfs:
            print("\nQEMU:\n  " + " ".join(qemu_args(bdfs)), file=out)
            print("libvirt (inside <devices>):", file=out)
            for b in bdfs:
                print("  " + libvirt_xml(b).replace("\n", "\n  "), file=out)
    else:
        for d in plan.devices:
            now = host.device(d.bdf).driver
            print(f"{d.bdf} [{d.ids}] released: now on {now or 'no driver'}", file=out)
        if not plan.devices:
            print("nothing recorded as assigned", file=out)


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    sysfs = DryRunSysfs(args.root) if getattr(args, "dry_run", False) else Sysfs(args.root)
    host = Host(sysfs=sysfs)
    assigner = Assigner(host, args.state, wait=not args.no_wait)
    try:
        if args.cmd == "bind":
            plan = assigner.assign(args.devices, whole_group=args.whole_group, force=args.force,
                                   owner=_owner(args.user, args.group), dry_run=args.dry_run)
        elif args.cmd == "release":
            if not args.devices and not args.all:
                print("vfio-assign release: name devices or pass --all", file=sys.stderr)
                return EXIT_REFUSED
            plan = assigner.release(None if args.all else args.devices, dry_run=args.dry_run, force=args.force)
        else:
            state = assigner.status()
            if args.json:
                json.dump(state, out, indent=1)
                out.write("\n")
            else:
                for bdf, rec in sorted(state["devices"].items()):
                    print(f"{bdf} [{rec.get('ids')}] {rec.get('status')} since {rec.get('since')}, "
                          f"IOMMU group {rec.get('iommu_group')}, original driver "
                          f"{rec.get('driver') or 'none'}", file=out)
                if not state["devices"]:
                    print(f"nothing recorded as assigned ({assigner.state_path})", file=out)
            return EXIT_OK
    except StateLocked as e:
        print(f"vfio-assign: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except AssignmentFailed as e:
        print(f"vfio-assign: {e}", file=sys.stderr)
        return EXIT_ROLLBACK_INCOMPLETE if e.rollback_errors else EXIT_FAILED
    except (AssignmentRefused, HostError) as e:
        print(f"vfio-assign: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as e:
        print(f"vfio-assign: {e}", file=sys.stderr)
        return EXIT_FAILED
    _report_plan(host, plan, args, out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
