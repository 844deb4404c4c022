"""The ``ben`` command line (typer). Commands are thin; torch is imported lazily."""
