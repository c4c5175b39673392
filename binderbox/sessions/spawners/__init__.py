"""Spawners the hub loads: :class:`~.mixin.BinderSpawnerMixin` (what every binder
session needs, whatever runs it) over one class per backend: :mod:`.local`
(bubblewrap sandboxes on this machine)."""
