"""The ``kdistill`` command: its config, a run from config to report, ``eval``, ``inspect`` and ``demo``.

It drives every task (:mod:`kdistill.tasks`) through the same flow and never reaches inside
one; the core (losses, capture, training, the teacher cache) knows nothing of it.
"""
