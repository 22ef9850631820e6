"""CLI subcommands, one module each. A module defines ``register(subparsers)``; :mod:`..cli` finds
every module here, so adding a command touches no shared file."""
