"""mvpseg's version, in a module of its own: the package metadata, checkpoints and ``--version`` read it here."""

__version__ = "0.1.0"
