"""Sans-IO protocol core: wire formats, the crypto suite and state machines.

Nothing here opens a socket, touches a disk, reads the clock or draws randomness: time and
random bytes are passed in by the caller (see ``RandomSource`` in :mod:`.suite`).
"""
