"""Builds every configured signing backend and maps each chain id to its signer.

Driven by the same table as config loading (``pykms.config.providers.PROVIDERS``); a provider's module is imported
only when it has entries, so a softsign-only deployment does not need the yubihsm, ledgerblue or PKCS#11 libraries
installed. One key per chain was checked when the config was loaded.
"""

from __future__ import annotations

from pykms.config import KmsConfig
from pykms.config.providers import PROVIDERS
from pykms.providers.signer import Signer

__all__ = ["build_signers"]


def build_signers(config: KmsConfig) -> dict[str, Signer]:
    """One signer per chain id."""
    signers: dict[str, Signer] = {}
    for section in dict.fromkeys(PROVIDERS.values()):  # ledgertm and ledger: one section, built once
        for entry in getattr(config.providers, section.field):
            for chain_ids, signer in section.build(entry):
                signers.update(dict.fromkeys(chain_ids, signer))
    return signers
