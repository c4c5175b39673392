"""The options menu of the home page: the operator's prebuilt environments and sizes.

A visitor sees (:meth:`OptionsMenu.offered`):

* logged in: every prebuilt environment (``c.Prebuilt.environments``) with how its
  build went (waiting, building, ready, failed), and a size select listing the sizes
  their groups allow (``c.SessionSizes``), the default preselected;
* anonymous, on a service without logins (``Logins.mode = 'none'``): the prebuilt
  environments, at the default size (no choice: anonymous visitors get the default);
* anonymous where one can log in: no menu, a line asking to log in for it.

A launch from the menu is an ordinary launch link, ``v2/<spec>?size=<name>``: the
launch page passes ``size`` on to ``/build``, and the pipeline (then the spawner)
refuses a size the visitor may not pick in plain words.  Nothing the form sends is
trusted: the menu only decides what is *shown*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..prebuilt import Entry
from ..sessions.identity import Visitor
from ..sessions.sizes import SessionSizes, Size


@dataclass(frozen=True)
class MenuView:
    """What one visitor's menu shows (``sizes`` empty: no size select)."""

    environments: Sequence[Entry] = ()
    sizes: Sequence[Size] = ()
    default_size: str = ""

    @property
    def empty(self) -> bool:
        """Nothing to choose: no environment and at most one size."""
        return not self.environments and len(self.sizes) <= 1


@dataclass
class OptionsMenu:
    """The operator's choices and the login mode.  ``environments``: the live entries of
    :class:`~binderbox.prebuilt.Prebuilt` (their state changes as they build)."""

    environments: Sequence[Entry] = ()
    sizes: SessionSizes = field(default_factory=SessionSizes)
    login_mode: str = "none"

    def offered(self, visitor: Visitor) -> MenuView | None:
        """The menu ``visitor`` sees; None: no menu (see the module docstring)."""
        if not visitor.logged_in and self.login_mode != "none":
            return None
        sizes = self.sizes.offered(visitor.logged_in, visitor.groups)
        default = self.sizes.default or (sizes[0].name if sizes else "")
        view = MenuView(tuple(self.environments), tuple(sizes), default)
        return None if view.empty else view

    @property
    def has_choices(self) -> bool:
        """Whether a logged-in visitor could see a menu here (for the log-in hint)."""
        return bool(self.environments) or len(self.sizes.parsed()) > 1
