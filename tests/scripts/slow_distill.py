"""``kdistill distill`` with a pause after each checkpoint, for the kill-and-resume test: the
pauses give the test time to kill the run between two checkpoints and change no number.

Usage: slow_distill.py SECONDS distill ARGS...
"""

import sys
import time

import kdistill.train.loop as loop
from kdistill.app.cli import main

pause = float(sys.argv[1])
save_checkpoint = loop.save_checkpoint


def save_then_pause(*args, **kwargs):
    path = save_checkpoint(*args, **kwargs)
    time.sleep(pause)
    return path


loop.save_checkpoint = save_then_pause
sys.exit(main(sys.argv[2:]))
