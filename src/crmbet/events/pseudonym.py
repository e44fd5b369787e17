"""Keyed pseudonymisation of player identifiers (HMAC-SHA256).

The same key always maps the same raw identifier to the same pseudonym, so
events from different sources join on the player, while someone without the
key cannot recover or test guesses of the raw identifier.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np
import polars as pl

#: Hex characters kept from the digest: 80 bits, so a collision among a
#: billion players has a probability of about 4e-7 (birthday bound).
PSEUDONYM_HEX_CHARS = 20

#: Pattern of every pseudonym: ``p_`` and 20 lowercase hex characters.
PSEUDONYM_PATTERN = re.compile(rf"p_[0-9a-f]{{{PSEUDONYM_HEX_CHARS}}}")

#: Block size of SHA-256 in bytes, which HMAC pads the key to (RFC 2104).
_SHA256_BLOCK_BYTES = 64


#: Message whose keyed hash is the key's fingerprint.
_FINGERPRINT_TEXT = b"\x00crmbet pseudonymisation key fingerprint"


class Pseudonymizer:
    """Map raw player identifiers to pseudonyms with HMAC-SHA256.

    Examples
    --------
    >>> pseudonymizer = Pseudonymizer(b"secret")
    >>> pseudonymizer.pseudonymize("alice") == pseudonymizer.pseudonymize("alice")
    True
    >>> pseudonymizer.pseudonymize("alice").startswith("p_")
    True
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("pseudonymisation key is empty; set CRMBET_PSEUDONYM_KEY")
        # HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)) (RFC 2104). The two
        # keyed SHA-256 states are computed once and copied per id, which
        # costs about half of hmac.new or a copy of a keyed hmac object.
        self._key = key
        if len(key) > _SHA256_BLOCK_BYTES:
            key = hashlib.sha256(key).digest()
        padded = key.ljust(_SHA256_BLOCK_BYTES, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<hidden>)"

    def __reduce__(self) -> tuple[type[Pseudonymizer], tuple[bytes]]:
        # hashlib states cannot be pickled; Dask workers rebuild them from
        # the key.
        return (Pseudonymizer, (self._key,))

    @property
    def fingerprint(self) -> str:
        """A short tag of the key, safe to store and log, to tell keys apart.

        It is the keyed hash of a fixed text that starts with a NUL byte,
        which player ids do not contain, so it reveals neither the key nor a
        player's pseudonym.
        """
        inner = self._inner.copy()
        inner.update(_FINGERPRINT_TEXT)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return "k_" + outer.hexdigest()[:12]

    def pseudonymize(self, raw_id: str) -> str:
        """Return the pseudonym of one raw player identifier."""
        inner = self._inner.copy()
        inner.update(raw_id.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return "p_" + outer.hexdigest()[:PSEUDONYM_HEX_CHARS]

    def pseudonymize_many(self, raw_ids: Iterable[str]) -> list[str]:
        """Return the pseudonym of each raw player identifier, in order."""
        inner_copy = self._inner.copy
        outer_copy = self._outer.copy
        pseudonyms = []
        for raw_id in raw_ids:
            inner = inner_copy()
            inner.update(raw_id.encode())
            outer = outer_copy()
            outer.update(inner.digest())
            pseudonyms.append("p_" + outer.hexdigest()[:PSEUDONYM_HEX_CHARS])
        return pseudonyms

    def pseudonymize_column(
        self, frame: pl.DataFrame, column: str = "player_id"
    ) -> pl.DataFrame:
        """Replace ``column`` of ``frame`` with pseudonyms, hashing each id once."""
        if frame.height == 0:
            return frame
        raw_ids = frame.get_column(column)
        lookup = self.lookup_table(raw_ids.unique()).rename({"raw_id": column})
        # Only the id column goes through the join, so the frame's other
        # columns are not copied.
        pseudonyms = (
            raw_ids.to_frame()
            .join(lookup, on=column, how="left", maintain_order="left")
            .get_column("pseudonym")
        )
        # The join returns one chunk. Sliced back into the chunks of the id
        # column, it stays aligned with the other columns, which would
        # otherwise all be copied into one chunk by the next query.
        lengths = raw_ids.chunk_lengths()
        if len(lengths) > 1:
            offsets = np.cumsum([0, *lengths[:-1]])
            pseudonyms = pl.concat(
                [
                    pseudonyms.slice(offset, length)
                    for offset, length in zip(offsets, lengths, strict=True)
                ],
                rechunk=False,
            )
        return frame.with_columns(pseudonyms.alias(column))

    def lookup_table(self, raw_ids: pl.Series) -> pl.DataFrame:
        """Return ``raw_id`` and ``pseudonym`` columns for distinct raw ids."""
        return pl.DataFrame(
            {"raw_id": raw_ids, "pseudonym": self.pseudonymize_many(raw_ids.to_list())}
        )
