"""No log line of the package carries a full session id (issue 9)."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import secrets

import pytest

import gosession_tornado
import gosession_tornado.providers
from gosession_tornado._log import RedactSessionIds, redact


def test_redact_shortens_every_long_hex_run() -> None:
    sid = secrets.token_hex(16)
    text = f"session file /srv/s/{sid[0]}/{sid[1]}/{sid} is corrupt; key gosession:{sid}; 0123456789abcdef"
    out = redact(text)
    assert sid not in out
    assert out.count(sid[:8] + "…") == 2
    assert "0123456789abcdef" in out  # 16 hex digits: not a session id, kept


def test_a_record_and_its_exception_text_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    sid = secrets.token_hex(16)
    log = logging.getLogger("gosession_tornado.test_redaction")
    log.addFilter(RedactSessionIds())
    try:
        raise ValueError(f"no such session {sid}")
    except ValueError:
        log.exception("while reading %s", sid)
    record = caplog.records[-1]
    assert sid not in record.getMessage()
    assert record.exc_text is not None and sid not in record.exc_text
    assert sid not in caplog.text


def test_every_logger_of_the_package_redacts() -> None:
    for info in pkgutil.walk_packages(gosession_tornado.__path__, "gosession_tornado."):
        if info.name.endswith("__main__"):
            continue  # runs the command line
        try:
            importlib.import_module(info.name)
        except ImportError:
            continue  # a provider whose client extra is not installed
    loggers = [
        lg for name, lg in logging.Logger.manager.loggerDict.items()
        if name.startswith("gosession_tornado") and isinstance(lg, logging.Logger)
    ]
    assert len(loggers) >= 5, [lg.name for lg in loggers]
    missing = [
        lg.name for lg in loggers
        if not any(isinstance(f, RedactSessionIds) for f in lg.filters)
        and lg.name != "gosession_tornado.test_redaction"
    ]
    assert missing == [], f"loggers without the session-id filter: {missing}"
