"""A small real key holder for the channel tests: a PyNaCl key per chain and a dict for state.

It stands for the far side of the channel (the real one is pykms.keyholder.local); what is under test is the
wire, the server and the client. Its rule is a miniature guard: the first 8 bytes of the sign bytes are the height;
a lower height is a regression, the same height with other bytes a conflict, the same bytes the stored signature.
Sign bytes starting with b"SLOW" sleep 30 s first (to kill the process mid-request); b"BUG" raises a foreign error.

Run as a script it serves on a UNIX socket path: ``python keyholder_peer.py PATH SEED_HEX`` and prints "ready".
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import nacl.signing

from pykms.errors import ChainIdMismatch, ConflictError, RegressionError
from pykms.keyholder.api import ChainKey, Signed


class DictKeyHolder:
    def __init__(self, seed: bytes, chains: tuple[str, ...] = ("chain-a", "chain-b")) -> None:
        self.key = nacl.signing.SigningKey(seed)
        self.chain_ids = chains
        self.state: dict[str, tuple[int, bytes, bytes]] = {}
        self.lock = threading.Lock()
        self.closed = False

    def chains(self) -> dict[str, ChainKey]:
        return {c: ChainKey(bytes(self.key.verify_key), "ed25519", True) for c in self.chain_ids}

    def health(self) -> dict[str, str]:
        return dict.fromkeys(self.chain_ids, "ok")

    def sign(self, chain_id: str, sign_bytes: bytes, extension_sign_bytes: bytes = b"") -> Signed:
        if chain_id not in self.chain_ids:
            raise ChainIdMismatch(f"chain {chain_id!r} is not served")
        if sign_bytes.startswith(b"SLOW"):
            time.sleep(30)
        if sign_bytes.startswith(b"BUG"):
            raise RuntimeError("secret-looking detail that must not cross")
        height = int.from_bytes(sign_bytes[:8].ljust(8, b"\0"), "big")
        with self.lock:
            last = self.state.get(chain_id)
            if last is not None:
                if height < last[0]:
                    raise RegressionError(f"height {height} below {last[0]}")
                if height == last[0]:
                    if sign_bytes != last[1]:
                        raise ConflictError(f"conflicting request at height {height}")
                    return Signed(last[2], None, b"", False)
            signature = self.key.sign(sign_bytes).signature
            ext = self.key.sign(extension_sign_bytes).signature if extension_sign_bytes else b""
            self.state[chain_id] = (height, sign_bytes, signature)
        return Signed(signature, None, ext, True, 0.001, 0.002)

    def close(self) -> None:
        self.closed = True


def main() -> None:
    from pykms.keyholder.server import KeyHolderServer, listen_unix

    path, seed = Path(sys.argv[1]), bytes.fromhex(sys.argv[2])
    server = KeyHolderServer(DictKeyHolder(seed), log=lambda *a, **k: print(a, k, file=sys.stderr, flush=True))
    listener = listen_unix(path)
    if "--ready-fd" in sys.argv:  # as the supervisor starts pykms keyholder serve
        fd = int(sys.argv[sys.argv.index("--ready-fd") + 1])
        os.write(fd, b"ready\n")
        os.close(fd)
    else:
        print("ready", flush=True)
    server.serve_forever(listener)


if __name__ == "__main__":
    main()
