"""Kafka credentials come from configuration and never reach a log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

from topology.settings import Settings
from tests.helpers import free_port

SECRET = "pw-8c1f0e-do-not-log"


def test_sasl_password_is_used_but_never_logged(settings, tmp_path):
    env = dict(
        os.environ,
        STANDING_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        STANDING_SASL_MECHANISM="PLAIN",
        STANDING_SASL_USERNAME="scorer",
        STANDING_SASL_PASSWORD=SECRET,
    )
    command = [
        sys.executable, "-m", "standing.cli", "worker", "--broker", settings.broker,
        "--data-dir", str(tmp_path / "data"), "--web-port", str(free_port()), "--metrics-port", str(free_port()),
        "--app-id", settings.app_id, "--loglevel", "debug",
    ]  # fmt: skip
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            time.sleep(8)  # long enough to try (and log) the SASL handshake several times
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    output = log_path.read_text(errors="replace")
    assert output.strip(), "the worker said nothing at all"
    assert SECRET not in output


def test_settings_carry_security_options_without_showing_the_password(monkeypatch):
    monkeypatch.setenv("STANDING_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STANDING_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STANDING_SASL_USERNAME", "scorer")
    monkeypatch.setenv("STANDING_SASL_PASSWORD", SECRET)
    settings = Settings.from_env()
    options = settings.kafka_client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "scorer" and options["sasl_plain_password"] == SECRET
    assert "ssl_context" not in options or options["ssl_context"] is not None
    assert SECRET not in repr(settings) and SECRET not in str(replace(settings, broker="x:1"))


def test_redaction_masks_a_secret_in_any_log_record(monkeypatch, caplog):
    import logging

    from standing.redaction import install_secret_redaction

    original = logging.getLogRecordFactory()
    secret = "pä$$'wörd"
    try:
        install_secret_redaction(replace(Settings(), sasl_password=secret))
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("aiokafka.conn").debug("Request: %s", {"sasl_auth_bytes": b"u\x00u\x00" + secret.encode()})
            logging.getLogger("x").warning("plain %s here", secret)
    finally:
        logging.setLogRecordFactory(original)
    text = caplog.text
    assert secret not in text and repr(secret.encode())[2:-1] not in text
    assert text.count("***") == 2
