"""Sandbox and build ids."""

from __future__ import annotations

import re

from corral.service.ids import ID_ALPHABET, random_id


def test_ids_are_twenty_lowercase_alphanumerics_using_the_whole_alphabet_in_every_position() -> None:
    ids = [random_id() for _ in range(5000)]
    assert all(re.fullmatch(r"[a-z0-9]{20}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    for position in (0, 10, 19):  # a digit that is never drawn (e.g. a biased top digit) shows here
        assert {i[position] for i in ids} == set(ID_ALPHABET)
