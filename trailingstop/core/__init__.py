"""The fenced core: what a TrailingStop is and how it decides, with no I/O at all.

``contracts`` (the resource and every bus message), ``engine`` (the trailing-stop arithmetic),
``stopbook`` (one symbol's stops: commands and trades in, events and orders out), ``lifecycle``
(phases, their moves, the status reducer), ``trade``, ``filters`` and ``decimals``. Nothing here
imports the bus, the exchange, the operator, the workers or any file reader: the import-linter
contracts in pyproject.toml check it (``make lint``).
"""
