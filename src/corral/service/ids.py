"""Random identifiers: sandbox and build ids, 20 characters of ``[a-z0-9]``."""

from __future__ import annotations

import secrets
import string

ID_ALPHABET = string.ascii_lowercase + string.digits


def random_id(length: int = 20) -> str:
    """Uniform over all ``36**length`` strings, from one random number: one ``getrandom`` call (a
    second for about one draw in three, rejected as out of range) instead of one or two per
    character; on the event loop each call may give up the GIL to busy worker threads."""
    n = secrets.randbelow(len(ID_ALPHABET) ** length)
    chars = []
    for _ in range(length):
        n, digit = divmod(n, len(ID_ALPHABET))
        chars.append(ID_ALPHABET[digit])
    return "".join(chars)
