"""Fuzz target: the privval codec's input side on arbitrary bytes.

Run with atheris (``python tests/fuzz/fuzz_codec.py [corpus_dir] -max_total_time=60``), or call
``TestOneInput`` from a test. Property: stream bytes fed to the MessageReader, and every body decoded as a request
in every dialect (then turned into sign bytes the way the handler does), raise nothing but DecodeError or
InvalidRequest; anything else escaping is a bug.
"""

from __future__ import annotations

import sys

from pykms.errors import DecodeError, InvalidRequest
from pykms.privval import codec
from pykms.privval.signbytes import proposal_sign_bytes, step_of, vote_extension_sign_bytes, vote_sign_bytes

__all__ = ["TestOneInput"]

_CAP = 4096  # small cap so both the over-cap and the complete-body paths are reachable from short inputs


def _exercise(dialect: codec.Dialect, body: bytes) -> None:
    try:
        req = codec.decode_request(dialect, body)
    except DecodeError:
        return
    try:
        if isinstance(req, codec.SignVoteRequest):
            step_of(req)
            vote_sign_bytes("fuzz-chain", req.vote)
            vote_extension_sign_bytes("fuzz-chain", req.vote)
        elif isinstance(req, codec.SignProposalRequest):
            proposal_sign_bytes("fuzz-chain", req.proposal)
        # What the signer sends back must decode again as the matching response.
        if not isinstance(req, codec.PingRequest):
            codec.decode_response(dialect, codec.encode_error(dialect, req, 0, "fuzz"))
        codec.decode_request(dialect, codec.encode_request(dialect, req))
    except InvalidRequest:
        return
    try:
        codec.decode_response(dialect, body)
    except DecodeError:
        return


def TestOneInput(data: bytes) -> None:  # atheris's required name
    """One fuzz input: only DecodeError and InvalidRequest may escape."""
    for dialect in codec.Dialect:
        _exercise(dialect, data)
        reader = codec.MessageReader(_CAP)
        try:
            # Two feeds, split mid-input, so the reader's carry-over state is exercised too.
            middle = len(data) // 2
            bodies = reader.feed(data[:middle]) + reader.feed(data[middle:])
        except DecodeError:
            continue
        for body in bodies:
            _exercise(dialect, body)


def main() -> None:  # pragma: no cover - needs atheris and runs until stopped
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    main()
