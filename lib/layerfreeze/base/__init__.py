"""What every layer stands on, and a learner need not read to learn freezing: device, seeding and precision
(``runtime``), argument checks that name the argument and what is valid (``checks``), loading models (``models``:
the default MiniLM offline, any Hub id or local folder, tiny random models) and data (``data``: the course's
generated tasks, Hub datasets, tokenising). Nothing here imports the layers above.
"""
