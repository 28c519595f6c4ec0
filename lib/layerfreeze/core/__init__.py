"""The concepts a learner reads: layer groups, freezing, inspection and memory, models and data, the training
loop with its schedules, cache, optimizer and adapters, forgetting, signals and plans.

Nothing here imports :mod:`layerfreeze.study` or :mod:`layerfreeze.course`.
"""
