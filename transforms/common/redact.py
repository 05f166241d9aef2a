"""Credentials out of URIs and messages (pure): what every log line, record and dead letter shows.

Two places in a URI hold secrets: the password of its user information
(``mongodb://user:PASSWORD@host``) and the values of query-string options that are secrets
(``tlsCertificateKeyFilePassword=``, ``authMechanismProperties=AWS_SESSION_TOKEN:...``, signed
URLs' ``X-Goog-Signature=``, ``access_token=``...). Both are replaced with ``***``::

    >>> redact_uri("mongodb://reader:s3cret@db:27017/?tls=true&tlsCertificateKeyFilePassword=pw")
    'mongodb://reader:***@db:27017/?tls=true&tlsCertificateKeyFilePassword=***'
"""
import re
from typing import Optional

#: ``user:password@`` after a scheme; the password runs to the last ``@`` before the host (an
#: unescaped ``@`` in a password must not leave its tail visible).
_CREDENTIALS = re.compile(r"(?<=://)([^:/?#@\s]*):([^/?#\s]*)@")

#: Query-string (or fragment) options whose value is a secret, by a word their name contains
#: (case-insensitive): ``tlsCertificateKeyFilePassword``, ``sslClientCertificateKeyPassword``,
#: ``authMechanismProperties`` (AWS session tokens), ``access_token``, ``X-Goog-Signature``,
#: ``X-Goog-Credential``, ``sig`` (Azure SAS), ``apiKey``, ``client_secret``...
SECRET_OPTION_WORDS = ("password", "passwd", "pwd", "secret", "token", "signature", "sig",
                       "credential", "apikey", "api_key", "authmechanismproperties", "private")

_SECRET_OPTION = re.compile(
    r"(?i)([?&;#](?:[\w.-]*(?:" + "|".join(re.escape(w) for w in SECRET_OPTION_WORDS) + r")[\w.-]*)=)"
    r"((?:[^&;#\s'\":]|:(?=[^&;#\s'\"]))*)")  # a colon ending the value (a message's "uri: why") is not its


def redact_uri(uri: Optional[str]) -> Optional[str]:
    """Replaces the password of a ``scheme://user:password@host`` URI and the values of its
    secret query-string options (:data:`SECRET_OPTION_WORDS`) with ``***``."""
    if not uri:
        return uri
    return redact_text(uri)


def redact_text(text: str) -> str:
    """:func:`redact_uri` applied to every URI inside a message (errors, logs, JSON)."""
    text = _CREDENTIALS.sub(r"\1:***@", text)
    return _SECRET_OPTION.sub(lambda m: m.group(1) + ("***" if m.group(2) else ""), text)
