"""Command-line flags for the engine options, generated from the config tree (config.py).

Every flat option becomes ``--name-with-dashes`` with its type, help text and default from the
tree; a flag that is not given stays None and the tree's default applies, so no default is written
twice. Commands may add seed-style aliases (``--f`` for ``--fan-out``) and their own defaults.
"""
from __future__ import annotations

import argparse

from ..config import default_of, flat_fields, format_flat, parse_flat


def add_engine_args(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = (),
                    aliases: dict[str, tuple[str, ...]] | None = None, defaults: dict | None = None,
                    title: str = "engine (config tree: specdec/config.py)") -> None:
    """Add a flag per flat option (``only`` those, minus ``skip``). ``defaults`` overrides a default for
    this command (shown in the help); ``aliases`` adds more flag names for an option."""
    g = p.add_argument_group(title)
    aliases, defaults = aliases or {}, defaults or {}
    for name, (_, f) in flat_fields().items():
        if (only is not None and name not in only) or name in skip:
            continue
        default = defaults.get(name, default_of(name))
        shown = format_flat(default) or "unset"
        flags = ["--" + name.replace("_", "-"), *aliases.get(name, ())]
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        kind = f.type.replace(" ", "")
        if kind in ("bool", "bool|None"):
            g.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=defaults.get(name),
                           help=help_text)
        elif kind.startswith("list["):                # --fan-out-hit 2,1,1 or (seed style) --flh 2 1 1
            g.add_argument(*flags, dest=name, default=defaults.get(name), nargs="+", metavar=name.upper(),
                           action=_JoinList, help=help_text)
        else:
            g.add_argument(*flags, dest=name, default=defaults.get(name), metavar=name.upper(),
                           type=lambda text, n=name: parse_flat(n, text), help=help_text)


class _JoinList(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_flat(self.dest, ",".join(values)))
        except ValueError as e:
            raise argparse.ArgumentError(self, str(e)) from None


def engine_options(args, only: tuple[str, ...] | None = None) -> dict:
    """The flat options given on the command line (or set as command defaults): None = not given."""
    return {n: getattr(args, n) for n in flat_fields()
            if (only is None or n in only) and getattr(args, n, None) is not None}
