"""One module per ``fstore`` subcommand (thin adapters over the core)."""
