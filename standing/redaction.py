"""Keeps secrets out of every log record, whoever logs it.

aiokafka logs each request at DEBUG, SASL PLAIN authentication bytes included
(the password in clear). Rather than trusting every library's log lines, the
record factory replaces each configured secret before any handler sees it.
"""

from __future__ import annotations

import logging

from topology.settings import Settings

MASK = "***"


def install_secret_redaction(settings: Settings) -> None:
    secrets: list[str] = []
    for secret in (settings.sasl_password, settings.schema_registry_user_info.partition(":")[2]):
        if secret:
            # as text, and as it appears inside a logged bytes object's repr
            secrets += sorted({secret, repr(secret.encode())[2:-1], repr(secret)[1:-1]}, key=len, reverse=True)
    if not secrets:
        return
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler
            return record
        if any(secret in message for secret in secrets):
            for secret in secrets:
                message = message.replace(secret, MASK)
            record.msg, record.args = message, ()
        return record

    logging.setLogRecordFactory(redacting_factory)
