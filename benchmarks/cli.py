"""Command-line pieces the benchmarks share: bad flags end in one line, as every other error does."""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """`prog: error: ...` and nothing else (no usage block) for a flag it cannot use."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def count(minimum: int):
    """An argparse type: a whole number >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse
