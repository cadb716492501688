"""Ed25519 keys: generation, key files, and the keyring of trusted members.

A private key file holds the 32-byte seed in base64 on one line, mode 0600. The
public key file beside it (``<name>.pub``) holds the 32-byte verify key in base64,
which is also the form operators paste into ``trusted_keys``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import nacl.exceptions
import nacl.signing

from .errors import KeyFileError

__all__ = [
    "SigningKey",
    "VerifyKey",
    "Keyring",
    "generate_key_files",
    "load_signing_key",
    "parse_public_key",
    "encode_public_key",
    "key_id",
]

SigningKey = nacl.signing.SigningKey
VerifyKey = nacl.signing.VerifyKey


def encode_public_key(verify_key: VerifyKey) -> str:
    return base64.b64encode(bytes(verify_key)).decode("ascii")


def parse_public_key(text: str) -> VerifyKey:
    """Parse a base64 Ed25519 public key.

    Raises:
        KeyFileError: the text is not base64 of exactly 32 bytes.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"public key {text!r} is not valid base64") from exc
    if len(raw) != 32:
        raise KeyFileError(
            f"public key {text!r} decodes to {len(raw)} bytes, expected 32"
        )
    return VerifyKey(raw)


def key_id(verify_key: VerifyKey) -> str:
    """Return a short fingerprint of a public key: 16 hex digits of its SHA-256."""
    return hashlib.sha256(bytes(verify_key)).hexdigest()[:16]


def generate_key_files(private_path: Path) -> SigningKey:
    """Write a new private key to ``private_path`` (mode 0600) and its ``.pub``.

    Raises:
        KeyFileError: the private key file already exists; keys are never
            overwritten, because peers trust the old public key.
    """
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    seed = base64.b64encode(bytes(key)).decode("ascii") + "\n"

    # O_EXCL refuses to replace a key; the mode is set at creation so the seed
    # is never readable by others, not even for a moment.
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"key file {str(private_path)!r} already exists; remove it first "
            "or choose another --out path"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(seed)

    public_path = Path(str(private_path) + ".pub")
    public_path.write_text(encode_public_key(key.verify_key) + "\n")
    return key


def load_signing_key(path: Path) -> SigningKey:
    """Load a private key written by :func:`generate_key_files`.

    Raises:
        KeyFileError: the file is missing, unreadable or not a 32-byte seed.
    """
    # A public key has the same form as a seed, so only the name tells them
    # apart; loading one would start an agent whose frames nobody accepts.
    if path.suffix == ".pub":
        raise KeyFileError(
            f"key file {str(path)!r} is a public key; key_file must name the "
            f"private key that `alarminati keygen` wrote beside it ({path.stem!r})"
        )
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read key file {str(path)!r}: {exc.strerror}; "
            "create one with `alarminati keygen --out PATH`"
        ) from exc
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"key file {str(path)!r} is not valid base64") from exc
    if len(seed) != 32:
        raise KeyFileError(
            f"key file {str(path)!r} holds {len(seed)} bytes, expected a "
            "32-byte Ed25519 seed"
        )
    return SigningKey(seed)


class Keyring:
    """The public keys of the members whose messages this agent accepts."""

    def __init__(self, keys: Mapping[str, VerifyKey]) -> None:
        # Member name to public key; read-only after construction.
        self._keys = dict(keys)

    def __contains__(self, name: str) -> bool:
        return name in self._keys

    def names(self) -> list[str]:
        return sorted(self._keys)

    def get(self, name: str) -> VerifyKey | None:
        return self._keys.get(name)

    def verify(self, name: str, data: bytes, signature: bytes) -> bool:
        """Return whether ``signature`` over ``data`` is valid for member ``name``.

        An unknown member never verifies.
        """
        key = self._keys.get(name)
        if key is None:
            return False
        try:
            key.verify(data, signature)
        except nacl.exceptions.BadSignatureError:
            return False
        return True
