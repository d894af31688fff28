"""argparse types the commands share: a value outside its range gets argparse's own usage
error, one line naming the option (``argument --threads: must be >= 1, not 0``), before any
work starts."""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Callable


def first_paragraph(doc: str | None) -> str:
    """A module docstring's first paragraph without its RST markup: a command's --help
    description."""
    return (doc or "").split("\n\n")[0].replace("``", "")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (subcommand parsers inherit it)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def whole(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer from ``lo`` to ``hi`` (no upper bound with None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
        return value
    return parse


def number(lo: float = 0.0, above: bool = False) -> Callable[[str], float]:
    """A finite number >= ``lo`` (> ``lo`` with ``above``): no NaN, no infinity."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (above and value == lo):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if above else '>='} {lo:g}, not {text}")
        return value
    return parse


def frame_size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT, e.g. 1280x720."""
    m = re.fullmatch(r"(\d{2,5})[xX](\d{2,5})", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}")
    return int(m[1]), int(m[2])
