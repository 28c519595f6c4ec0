"""The study tools the notebooks measure and report with: strategies and their runs, task A then task B,
evidence and verdicts, timing, plots, the layer picker and the takeaways. They use :mod:`layerfreeze.core`;
nothing here imports :mod:`layerfreeze.course`.
"""
