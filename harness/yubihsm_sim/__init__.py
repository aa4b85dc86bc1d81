"""YubiHSM2 simulator: a sans-IO device core (``device``) behind a yubihsm-connector HTTP API (``server``).

Run it with ``pykms-yubihsm-sim --port 12345 --state hsm.json`` and point ``adapter = { type = "http",
addr = "tcp://127.0.0.1:12345" }`` (or yubihsm-shell, or python-yubihsm) at it to rehearse ``pykms yubihsm
setup`` and key management without hardware. The factory state has authentication key 1 with password
"password", as a new device.
"""
