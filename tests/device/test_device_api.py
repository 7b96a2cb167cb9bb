"""The public API of the :class:`~sealwire.device.Device` façade is locked here: a change to it
is deliberate (as tests/test_exported_members.py locks each package's ``__all__``), and each
public member documents its contract."""

from __future__ import annotations

import inspect

from sealwire.device import Device

METHODS = {
    "activate",
    "change_passcode",
    "close",
    "compliance",
    "devices",
    "export_messages",
    "info",
    "listen",
    "lock",
    "lookup",
    "mark_read",
    "online",
    "open",
    "renew_certificate",
    "rotate_prekey",
    "send",
    "send_message",
    "sync",
    "unlock",
}
PROPERTIES = {"address", "locked", "on_message", "organisation", "policy", "server_address", "user"}
ATTRIBUTES = {"store"}
"""Set in ``__init__``."""


def _public(cls: type) -> dict[str, object]:
    return {
        name: value
        for klass in reversed(cls.__mro__[:-1])
        for name, value in vars(klass).items()
        if not name.startswith("_")
    }


def test_the_public_members_of_device_are_the_expected_ones() -> None:
    members = _public(Device)
    properties = {name for name, value in members.items() if isinstance(value, property)}
    methods = set(members) - properties
    assert methods == METHODS
    assert properties == PROPERTIES


def test_the_public_attributes_of_a_device_are_the_expected_ones() -> None:
    device = Device(_StoreStub())  # type: ignore[arg-type]
    attributes = {name for name in vars(device) if not name.startswith("_")}
    assert attributes == ATTRIBUTES


def test_every_public_member_documents_its_contract() -> None:
    for name, value in _public(Device).items():
        function = value.fget if isinstance(value, property) else value
        if isinstance(function, classmethod | staticmethod):
            function = function.__func__
        doc = inspect.getdoc(function)
        assert doc, f"Device.{name} has no docstring"
        if isinstance(value, property):
            continue
        signature = inspect.signature(function)  # type: ignore[arg-type]
        parameters = [p for p in signature.parameters if p not in ("self", "cls")]
        if parameters:
            assert "Args:" in doc, f"Device.{name} does not document its arguments"
            for parameter in parameters:
                assert f"{parameter}:" in doc, f"Device.{name} does not document {parameter}"
        if signature.return_annotation not in ("None", None, inspect.Signature.empty):
            assert "Returns:" in doc, f"Device.{name} does not document what it returns"


class _StoreStub:
    """Enough of a store to build a device object (nothing is read before it is used)."""
