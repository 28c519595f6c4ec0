"""Runs the CLI with DDP wrapped only once (the naive way), to show that the replica check catches the drift."""
import layerfreeze.training as t
orig = t._wrap
cache = {}
def wrap_once(model, device, world_size):
    if id(model) not in cache:
        cache[id(model)] = orig(model, device, world_size)
    return cache[id(model)]
t._wrap = wrap_once
from layerfreeze.__main__ import main
main()
