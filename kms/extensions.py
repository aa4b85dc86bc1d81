"""Which wire dialect a ``[[validator]]`` speaks and whether its chain's votes get an extension signature.

tmkms v0.15 (src/config/validator.rs, src/session.rs) speaks the v0.38 privval protobuf whatever
``protocol_version`` says: ``"v0.34"`` only logs a deprecation warning. Extensions are signed when, and only
when, the chain says ``sign_extensions = true`` (src/config/chain.rs: ``#[serde(default)]`` false), on every
non-nil precommit. pykms resolves the pair once at start-up (a pure function, tested as a table):

=================  ===============  ===================================  ===========================================
protocol_version   sign_extensions  tmkms v0.15                          pykms
=================  ===============  ===================================  ===========================================
v0.34 / v0.37      unset            v0.38 wire, no extension signature   that dialect's wire, no extension signature
v0.34 / v0.37      true             v0.38 wire, signs extensions         v0.38 wire, signs extensions (warning)
any                false            no extension signature               no extension signature
v0.38 (default)    unset            no extension signature               signs extensions (as CometBFT's FilePV)
v0.38              true             signs extensions                     signs extensions
v1.0 (pykms only)  unset / true     (no such version)                    signs unless the node sets
                                                                         skip_extension_signing
=================  ===============  ===================================  ===========================================

The one deliberate difference (v0.38, unset): a v0.38 node with vote extensions enabled cannot use a non-nil
precommit without an extension signature (the chain stalls), while one it does not need is dropped by the node;
so pykms signs as the node's own FilePV does. A key that cannot sign extensions (Ledger) is refused at start-up
when extensions would be signed, and the fix says to write ``sign_extensions = false`` (right only when the
chain has vote extensions disabled).
"""

from __future__ import annotations

from dataclasses import dataclass

from pykms.errors import ConfigError

__all__ = ["ExtensionPlan", "plan_extensions"]

_PRE_EXTENSION = ("v0.34", "v0.37")


@dataclass(frozen=True)
class ExtensionPlan:
    """What one ``[[validator]]`` does: the dialect its requests are read in, and the chain's extension policy."""

    #: The privval dialect spoken on the wire (``protocol_version`` unless tmkms's semantics say otherwise).
    dialect: str
    #: The chain's policy for the handler, the same for every validator of the chain (the handler's context is
    #: shared): False never; None by dialect (v0.38 and v1.0 sign on every non-nil precommit, older never);
    #: True as None.
    sign_extensions: bool | None
    #: A warning for the start-up log, or "".
    note: str = ""


def plan_extensions(
    protocol_version: str,
    sign_extensions: bool | None,
    *,
    signs_extensions: bool = True,
    chain_id: str = "",
    file: str | None = None,
) -> ExtensionPlan:
    """Resolve ``protocol_version`` x ``sign_extensions`` (see the table above); ConfigError for what cannot work.

    ``signs_extensions`` is the provider's capability (False for a Ledger key).
    """
    if sign_extensions is False:
        return ExtensionPlan(protocol_version, False)
    if sign_extensions is True and protocol_version in _PRE_EXTENSION:
        dialect = "v0.38"
        note = (
            f"protocol_version = {protocol_version!r} with sign_extensions = true: speaking the v0.38 privval "
            "protocol and signing vote extensions, as tmkms v0.15 does (protocol_version is deprecated there); "
            'write protocol_version = "v0.38" to silence this'
        )
    elif protocol_version in _PRE_EXTENSION:
        return ExtensionPlan(protocol_version, None)  # the dialect carries no extensions
    else:
        dialect, note = protocol_version, ""
    if not signs_extensions:
        chain = f'[[chain]] id = "{chain_id}"' if chain_id else "[[chain]]"
        why = "sign_extensions = true asks for them" if sign_extensions else f"protocol_version {dialect} signs them"
        raise ConfigError(
            f"this chain's key cannot sign vote extensions (a Ledger), and {why} on every non-nil precommit",
            file=file,
            key="chain.sign_extensions",
            fix=f"write sign_extensions = false under {chain} if (and only if) the chain has vote extensions "
            "disabled, or use another provider",
        )
    return ExtensionPlan(dialect, True if sign_extensions else None, note)
