"""vfio-mdev: list, create, remove and define mediated devices (mdevctl's verbs).

    vfio-mdev types [-p mtty]                       # parents, their types, instances left
    vfio-mdev list [-v]                             # live mdevs: UUID PARENT TYPE
    vfio-mdev list -d                               # saved definitions
    vfio-mdev start -p mtty -t mtty-2 [-u UUID]     # create one (a random UUID is printed)
    vfio-mdev start -u UUID                         # create a defined one
    vfio-mdev stop -u UUID                          # remove (refused while it is open)
    vfio-mdev define -p mtty -t mtty-2 [-u UUID] [--auto]   # save a definition
    vfio-mdev define -u UUID                        # save a live mdev as it is
    vfio-mdev undefine -u UUID                      # forget a definition (the mdev stays)
    vfio-mdev ... --dumpjson                        # mdevctl's JSON (types, list); --json too
    vfio-mdev start|stop|define|undefine ... --dry-run   # print what would be written

Definitions are mdevctl's files: DIR/PARENT/UUID holding {"mdev_type",
"start", "attrs"}; DIR is --config-dir, else $VFIO_MDEV_CONFIG_DIR, else
ROOT/etc/vfio-toolkit/mdev.d (point it at /etc/mdevctl.d to share mdevctl's).
"start": "auto" is kept for mdevctl; nothing here starts devices at boot.

Exit status: 0 done; 1 the kernel or the file system said no (not root, an
I/O error; the message has the errno's words); 2 bad arguments or a request
refused before anything changed (malformed UUID, unknown parent or type, UUID
in use, no instances left, mdev open, no such mdev or definition, a malformed
definition file); 130 interrupted; killed by SIGPIPE (141 in the shell) when
the reader of the output goes away.

See :mod:`vfio.host.mdev` for the model and the rules.
"""

from __future__ import annotations

import argparse
import os
import sys

from .._cli import entry_point
from .mdev import (CONFIG_DIR_ENV, Definitions, MdevDefinition, MdevError, MdevHost, MdevInUse, StartPolicy,
                   config_dir_for, normalize_uuid)
from .sysfs import DryRunSysfs, HostError, Sysfs

