"""Keyed pseudonymisation of player identifiers (HMAC-SHA256).

The same key always maps the same raw identifier to the same pseudonym, so
events from different sources join on the player, while someone without the
key cannot recover or test guesses of the raw identifier.
"""

from __future__ import annotations

import hashlib
import hmac

import polars as pl

#: Hex characters kept from the digest: 80 bits, so a collision among a
#: billion players has a probability of about 4e-7 (birthday bound).
PSEUDONYM_HEX_CHARS = 20


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
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<hidden>)"

    def pseudonymize(self, raw_id: str) -> str:
        """Return the pseudonym of one raw player identifier."""
        digest = hmac.new(self._key, raw_id.encode(), hashlib.sha256).hexdigest()
        return "p_" + digest[:PSEUDONYM_HEX_CHARS]

    def pseudonymize_column(
        self, frame: pl.DataFrame, column: str = "player_id"
    ) -> pl.DataFrame:
        """Replace ``column`` of ``frame`` with pseudonyms, hashing each id once."""
        if frame.height == 0:
            return frame
        unique = frame.get_column(column).unique()
        lookup = pl.DataFrame(
            {
                column: unique,
                "__pseudonym": [self.pseudonymize(raw) for raw in unique.to_list()],
            }
        )
        joined = frame.join(lookup, on=column, how="left", maintain_order="left")
        return joined.with_columns(pl.col("__pseudonym").alias(column)).drop(
            "__pseudonym"
        )
