"""
Getting a bundle archive to a local path: ``salt://`` through the caller's Salt file client
(passed in as ``cache_salt_file``), ``http(s)://`` streamed with retries, ``file://`` as is.
Only connection problems, truncated bodies and 5xx answers are retried.
"""

import logging
import os
import time
import urllib.parse
import urllib.request

from .errors import EnvoyFormulaError

log = logging.getLogger(__name__)

HTTP_TIMEOUTS = (10, 60)  # connect, read (the longest silence between bytes), seconds
HTTP_ATTEMPTS = 4
HTTP_BACKOFF_S = 0.5  # before the 2nd attempt, doubled for each next one


class _Retryable(Exception):
    """A connection problem or a 5xx answer: worth another attempt."""


def fetch(source, work_dir, label, max_bytes, cache_salt_file=None):
    """A local path holding the archive at ``source``."""
    parts = urllib.parse.urlsplit(str(source))
    if parts.scheme == "salt":
        cached = cache_salt_file(source) if cache_salt_file else None
        if not cached:
            raise EnvoyFormulaError(f"bundle {label} was not found on the Salt file server")
        return cached
    if parts.scheme in ("http", "https"):
        dest = os.path.join(work_dir, "bundle.tar.gz")
        download(source, dest, label, max_bytes)
        return dest
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise EnvoyFormulaError(f"bundle {label}: file:// URLs must name a local path")
        path = urllib.request.url2pathname(urllib.parse.unquote(parts.path))
        if not os.path.isfile(path):
            raise EnvoyFormulaError(f"bundle {label}: no such file {path}")
        return path
    raise EnvoyFormulaError(f"bundle {label}: unsupported source; use salt://, https://, http:// or file://")


def download(url, dest, label, max_bytes):
    """Stream ``url`` to ``dest``, retrying what is worth retrying with backoff."""
    delay, last_error = HTTP_BACKOFF_S, None
    for attempt in range(1, HTTP_ATTEMPTS + 1):
        try:
            _download_once(url, dest, label, max_bytes)
            return
        except _Retryable as exc:
            last_error = exc
            log.warning("bundle download %s: attempt %d/%d failed: %s", label, attempt, HTTP_ATTEMPTS, exc)
        if attempt < HTTP_ATTEMPTS:
            time.sleep(delay)
            delay *= 2
    raise EnvoyFormulaError(f"downloading bundle {label} failed after {HTTP_ATTEMPTS} attempts: {last_error}")


def _download_once(url, dest, label, max_bytes):
    import requests  # only hosts that download over HTTP pay for the import
    import urllib3

    try:
        with requests.get(url, stream=True, timeout=HTTP_TIMEOUTS) as resp:
            status = f"HTTP {resp.status_code} {resp.reason}"
            if resp.status_code >= 500:
                raise _Retryable(status)
            if resp.status_code != 200:
                raise EnvoyFormulaError(f"downloading bundle {label}: {status} (not retried)")
            expected = resp.headers.get("Content-Length")
            received = 0
            with open(dest, "wb") as handle:
                # raw bytes: a server's Content-Encoding must not change what is hashed
                for chunk in resp.raw.stream(1 << 20, decode_content=False):
                    received += len(chunk)
                    if received > max_bytes:
                        raise EnvoyFormulaError(f"downloading bundle {label}: larger than the {max_bytes}-byte limit")
                    handle.write(chunk)
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError) as exc:
        raise _Retryable(f"connection broken mid-body, download truncated ({exc})") from exc
    except (requests.Timeout, urllib3.exceptions.ReadTimeoutError) as exc:
        raise _Retryable(f"timed out ({exc})") from exc
    except requests.ConnectionError as exc:
        raise _Retryable(f"connection failed ({exc})") from exc
    except requests.RequestException as exc:
        raise EnvoyFormulaError(f"downloading bundle {label}: {exc}") from exc
    if expected is not None and expected.isdigit() and received != int(expected):
        raise _Retryable(f"connection closed after {received} of {expected} bytes (truncated)")
