"""CLI subcommands, one module each; bench.cli discovers them, so adding one needs no edit elsewhere."""
