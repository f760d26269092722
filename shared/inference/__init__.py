"""Using a trained model: load it from a run or an export, evaluate, predict, export.

Nothing here needs Flower or the body service: the body runs in-process.
"""
