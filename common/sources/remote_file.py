"""A CSV source that lives in Cloud Storage (`gs://bucket/object`) or on a web server (`http(s)://`), read like a file.

Why: a deployed function has no disk worth the name, so Source B must come from object storage, and the CSV reader
(`csv_file`, `csv_position`) must behave exactly as it does on a local file. It needs three things from a file, and
each has a remote counterpart:

- `seek` / `read` / `readline`: `open()` gives a buffered, seekable stream whose bytes come from HTTP Range requests
  of at most `window_bytes`, each streamed into the reader's buffer, so memory stays flat whatever the object's size.
  A server that answers a Range request with the whole body (200) is refused before that body is read: reading it
  all into memory, or reading it from the top for every seek, is never done silently.
- `stat()` = (size, mtime): (size, generation) for Cloud Storage — every overwrite of an object gets a new
  generation — and (size, ETag) for a web server (Last-Modified when there is no ETag; neither: refused, since a
  same-size correction could then never be seen). The ETag is folded into an integer so the checkpoint is unchanged.
- the file's identity, the hash of its first 64 KB, is computed by the CSV reader itself through the same stream.

An object re-uploaded with extra lines is an append, one re-uploaded with a changed line a correction, one with a
different head a replaced file: the reader's existing rules apply unchanged. Objects are read through the JSON API
(`/storage/v1/b/<bucket>/o/<object>?alt=media`) with an access token from the metadata server, or anonymously
from `STORAGE_EMULATOR_HOST`. Connection errors, timeouts, 429 and 5xx are retried (`max_attempts`), a stream cut
mid-body resumes at the byte where it stopped; 401/403/404 fail at once saying what to fix.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Callable
from urllib.parse import quote, urlsplit

import requests
import urllib3

from common.errors import SourceError, SourceUnavailable

if TYPE_CHECKING:
    from common.config import Settings

GCS_HOST = "https://storage.googleapis.com"
WINDOW_BYTES = 8 << 20  # one Range request; streamed, so this bounds a request, not memory
BUFFER_BYTES = 256 << 10
REMOTE_PREFIXES = ("gs://", "http://", "https://")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)|bytes \*/(\d+)")
_STREAM_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, requests.RequestException, OSError)


def is_remote(location: str) -> bool:
    return location.startswith(REMOTE_PREFIXES)


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach remote objects: the Cloud Storage endpoint, a bearer-token source, timeouts and retries."""

    storage_host: str = GCS_HOST
    token: Callable[[], str] | None = None  # None: anonymous (the emulator, public objects)
    timeout_s: float = 20.0
    max_attempts: int = 5
    window_bytes: int = WINDOW_BYTES
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_settings(cls, settings: "Settings") -> "RemoteOptions":
        common = {"timeout_s": settings.http_timeout_s, "max_attempts": settings.http_max_attempts}
        if settings.storage_emulator_host:
            return cls(storage_host=settings.storage_emulator_host, **common)
        from common.gcp_metadata import metadata_server

        return cls(token=metadata_server().access_token, **common)


def remote_object(location: str, options: RemoteOptions) -> "RemoteObject":
    return GcsObject(location, options) if location.startswith("gs://") else HttpObject(location, options)


