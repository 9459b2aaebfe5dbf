"""API keys: a JSON file of principals and key hashes, written by ``dcssa-rt api-key``, read by ``serve``.

A key is ``dcssa_<id>_<secret>``: the id (public, 12 hex characters) finds its record, the secret
(32 random bytes) is never stored. Each record keeps a random salt and SHA-256(salt || key): the
key has 256 bits of entropy, so a fast hash is as good as a slow one against guessing, and a stolen
file yields no usable key. Comparisons are constant-time. The file is rewritten atomically (temp
file, fsync, rename) with mode 0600; a server re-reads it when its mtime, size or inode change, so
``api-key revoke`` takes effect on the next request without a restart.

Only the standard library is used: ``dcssa-rt api-key`` runs without the ``[serve]`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import DcssaError

PREFIX = "dcssa"
FORMAT = "dcssa-rt api keys"
VERSION = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_KEY = re.compile(r"dcssa_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")

log = logging.getLogger("dcssa.serve")


@dataclass(frozen=True)
class KeyRecord:
    """One stored key: who it is for and how to recognise it (never the key itself)."""

    id: str
    principal: str
    salt: str
    sha256: str
    created: str

    def matches(self, key: str) -> bool:
        digest = hashlib.sha256(bytes.fromhex(self.salt) + key.encode()).hexdigest()
        return hmac.compare_digest(digest, self.sha256)


def new_key() -> tuple[str, str]:
    """(key id, the full key): the id is public, the key is shown once and never stored."""
    kid = secrets.token_hex(6)
    return kid, f"{PREFIX}_{kid}_{secrets.token_urlsafe(32)}"


def record_for(principal: str, kid: str, key: str) -> KeyRecord:
    salt = secrets.token_bytes(16)
    return KeyRecord(kid, principal, salt.hex(), hashlib.sha256(salt + key.encode()).hexdigest(),
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def check_name(principal: str) -> str:
    if not NAME.fullmatch(principal):
        raise DcssaError(f"principal name {principal!r} is not allowed",
                         hint="use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    return principal


def read_keys(path: Path) -> list[KeyRecord]:
    """The records of a keys file; a clear error naming the file for anything else."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DcssaError("no such API keys file", path=path,
                         hint="create it with `dcssa-rt api-key add NAME --file FILE`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        raise DcssaError(f"cannot read the API keys file ({reason})", path=path,
                         hint="fix its permissions, or recreate it with `dcssa-rt api-key add`") from None
    try:
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError
        return [KeyRecord(**{k: str(r[k]) for k in KeyRecord.__dataclass_fields__}) for r in doc["keys"]]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise DcssaError("not a dcssa-rt API keys file", path=path,
                         hint="recreate it with `dcssa-rt api-key add NAME --file FILE`") from None


def write_keys(path: Path, records: list[KeyRecord]) -> None:
    """Replace ``path`` atomically with ``records`` (mode 0600): a reader sees the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "version": VERSION, "keys": [asdict(r) for r in records]}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_key(path: Path, principal: str) -> tuple[KeyRecord, str]:
    """A new key for ``principal`` stored in ``path`` (created if missing): (its record, the key)."""
    check_name(principal)
    records = read_keys(path) if Path(path).exists() else []
    kid, key = new_key()
    while any(r.id == kid for r in records):  # pragma: no cover - 2**-48
        kid, key = new_key()
    record = record_for(principal, kid, key)
    write_keys(path, [*records, record])
    return record, key


def revoke(path: Path, which: str) -> list[KeyRecord]:
    """Remove the key with id ``which``, or every key of the principal ``which``; the removed records."""
    records = read_keys(path)
    gone = [r for r in records if r.id == which] or [r for r in records if r.principal == which]
    if not gone:
        raise DcssaError(f"no key id or principal {which!r}", path=path,
                         hint="see `dcssa-rt api-key list --file FILE` for the ids and principals")
    write_keys(path, [r for r in records if r not in gone])
    return gone


class KeyRing:
    """The keys of one file as a server sees them: re-read when the file changes (mtime/size/inode).

    A file that turns unreadable or invalid while serving keeps the last good keys (logged, once per
    change), so a half-finished manual edit cannot lock everyone out; revoke with ``api-key revoke``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._bad: tuple[int, int, int] | None = None
        self._by_id: dict[str, KeyRecord] = {}
        self._load(self._stat(), strict=True)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _load(self, stamp: tuple[int, int, int] | None, strict: bool = False) -> None:
        try:
            records = read_keys(self.path)
        except DcssaError as exc:
            if strict:
                raise
            if stamp != self._bad:
                log.error("API keys file not reloaded, the previous keys stay in use: %s", exc)
                self._bad = stamp
            return
        self._by_id = {r.id: r for r in records}
        self._stamp, self._bad = stamp, None

    def __len__(self) -> int:
        return len(self._by_id)

    def refresh(self) -> None:
        stamp = self._stat()
        if stamp != self._stamp and stamp != self._bad:
            self._load(stamp)

    def principal(self, key: str) -> str | None:
        """Whose key this is, or None (unknown, revoked, malformed)."""
        self.refresh()
        m = _KEY.fullmatch(key)
        record = self._by_id.get(m.group(1)) if m else None
        return record.principal if record is not None and record.matches(key) else None
