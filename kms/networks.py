"""The networks ``tmkms init -n`` knows (tmkms v0.15 src/commands/init/networks.rs and templates/networks/*.toml):
name -> chain id and bech32 key prefixes, so ``pykms init -n cosmoshub,osmosis`` writes what tmkms would."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["NETWORKS", "Network"]


class Network(NamedTuple):
    chain_id: str
    account_key_prefix: str
    consensus_key_prefix: str


NETWORKS: dict[str, Network] = {
    "cosmoshub": Network("cosmoshub-3", "cosmospub", "cosmosvalconspub"),
    "irishub": Network("irishub", "iap", "icp"),
    "sentinelhub": Network("sentinelhub-2", "sentpub", "sentvalconspub"),
    "osmosis": Network("osmosis-1", "osmopub", "osmovalconspub"),
    "core": Network("core-1", "persistencepub", "persistencevalconspub"),  # Persistence
}
