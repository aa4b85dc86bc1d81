"""Builds every configured signing backend and maps each chain id to its signer.

Provider modules are imported only when their section is present, so a softsign-only deployment does not need
the yubihsm, ledgerblue or PKCS#11 libraries installed.
"""

from __future__ import annotations

from pykms.config import KmsConfig
from pykms.errors import ConfigError
from pykms.providers.signer import Signer

__all__ = ["build_signers"]


def build_signers(config: KmsConfig) -> dict[str, Signer]:
    """One signer per chain id; a chain named by two providers is a configuration error."""
    signers: dict[str, Signer] = {}
    providers = config.providers

    def add(chain_ids: list[str], signer: Signer, section: str) -> None:
        for chain_id in chain_ids:
            if chain_id in signers:
                raise ConfigError(
                    f"chain {chain_id!r} has a key in two providers",
                    file=str(config.path),
                    key=f"providers.{section}.chain_ids",
                    fix="keep exactly one provider entry per chain",
                )
            signers[chain_id] = signer

    if providers.softsign:
        from pykms.providers.secp256k1 import Secp256k1Signer
        from pykms.providers.softsign import SoftsignSigner

        for soft in providers.softsign:
            signer = (
                Secp256k1Signer.from_config(soft) if soft.key_type == "account" else SoftsignSigner.from_config(soft)
            )
            add(list(soft.chain_ids), signer, "softsign")
    if providers.yubihsm:
        from pykms.providers.yubihsm import YubihsmSigner

        for hsm in providers.yubihsm:
            for key in hsm.keys:
                add(list(key.chain_ids), YubihsmSigner.from_config(hsm, key), "yubihsm")
    if providers.ledger:
        from pykms.providers.ledger import LedgerSigner

        for ledger in providers.ledger:
            add(list(ledger.chain_ids), LedgerSigner.from_config(ledger), "ledger")
    if providers.pkcs11:
        from pykms.providers.pkcs11 import Pkcs11Signer

        for token in providers.pkcs11:
            for p11key in token.keys:
                add(list(p11key.chain_ids), Pkcs11Signer.from_config(token, p11key), "pkcs11")
    if providers.threshold:
        from pykms.providers.threshold import ThresholdSigner

        for group in providers.threshold:
            add(list(group.chain_ids), ThresholdSigner.from_config(group), "threshold")
    return signers
