"""Loader for the official MLS interop vectors in ``tests/vectors/mls/`` (see README.md there).

Every file is a JSON list of test cases; byte strings are lowercase hex. Most cases carry a
``cipher_suite`` number; :func:`cases` keeps the ones whose suite we implement and returns them
as ``pytest.param`` objects named ``suite<N>-<index>``. :func:`unsupported_suites` lists the
suites a file covers that we deliberately do not implement.

The fields used by our tests (names as in the files):

* ``crypto-basics``: per suite, one object per operation, e.g. ``expand_with_label`` =
  ``{secret, label, context, length, out}``; ``sign_with_label`` = ``{priv, pub, content,
  label, signature}``; ``encrypt_with_label`` = ``{priv, pub, label, context, plaintext,
  kem_output, ciphertext}``. Labels are text without the ``"MLS 1.0 "`` prefix, except
  ``ref_hash.label`` which is used verbatim.
* ``tree-math``: ``{n_leaves, n_nodes, root, left[], right[], parent[], sibling[]}`` indexed by
  node, ``null`` where the relative does not exist.
* ``secret-tree``: ``{cipher_suite, encryption_secret, sender_data{sender_data_secret,
  ciphertext, key, nonce}, leaves[[{generation, handshake_key, handshake_nonce,
  application_key, application_nonce}]]}`` (one list per leaf).
* ``key-schedule``: ``{cipher_suite, group_id, initial_init_secret, epochs[{tree_hash,
  commit_secret, psk_secret, confirmed_transcript_hash, group_context, joiner_secret, ...,
  external_pub, exporter{label, context, length, secret}}]}``. Note: ``exporter.label`` is fed
  to ``MLS-Exporter`` as the ASCII text of the hex string as written (that is how the vectors
  were generated), while ``exporter.context`` is hex-decoded.
* ``psk_secret``: ``{cipher_suite, psks[{psk_id, psk, psk_nonce}], psk_secret}``; all PSKs are
  external.
* ``transcript-hashes``: ``{cipher_suite, confirmation_key, authenticated_content,
  interim_transcript_hash_before, confirmed_transcript_hash_after,
  interim_transcript_hash_after}``; ``authenticated_content`` is a serialized commit
  ``AuthenticatedContent``.

The later families (``deserialization``, ``messages``, ``tree-validation``, ``tree-operations``,
``message-protection``, ``treekem``, ``welcome``, ``passive-client-*``) are described in the
docstring of the test module that reads them (see ``tests/vectors/mls/README.md``).
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import pytest

from sealwire.mls.crypto import SUPPORTED_SUITES

VECTOR_DIR = pathlib.Path(__file__).parents[1] / "vectors" / "mls"


@functools.cache
def load(name: str) -> list[dict[str, Any]]:
    """All cases of ``<name>.json``."""
    data = json.loads((VECTOR_DIR / f"{name}.json").read_text())
    assert isinstance(data, list) and data, name
    return data


def cases(name: str) -> list[Any]:
    """Cases of ``name`` for supported cipher suites, as pytest params with readable ids."""
    params = [
        pytest.param(case, id=f"suite{case['cipher_suite']}-{i}")
        for i, case in enumerate(load(name))
        if case["cipher_suite"] in SUPPORTED_SUITES
    ]
    assert params, f"no supported-suite cases in {name}"
    return params


def unsupported_suites(name: str) -> list[int]:
    """Cipher suites present in ``name`` that we do not implement (by design)."""
    return sorted({c["cipher_suite"] for c in load(name)} - set(SUPPORTED_SUITES))


def h(value: str) -> bytes:
    """Decode a hex field."""
    return bytes.fromhex(value)
