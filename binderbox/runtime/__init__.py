"""What builds and sessions share to run untrusted code: sandboxes, their layout,
network, limits, host uids and the supervisor that keeps them (see each module)."""
