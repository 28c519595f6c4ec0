"""Runs the CLI with DDP wrapped only once (the naive way), to show that the replica check catches the drift."""

if __name__ == "__main__":
    import layerfreeze.core.training as training
    from layerfreeze.__main__ import main

    original, wrapped = training._wrap, {}

    def wrap_once(model, device, world_size):
        if id(model) not in wrapped:
            wrapped[id(model)] = original(model, device, world_size)
        return wrapped[id(model)]

    training._wrap = wrap_once
    main()
