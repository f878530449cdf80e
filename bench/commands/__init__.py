"""CLI subcommands, one module each, listed in ``bench.cli.COMMANDS``; each defines ``add_arguments`` and ``run``."""
