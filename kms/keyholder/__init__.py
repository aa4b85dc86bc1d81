"""The key holder: the keys, the double-sign guard and the audit log, behind one narrow seam (``api.KeyHolder``).

The front (validator connections, SecretConnection, the privval codec, metrics) asks it for one thing: sign these
canonical sign bytes for this chain. It runs in the same process (``isolation = "none"``) or in a process of its
own reached over a UNIX socket.
"""
