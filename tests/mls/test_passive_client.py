"""The Group as a passive client against the official ``passive-client-welcome``,
``passive-client-handling-commit`` and ``passive-client-random`` vectors (RFC 9420 §12).

Each case: ``{cipher_suite, external_psks[{psk_id, psk}], key_package, signature_priv,
encryption_priv, init_priv, welcome, ratchet_tree (null when the GroupInfo carries it),
initial_epoch_authenticator, epochs[{proposals[], commit, epoch_authenticator}]}``. The client
joins from the Welcome, checks the epoch authenticator, then for each epoch processes the
proposals (``MLSMessage``s), then the commit, and checks the new epoch authenticator.
"""

from __future__ import annotations

from typing import Any

import pytest

from sealwire.mls import structs as s
from sealwire.mls._tls import decode
from sealwire.mls.group import CommitApplied, Group, ProposalReceived
from sealwire.mls.tree import RatchetTree
from tests.mls.vectors import cases, h


def _run(case: dict[str, Any]) -> None:
    kp = decode(s.MLSMessage, h(case["key_package"])).body
    welcome = decode(s.MLSMessage, h(case["welcome"])).body
    assert isinstance(kp, s.KeyPackage) and isinstance(welcome, s.Welcome)
    tree = RatchetTree.decode(h(case["ratchet_tree"])) if case["ratchet_tree"] else None
    group = Group.join(
        welcome,
        kp,
        h(case["init_priv"]),
        h(case["encryption_priv"]),
        h(case["signature_priv"]),
        lambda credential, key: True,
        ratchet_tree=tree,
        external_psks={h(p["psk_id"]): h(p["psk"]) for p in case["external_psks"]},
    )
    assert group.epoch_authenticator.hex() == case["initial_epoch_authenticator"]
    for i, epoch in enumerate(case["epochs"]):
        for proposal in epoch["proposals"]:
            event = group.process(decode(s.MLSMessage, h(proposal)))
            assert isinstance(event, ProposalReceived)
        event = group.process(decode(s.MLSMessage, h(epoch["commit"])))
        assert isinstance(event, CommitApplied) and not event.removed, i
        assert group.epoch_authenticator.hex() == epoch["epoch_authenticator"], i


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("passive-client-welcome"))
def test_passive_client_welcome(case: dict[str, Any]) -> None:
    _run(case)


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("passive-client-handling-commit"))
def test_passive_client_handling_commit(case: dict[str, Any]) -> None:
    _run(case)


@pytest.mark.vectors
@pytest.mark.parametrize("case", cases("passive-client-random"))
def test_passive_client_random(case: dict[str, Any]) -> None:
    _run(case)
