"""The command line's argument types: each checks its value while the command line is parsed, before anything loads,
and a bad one is refused in one line that names the value and what is valid.

>>> positive_int("3")
3
>>> positive_int("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: invalid value '0': expected a whole number of at least 1
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line (argparse prints the usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the valid options)\n")


def _number(kind, valid: str, accept):
    """An argparse type: ``kind(text)`` when ``accept`` holds for it, else an error that says what is valid."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {valid}")
        return value
    return convert


positive_int = _number(int, "a whole number of at least 1", lambda v: v >= 1)
natural_int = _number(int, "a whole number of at least 0", lambda v: v >= 0)
positive_float = _number(float, "a finite number above 0", lambda v: math.isfinite(v) and v > 0)
factor = _number(float, "0 (one rate) or a finite number above 0", lambda v: math.isfinite(v) and v >= 0)
nonzero_int = _number(int, "a whole number other than 0 (positive: the last n blocks; negative: the first n)",
                      lambda v: v != 0)


def output_file(text: str) -> Path:
    """``--output``: a file that can be written (its folder may not exist yet), checked before any training."""
    path = Path(text).expanduser()
    if path.is_dir() or not path.name:
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: give a file name, e.g. {Path(text) / 'metrics.json'}")
    _check_writable(text, path)
    return path


def _check_writable(text: str, path: Path) -> None:
    """The nearest existing folder on the way to ``path`` can be written in."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if existing != path.absolute() and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: no permission to write in {existing}")


def output_folder(text: str) -> Path:
    """``--output-dir``: a folder that can be created or written (a file there is refused), checked while parsing."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file: give a folder for the model, e.g. {text}-model")
    _check_writable(text, path)
    return path


def config_file(text: str) -> Path:
    """``--config``: a YAML file that exists."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such config file {text!r}: give a YAML file such as train.yaml")
    return path