class RemoteObject:
    """One object read by byte ranges; subclasses say where its bytes are and what identifies a version of it."""

    media_url: str

    def __init__(self, location: str, options: RemoteOptions) -> None:
        self.location, self.options = location, options

    @property
    def shown(self) -> str:
        """The location without query or user info (a signed URL's signature is a credential)."""
        parts = urlsplit(self.location)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"

    def stat(self) -> tuple[int, int]:
        """(size, version) of the object as it is now."""
        raise NotImplementedError

    def open(self) -> io.BufferedReader:
        return io.BufferedReader(RangeReader(self), BUFFER_BYTES)

    def headers(self) -> dict[str, str]:
        return {}

    def ranged(self, start: int, end: int) -> requests.Response | None:
        """A streamed 206 answer for bytes [start, end] (fewer at the end of the object); None past the end."""
        response = self.request(self.media_url, {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"})
        if response.status_code == 416:
            response.close()
            return None
        if response.status_code == 200:
            response.close()  # before reading the body: it is the whole object
            raise SourceError(f"{self.shown}: the server does not support Range requests (it answered 200 with the "
                              "whole object): serve the CSV from a server that honours Range (any static file "
                              "server, Cloud Storage) or copy it to a local path", path=self.shown)
        if response.status_code != 206:
            response.close()
            raise self.status_error(response.status_code)
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        span = _content_range(response.headers.get("Content-Range", ""))
        if encoding != "identity" or span is None or span[0] != start:
            response.close()
            raise SourceError(f"{self.shown}: unusable range answer (Content-Range "
                              f"{response.headers.get('Content-Range')!r}, Content-Encoding {encoding!r}): byte "
                              "offsets must address the stored bytes", path=self.shown)
        if span[1] < span[0]:  # an empty range at the end of the object (some servers answer 206, not 416)
            response.close()
            return None
        return response

    def request(self, url: str, headers: dict[str, str]) -> requests.Response:
        """GET with retries on connection errors, timeouts, 429 and 5xx; any other answer is returned."""
        attempts = self.options.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                # one connection per request, closed with its answer: nothing pooled outlives a run
                response = requests.get(url, headers={**self.headers(), **headers}, stream=True,
                                        timeout=self.options.timeout_s)
            except requests.RequestException as exc:
                problem = f"cannot read {self.shown}: {type(exc).__name__}"
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return response
                response.close()
                problem = f"{self.shown}: HTTP {response.status_code}"
            if attempt == attempts:
                raise SourceUnavailable(f"{problem} (after {attempts} attempts)", path=self.shown)
            self.options.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def status_error(self, status: int) -> SourceError:
        if status == 404:
            return SourceError(f"CSV object not found: {self.shown}", path=self.shown)
        return SourceError(f"{self.shown}: HTTP {status}", path=self.shown)


class GcsObject(RemoteObject):
    """`gs://bucket/object` through the Cloud Storage JSON API; the object's generation is its version."""

    def __init__(self, location: str, options: RemoteOptions) -> None:
        super().__init__(location, options)
        bucket, _, name = location[len("gs://"):].partition("/")
        if not bucket or not name:
            raise SourceError(f"not a Cloud Storage object: {location!r} (expected gs://bucket/object)")
        self.resource = f"{options.storage_host.rstrip('/')}/storage/v1/b/{quote(bucket, safe='')}/o/" \
                        f"{quote(name, safe='')}"
        self.media_url = self.resource + "?alt=media"

    @property
    def shown(self) -> str:
        return self.location

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.options.token()}"} if self.options.token else {}

    def stat(self) -> tuple[int, int]:
        response = self.request(self.resource, {})
        with response:
            if response.status_code != 200:
                raise self.status_error(response.status_code)
            try:
                meta = json.loads(response.content)
                size, generation = int(meta["size"]), int(meta["generation"])
            except (ValueError, KeyError, TypeError):
                raise SourceError(f"{self.shown}: unreadable object metadata", path=self.shown) from None
        if meta.get("contentEncoding", "identity") not in ("identity", ""):
            raise SourceError(f"{self.shown} is stored with Content-Encoding {meta['contentEncoding']!r} (gzip): "
                              "byte ranges cannot address its text; upload it uncompressed", path=self.shown)
        return size, generation

    def status_error(self, status: int) -> SourceError:
        if status in (401, 403):
            return SourceError(f"{self.shown}: HTTP {status} — the function's service account needs "
                               "roles/storage.objectViewer on the bucket", path=self.shown)
        return super().status_error(status)


class HttpObject(RemoteObject):
    """An `http(s)://` URL served with Range support; its ETag (else Last-Modified) is its version."""

    def __init__(self, location: str, options: RemoteOptions) -> None:
        super().__init__(location, options)
        self.media_url = location

    def stat(self) -> tuple[int, int]:
        """One byte is asked for: the answer proves Range support and carries the size and the validators."""
        response = self.request(self.media_url, {"Range": "bytes=0-0", "Accept-Encoding": "identity"})
        with response:
            if response.status_code == 200:
                raise SourceError(f"{self.shown}: the server does not support Range requests (it answered 200 "
                                  "with the whole object): serve the CSV from a server that honours Range",
                                  path=self.shown)
            if response.status_code not in (206, 416):
                raise self.status_error(response.status_code)
            span = _content_range(response.headers.get("Content-Range", ""))
            if span is None or span[2] is None:
                raise SourceError(f"{self.shown}: no object size in the range answer", path=self.shown)
            return span[2], self._version(response.headers)

    def _version(self, headers) -> int:
        if headers.get("ETag"):
            return int(hashlib.sha256(headers["ETag"].encode()).hexdigest()[:15], 16)  # fits a signed 64-bit int
        if headers.get("Last-Modified"):
            try:
                return int(parsedate_to_datetime(headers["Last-Modified"]).timestamp()) * 10**9
            except (TypeError, ValueError):
                pass
        raise SourceError(f"{self.shown}: the server sends neither ETag nor Last-Modified, so a changed file "
                          "cannot be told from an unchanged one", path=self.shown)


class RangeReader(io.RawIOBase):
    """Raw, seekable bytes of a RemoteObject: sequential reads continue one streamed range answer; a seek elsewhere
    starts a new one; a stream cut mid-body is resumed where it stopped. The first range after a seek is small (a
    header line, the 64 KB fingerprint) and each following one twice as large, up to `window_bytes`."""

    def __init__(self, obj: RemoteObject) -> None:
        self.obj, self.pos = obj, 0
        self.window = BUFFER_BYTES
        self.response: requests.Response | None = None
        self.stream_pos = self.stream_end = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a remote object seeks from its start or the current position only")
        if offset < 0:
            raise ValueError("negative seek position")
        if offset != self.pos:
            self.window = BUFFER_BYTES
        self.pos = offset
        return self.pos

    def readinto(self, buffer) -> int:
        if not len(buffer):
            return 0
        attempts = self.obj.options.max_attempts
        for attempt in range(1, attempts + 1):
            if self.response is None or self.stream_pos != self.pos or self.stream_pos > self.stream_end:
                if self.response is not None and self.stream_pos > self.stream_end:  # read to its end: go bigger
                    self.window *= 2
                self._drop()
                window = min(self.window, self.obj.options.window_bytes)
                response = self.obj.ranged(self.pos, self.pos + window - 1)
                if response is None:
                    return 0
                span = _content_range(response.headers["Content-Range"])
                self.response, self.stream_pos, self.stream_end = response, span[0], span[1]
            wanted = min(len(buffer), self.stream_end - self.stream_pos + 1)
            try:
                got = self.response.raw.readinto(memoryview(buffer)[:wanted])
            except _STREAM_ERRORS:
                got = 0
            if got:
                self.pos += got
                self.stream_pos += got
                return got
            self._drop()  # cut short: ask again from here
            if attempt == attempts:
                raise SourceUnavailable(f"{self.obj.shown}: the connection kept breaking at byte {self.pos}",
                                        path=self.obj.shown)
            self.obj.options.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self.response is not None:
            self.response.close()
        self.response, self.stream_pos, self.stream_end = None, -1, -1

    def close(self) -> None:
        self._drop()
        super().close()


def _content_range(value: str) -> tuple[int, int, int | None] | None:
    """(first, last, total) of `bytes first-last/total`; for `bytes */total` (416): (total, total - 1, total)."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if not match:
        return None
    if match.group(4) is not None:
        total = int(match.group(4))
        return total, total - 1, total
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def backoff(attempt: int) -> float:
    return min(8.0, 0.5 * 2 ** (attempt - 1))
