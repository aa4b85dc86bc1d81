"""pykms: a remote signer for CometBFT validators, a drop-in for tmkms."""

__version__ = "0.1.0"
