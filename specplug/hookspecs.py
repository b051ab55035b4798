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
# The plugin API's version (``specplug.api``): a plugin may declare ``specplug_api_version = 3``; one built
# for a version this one does not contain is skipped with a warning. Raised whenever the surface of
# ``specplug.api`` changes; a change that only adds keeps the older versions in COMPATIBLE_API_VERSIONS.
API_VERSION = 4
# 2 adds to 1: Proposer.feature_layers and on_target_features, CompactLlama.forward_features (eagle3)
# 3 adds to 2: optional arguments CompactLlama.attention_mask(dtype=) and attention(rotations=)
# 4 adds option(hint=, secret=) and Config.section(); Config.trtllm became Config.sections["trtllm"] (the
#   section belongs to the TensorRT-LLM adapter, the only reader of it: no hook is handed a Config)
COMPATIBLE_API_VERSIONS = (1, 2, 3, 4)


@hookspec
def register_proposers(register: "Registrar") -> None:
    """Register draft proposers.

    Call ``register.proposer(name, factory, options=Schema, capabilities=...)`` once per proposer.
    ``factory(context, options)`` must return an object implementing ``specplug.Proposer``; ``context``
    is a ``ProposerContext`` and ``options`` an instance of ``Schema`` (a dataclass of
    ``specplug.options.option`` fields) built from the keys under ``proposer:`` in the config, checked
    and coerced before the factory is called. Without a schema, ``factory(context, **options)`` and its
    keyword-only parameters are the options.

    Returns nothing; the registrar records what was registered and which plugin registered it.
    """


@hookspec
def register_verifiers(register: "Registrar") -> None:
    """Register verifiers (the acceptance rule applied to the target's logits).

    Call ``register.verifier(name, factory)``; ``factory(**options)`` must return an object
    implementing ``specplug.Verifier``.

    Returns nothing; the registrar records what was registered and which plugin registered it.
    """


@hookspec
def register_commands(register: "Registrar") -> None:
    """Add commands to the ``specplug`` command line.

    Call ``register.command(name, help, configure, run)`` for ``specplug NAME`` and
    ``register.tuner(name, help, configure, run)`` for ``specplug tune NAME``: ``configure(parser)``
    adds the command's arguments to its argparse parser, ``run(args)`` does the work and returns the
    exit status. The functions are looked up when the command line is built; keep imports of heavy
    modules inside ``run``.
    """
