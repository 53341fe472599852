"""The package's loggers: every message is stripped of full session ids.

A session id is a bearer credential, so no log line may carry one whole
(logs are read by more people, and kept longer, than session stores). Every
logger of the package is made by :func:`get_logger`, which adds
:class:`RedactSessionIds`: any run of 20 or more hex digits in a message or
in the text of its exception (session ids, and the file paths and keys built
from them) is cut to its first 8 characters followed by ``…``.
"""

from __future__ import annotations

import logging
import re

__all__ = ["get_logger", "redact", "RedactSessionIds"]

_HEX_RUN = re.compile(r"([0-9a-fA-F]{8})[0-9a-fA-F]{12,}")


def redact(text: str) -> str:
    """*text* with every run of 20+ hex digits shortened to its first 8 and ``…``."""
    return _HEX_RUN.sub("\\1…", text)


class RedactSessionIds(logging.Filter):
    """Shortens session ids in a record's message and exception text (see :func:`redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave the record to the handler's error path
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactSessionIds()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with :class:`RedactSessionIds` attached (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
