"""Hook specifications: how plugins add proposers and verifiers to specplug.

A plugin is a module (or object) with functions marked ``@hookimpl``. Third-party packages expose it
through the ``specplug`` entry-point group; the built-ins in ``specplug.plugins.DEFAULT_PLUGINS`` are
registered through exactly the same hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from specplug.registry import Registrar

hookspec = pluggy.HookspecMarker("specplug")
hookimpl = pluggy.HookimplMarker("specplug")


@hookspec
def register_proposers(register: "Registrar") -> None:
    """Register draft proposers.

    Call ``register.proposer(name, factory)`` once per proposer. ``factory(context, **options)`` must
    return an object implementing ``specplug.Proposer``; ``context`` is a ``ProposerContext`` and
    ``options`` are the keys under ``proposer:`` in the config (other than ``name``). The factory's
    keyword-only parameters (declared after ``*``) are the options it accepts: unknown keys are
    rejected before it is called.

    Returns nothing; the registrar records what was registered and which plugin registered it.
    """


@hookspec
def register_verifiers(register: "Registrar") -> None:
    """Register verifiers (the acceptance rule applied to the target's logits).

    Call ``register.verifier(name, factory)``; ``factory(**options)`` must return an object
    implementing ``specplug.Verifier``.

    Returns nothing; the registrar records what was registered and which plugin registered it.
    """
