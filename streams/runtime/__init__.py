"""The runtime: every contact with Faust, aiokafka and the broker.

The pure model (``streams.events``, ``rules``, ``scoring``, ``batch``) knows
nothing of Kafka; this package runs it: the Faust app and its agents
(``app``, ``agents``, ``worker``), how fetched records reach them
(``dispatch``, ``intake``), which offsets are committed (``commits``), the
tables and their changelogs (``store``, ``recovery``, ``resend``), what
leaves (``output``), what is watched (``monitoring``, ``stall_watch``,
``metrics``, ``api``), topics and clients for the commands (``admin``,
``lookups``, ``producer``), and the fixes to the dependencies (``patches``,
``group_join``, ``embedded_broker``).

``install`` is called once by every process (the worker and each command)
before anything talks to Kafka.
"""

from __future__ import annotations

from topology.settings import Settings

_installed: dict[str, bool] = {}


def install(settings: Settings) -> None:
    """Check the pinned dependencies, then make every change Standing makes to them.

    Raises ``patches.IncompatibleDependency`` (naming each function and what
    to do) before changing anything when an installed faust-streaming,
    mode-streaming or aiokafka is not the version the patches were written for. The embedded
    broker's workarounds follow ``settings`` (``embedded_broker.workarounds_enabled``).
    """
    from streams.runtime import embedded_broker, patches

    every = patches.all_patches()
    patches.check(every)
    workarounds = embedded_broker.workarounds_enabled(settings)
    for patch in every:
        if patch.embedded_broker_only:
            continue
        patch.apply()
    embedded_broker.pace_empty_fetches(settings.empty_fetch_pause_ms if workarounds else 0)
    _installed["workarounds"] = workarounds
    if settings.schema_registry_url:
        from streams.runtime import schema_registry

        schema_registry.install_resolver(settings)  # lazily: no request until an unknown id is read
