"""``python -m layerfreeze``: the command line, in :mod:`layerfreeze.course.cli`."""

from .course.cli import main

if __name__ == "__main__":
    main()
