"""What the index writers share: dead-letter tag, metric namespace, credential redaction."""
import re
from typing import Optional

METRICS_NAMESPACE = "activebeam.store"
DEAD_LETTER = "dead_letter"
MAX_ERROR_CHARS = 500

_CREDENTIALS = re.compile(r"(?<=://)([^:/?#@\s]*):([^@/?#\s]*)@")


def redact_uri(uri: Optional[str]) -> Optional[str]:
    """Replaces the password of a ``scheme://user:password@host`` URI with ``***``."""
    if not uri:
        return uri
    return _CREDENTIALS.sub(r"\1:***@", uri)


def redact_text(text: str) -> str:
    """:func:`redact_uri` applied to every URI inside a message (errors, logs)."""
    return _CREDENTIALS.sub(r"\1:***@", text)
