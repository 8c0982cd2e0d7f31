"""
What may reach state output, comments and logs. Two different jobs, two names:

- ``hide_private_keys``: every PEM private key in a text (a rendered config, a diff, an Envoy
  error) becomes a marker with a short digest, so a diff still shows that a key changed.
- ``url_for_messages``: a download URL without its credentials or query string (signed URLs
  carry tokens).
"""

import hashlib
import re
import urllib.parse

# Raw or JSON-escaped, and cut short (an Envoy error may echo part of an inline secret).
_PRIVATE_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S)


def hide_private_keys(text):
    """``text`` with every PEM private key replaced by ``<redacted private key sha256:...>``."""
    def marker(match):
        digest = hashlib.sha256(match.group(0).encode()).hexdigest()[:12]
        return f"<redacted private key sha256:{digest}>"

    return _PRIVATE_KEY.sub(marker, text or "")


def url_for_messages(url):
    """``url`` without ``user:password@`` and with any query string replaced by ``...``."""
    parts = urllib.parse.urlsplit(str(url))
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="..." if parts.query else ""))
