"""A run's log: kdistill's and transformers' records appended to ``run.log`` (never through a
link), and kdistill's messages alone on the console (a traceback goes to the file only)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdistill.files.writing import open_append

__all__ = ["log_to"]


class _MessageOnly(logging.Formatter):
    """The console shows a record's message alone: a traceback goes to run.log, never the console."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class _AboveBars(logging.StreamHandler):
    """Console lines written above the progress bars (through tqdm), never across one."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's own rule: a handler that fails never breaks the program
            self.handleError(record)


@contextmanager
def log_to(path: Path, console: bool) -> Iterator[None]:
    """Send kdistill's and transformers' log records to ``path`` (and the console) for the run."""
    stream = open_append(path)  # never through a link: run.log -> ~/.bashrc would get the lines
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger("kdistill"), logging.getLogger("transformers")]
    previous = [(lg, lg.level) for lg in loggers]
    console_handler = _AboveBars() if console else None
    if console_handler is not None:
        console_handler.setFormatter(_MessageOnly())
        console_handler.setLevel(logging.INFO)
    for lg in loggers:
        lg.addHandler(handler)
    logging.getLogger("kdistill").setLevel(logging.INFO)
    if console_handler is not None:
        logging.getLogger("kdistill").addHandler(console_handler)
    try:
        yield
    finally:
        for lg, level in previous:
            lg.removeHandler(handler)
            lg.setLevel(level)
        if console_handler is not None:
            logging.getLogger("kdistill").removeHandler(console_handler)
        handler.close()
        stream.close()
