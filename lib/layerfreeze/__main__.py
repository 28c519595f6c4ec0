"""Command line: ``python -m layerfreeze course --profile auto`` runs every notebook into ``build/``."""

from __future__ import annotations

import argparse

from .course import PROFILES, run_course


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m layerfreeze")
    commands = parser.add_subparsers(dest="command", required=True)
    course = commands.add_parser("course", help="run every notebook in order (papermill) into a build folder")
    course.add_argument("--profile", default="auto", choices=PROFILES)
    course.add_argument("--build-dir", default="build")
    course.add_argument("--notebook-dir", default="notebooks")
    course.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 01 03")
    args = parser.parse_args(argv)
    if args.command == "course":
        run_course(args.profile, args.build_dir, args.notebook_dir, args.only)


if __name__ == "__main__":
    main()
