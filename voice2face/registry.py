"""``python -m voice2face.registry``: the registry's facts, for make and for people.

* ``list``: each method with its one-line description;
* ``needs METHOD --profile P``: the pretrained nets (stems in ``DATA/pretrained/``) it needs;
* ``make``: the same facts as make variables, for every method and profile at once (the
  Makefile includes them from ``.venv/registry.mk``, remade when the registry or a config
  changes, so make pays for one Python start, not one per target).
"""

from __future__ import annotations

import argparse
import sys

from voice2face.methods import PRETRAINED, SPECS, pretrained_needs

PROFILES = ("cpu", "paper")


def make_variables() -> str:
    lines = ["# made by `python -m voice2face.registry make` from voice2face/methods/__init__.py"]
    lines.append(f"METHOD_NAMES := {' '.join(SPECS)}")
    for stem, (method, overrides) in PRETRAINED.items():
        lines.append(f"MAKER_{stem} := {' '.join((method, *overrides))}")
    for profile in PROFILES:
        for name in SPECS:
            lines.append(f"NEEDS_{profile}_{name} := {' '.join(pretrained_needs(name, profile))}")
        every = {n: None for name, s in SPECS.items() if s.evaluable
                 for n in pretrained_needs(name, profile)}
        lines.append(f"NEEDS_{profile}_results := {' '.join(every)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voice2face.registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the registered methods")
    needs = sub.add_parser("needs", help="the pretrained nets a method needs")
    needs.add_argument("method", choices=list(SPECS))
    needs.add_argument("--profile", choices=PROFILES, required=True)
    sub.add_parser("make", help="make variables for the Makefile")
    args = parser.parse_args(argv)
    if args.command == "list":
        for spec in SPECS.values():
            print(f"{spec.name:<13} {spec.about}")
    elif args.command == "needs":
        print(" ".join(pretrained_needs(args.method, args.profile)))
    else:
        print(make_variables(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
