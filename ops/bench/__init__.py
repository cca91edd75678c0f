"""Benchmarks run by ``trade-engine bench ...``: each prints figures, and with --json a last JSON line."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends each option with ``[default: X]``, as the other commands' help does; an option
    without a value of its own (a flag, or None) shows none, and one whose text names it already is
    left alone."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS
                or "[default:" in text or not action.option_strings):
            return text
        return f"{text} [default: %(default)s]"

