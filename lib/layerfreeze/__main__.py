"""``python -m layerfreeze``: the command line, in :mod:`layerfreeze.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
