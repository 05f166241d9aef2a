"""Credentials out of URIs and messages (pure): what every log line, record and dead letter shows."""
import re
from typing import Optional

_CREDENTIALS = re.compile(r"(?<=://)([^:/?#@\s]*):([^@/?#\s]*)@")


def redact_uri(uri: Optional[str]) -> Optional[str]:
    """Replaces the password of a ``scheme://user:password@host`` URI with ``***``."""
    if not uri:
        return uri
    return _CREDENTIALS.sub(r"\1:***@", uri)


def redact_text(text: str) -> str:
    """:func:`redact_uri` applied to every URI inside a message (errors, logs)."""
    return _CREDENTIALS.sub(r"\1:***@", text)
