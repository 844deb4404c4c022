"""The version of ben (recorded in reports, checkpoints and ``ben --version``)."""

__version__ = "0.2.0"
