"""Threshold signing: FROST(Ed25519, SHA-512) shares, cosigners and the coordinating provider."""