PROG = "vfio-mdev"
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def _uuid_arg(text: str) -> str:
    try:
        return normalize_uuid(text)
    except MdevError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    paras = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(prog=PROG, description="\n\n".join(paras[:2]),
                                 epilog="\n\n".join(paras[2:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="/", help="system root (a captured tree for testing; default /)")
    common.add_argument("--config-dir", metavar="DIR",
                        help=f"definitions directory (default ${CONFIG_DIR_ENV}, else ROOT/etc/vfio-toolkit/mdev.d)")
    common.add_argument("--dumpjson", "--json", dest="json", action="store_true", help="JSON output")
    changing = argparse.ArgumentParser(add_help=False)
    changing.add_argument("--dry-run", action="store_true", help="print what would be written, change nothing")
    uuid = dict(type=_uuid_arg, metavar="UUID", help="the mdev's UUID (8-4-4-4-12 hex digits)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    t = sub.add_parser("types", parents=[common], help="mdev parents and the types they offer")
    t.add_argument("-p", "--parent")
    ls = sub.add_parser("list", parents=[common], help="live mdevs (or, with -d, definitions)")
    ls.add_argument("-d", "--defined", action="store_true", help="list definitions instead")
    ls.add_argument("-u", "--uuid", **uuid)
    ls.add_argument("-p", "--parent")
    ls.add_argument("-v", "--verbose", action="store_true", help="with IOMMU group, cdev, driver, attributes")
    s = sub.add_parser("start", parents=[common, changing], help="create an mdev (given, or defined)")
    s.add_argument("-u", "--uuid", **uuid)
    s.add_argument("-p", "--parent")
    s.add_argument("-t", "--type", dest="mdev_type", metavar="TYPE", help="type directory name, e.g. mtty-2")
    st = sub.add_parser("stop", parents=[common, changing], help="remove an mdev")
    st.add_argument("-u", "--uuid", required=True, **uuid)
    st.add_argument("--force", action="store_true", help="remove even while open (blocks until it is closed)")
    d = sub.add_parser("define", parents=[common, changing], help="save a definition")
    d.add_argument("-u", "--uuid", **uuid)
    d.add_argument("-p", "--parent")
    d.add_argument("-t", "--type", dest="mdev_type", metavar="TYPE", help="type directory name, e.g. mtty-2")
    d.add_argument("-a", "--auto", action="store_true", help='"start": "auto" (default manual)')
    u = sub.add_parser("undefine", parents=[common, changing], help="forget a definition")
    u.add_argument("-u", "--uuid", required=True, **uuid)
    u.add_argument("-p", "--parent")
    return ap


# ---- listing ------------------------------------------------------------------------------

def _types(host: MdevHost, args, out) -> None:
    parents = [host.parent(args.parent)] if args.parent else host.parents()
    if args.json:
        import json
        doc = [{p.name: [{t.type_id: _type_json(t)} for t in p.types]} for p in parents]
        json.dump(doc, out, indent=2)
        out.write("\n")
        return
    for p in parents:
        print(p.name, file=out)
        for t in p.types:
            print(f"  {t.type_id}", file=out)
            print(f"    Available instances: {t.available_instances}", file=out)
            print(f"    Device API: {t.device_api if t.device_api is not None else 'unknown'}", file=out)
            if t.name is not None:
                print(f"    Name: {t.name}", file=out)
            if t.description:
                print(f"    Description: {' '.join(t.description.split())}", file=out)


def _type_json(t) -> dict:
    d = {"available_instances": t.available_instances,
         "device_api": None if t.device_api is None else str(t.device_api), "name": t.name}
    if t.description is not None:
        d["description"] = t.description
    return d


def _mdevctl_json(rows: list) -> list:
    """mdevctl's list shape: [{PARENT: [{UUID: {mdev_type, start, attrs}}, ...]}, ...]."""
    by_parent: dict = {}
    for parent, uuid, body in rows:
        by_parent.setdefault(parent, []).append({uuid: body})
    return [{p: entries} for p, entries in by_parent.items()]


def _list(host: MdevHost, defs: Definitions, args, out) -> None:
    defined = {(d.parent, d.uuid): d for d in defs.all()}
    if args.defined:
        items = [d for d in defined.values()
                 if (args.uuid is None or d.uuid == args.uuid) and (args.parent is None or d.parent == args.parent)]
        live = set(host.uuids())
        if args.json:
            import json
            json.dump(_mdevctl_json([(d.parent, d.uuid, d.to_json()) for d in items]), out, indent=2)
            out.write("\n")
            return
        for d in items:
            print(f"{d.uuid} {d.parent} {d.type_id} {d.start}" + (" (active)" if d.uuid in live else ""), file=out)
            if args.verbose:
                _print_attrs(d.attrs, out)
        return
    devs = [m for m in host.devices(args.parent) if args.uuid is None or m.uuid == args.uuid]
    if args.json:
        import json
        rows = []
        for m in devs:
            d = defined.get((m.parent, m.uuid))
            body = {"mdev_type": m.type_id, "start": str(d.start) if d else "manual",
                    "attrs": [{k: v} for k, v in d.attrs] if d else []}
            if args.verbose:
                body.update(m.to_dict())
            rows.append((m.parent, m.uuid, body))
        json.dump(_mdevctl_json(rows), out, indent=2)
        out.write("\n")
        return
    for m in devs:
        d = defined.get((m.parent, m.uuid))
        print(f"{m.uuid} {m.parent} {m.type_id}" + (f" {d.start} (defined)" if d else ""), file=out)
        if args.verbose:
            node = f"/dev/vfio/{m.iommu_group}" if m.iommu_group is not None else "none"
            cdev = f"/dev/vfio/devices/{m.cdev}" if m.cdev else "none"
            print(f"  device API: {m.device_api}, driver: {m.driver or 'none'}, IOMMU group: "
                  f"{m.iommu_group if m.iommu_group is not None else 'none'} ({node}), cdev: {cdev}", file=out)
            if d:
                _print_attrs(d.attrs, out)


def _print_attrs(attrs, out) -> None:
    if attrs:
        print("  Attrs:", file=out)
        for i, (k, v) in enumerate(attrs):
            print(f"    @{{{i}}}: {{\"{k}\":\"{v}\"}}", file=out)


# ---- changes ------------------------------------------------------------------------------

def _report_change(host: MdevHost, args, out, action: str, uuid: str, parent: str | None, mdev_type: str | None,
                   generated: bool, extra: list | None = None) -> None:
    writes = [{"kind": a.kind, "path": a.path, "value": a.value} for a in getattr(host.sysfs, "actions", [])]
    if args.json:
        import json
        json.dump({"action": action, "dry_run": args.dry_run, "uuid": uuid, "parent": parent, "type": mdev_type,
                   "writes": writes, "files": extra or []}, out, indent=1)
        out.write("\n")
        return
    if args.dry_run:
        print("# dry run: these are the changes that would be made, in order", file=out)
        for a in getattr(host.sysfs, "actions", []):
            print(a, file=out)
        for line in extra or []:
            print(f"# {line['op']} {line['path']}" + (f": {line['content']}" if line.get("content") else ""),
                  file=out)
        return
    if generated:
        print(uuid, file=out)       # mdevctl prints a UUID it made up, and nothing else


def _start(host: MdevHost, defs: Definitions, args, out) -> None:
    generated = args.uuid is None
    if args.mdev_type is None and args.parent is None:
        if args.uuid is None:
            raise MdevError("start: give -u UUID of a defined mdev, or -p PARENT -t TYPE")
        d = defs.get(args.uuid)
        uuid = host.create(d.parent, d.type_id, d.uuid, d.attrs)
        _report_change(host, args, out, "start", uuid, d.parent, d.type_id, False)
        return
    if args.mdev_type is None or args.parent is None:
        raise MdevError("start: -p PARENT and -t TYPE go together")
    attrs = ()
    if args.uuid is not None:
        found = defs.find(args.uuid)
        if found:
            d = found[0]
            if (d.parent, d.type_id) != (args.parent, args.mdev_type):
                raise MdevError(f"start: mdev {d.uuid} is defined as {d.type_id} on {d.parent} ({d.path}), "
                                f"not {args.mdev_type} on {args.parent}")
            attrs = d.attrs
    uuid = host.create(args.parent, args.mdev_type, args.uuid, attrs)
    _report_change(host, args, out, "start", uuid, args.parent, args.mdev_type, generated)


def _stop(host: MdevHost, args, out) -> None:
    m = host.device(args.uuid)
    host.remove(m.uuid, force=args.force)
    _report_change(host, args, out, "stop", m.uuid, m.parent, m.type_id, False)


def _define(host: MdevHost, defs: Definitions, args, out) -> None:
    generated = args.uuid is None
    live = host.device(args.uuid) if args.uuid is not None and host.exists(args.uuid) else None
    parent, mdev_type = args.parent, args.mdev_type
    if live is not None:
        if (parent or live.parent) != live.parent or (mdev_type or live.type_id) != live.type_id:
            raise MdevError(f"define: mdev {live.uuid} is running as {live.type_id} on {live.parent}, "
                            f"not {mdev_type or live.type_id} on {parent or live.parent}")
        parent, mdev_type = live.parent, live.type_id
    elif parent is None or mdev_type is None:
        raise MdevError("define: give -p PARENT and -t TYPE (or -u UUID of a running mdev)")
    host.parent(parent).type(mdev_type)         # refuse what the host does not offer, naming what it does
    import uuid as _uuid_mod
    uuid = args.uuid or str(_uuid_mod.uuid4())
    d = MdevDefinition(uuid, parent, mdev_type, StartPolicy.AUTO if args.auto else StartPolicy.MANUAL)
    if defs.find(uuid):
        raise MdevError(f"define: mdev {uuid} is already defined ({defs.get(uuid).path}); undefine it first")
    path = os.path.join(defs.dir, parent, uuid)
    if not args.dry_run:
        path = defs.save(d)
    import json
    _report_change(host, args, out, "define", uuid, parent, mdev_type, generated,
                   [{"op": "write", "path": path, "content": json.dumps(d.to_json())}])


def _undefine(host: MdevHost, defs: Definitions, args, out) -> None:
    d = defs.get(args.uuid, args.parent)
    if not args.dry_run:
        defs.delete(d)
    _report_change(host, args, out, "undefine", d.uuid, d.parent, d.type_id, False,
                   [{"op": "remove", "path": d.path}])


@entry_point(PROG)
def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    if not os.path.isdir(args.root):
        print(f"{PROG}: --root {args.root}: no such directory", file=sys.stderr)
        return EXIT_REFUSED
    dry = getattr(args, "dry_run", False)
    host = MdevHost(sysfs=DryRunSysfs(args.root) if dry else Sysfs(args.root))
    defs = Definitions(config_dir_for(args.root, args.config_dir))
    try:
        if args.cmd == "types":
            _types(host, args, out)
        elif args.cmd == "list":
            _list(host, defs, args, out)
        elif args.cmd == "start":
            _start(host, defs, args, out)
        elif args.cmd == "stop":
            _stop(host, args, out)
        elif args.cmd == "define":
            _define(host, defs, args, out)
        else:
            _undefine(host, defs, args, out)
    except (HostError, MdevInUse) as e:         # refused before anything changed
        print(f"{PROG} {args.cmd}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as e:
        print(f"{PROG} {args.cmd}: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
