"""`convert maps`: the shipped mapping tables (name, source framework, target model, description)."""
from __future__ import annotations

import json

from ..errors import ConvertersError
from . import args as A

HELP = "list the shipped mapping tables"


def add_arguments(p) -> None:
    A.add_json(p, help="print the tables as JSON")
    A.add_quiet(p, help="print the table names only")


def run(args) -> int:
    from ..mapping import spec as mapping_spec

    rows = []
    for name, path in mapping_spec.shipped_tables().items():
        try:
            m = mapping_spec.load(path)
            desc = (m.description or "").strip().splitlines()[0] if m.description else ""
            rows.append({"name": name, "source": m.source, "target": (m.target or {}).get("model"),
                         "description": desc, "path": str(path)})
        except ConvertersError as e:
            rows.append({"name": name, "error": str(e), "path": str(path)})
    if args.json:
        A.write_output(args.json, json.dumps(rows, indent=1))
        return 0
    for r in rows:
        if args.quiet:
            print(r["name"])
        elif "error" in r:
            print(f"{r['name']:32s} BROKEN: {r['error']}")
        else:
            print(f"{r['name']:32s} {r['source'] or '?':11s} -> {r['target'] or '(state dict)':40s} {r['description']}")
    return 0
