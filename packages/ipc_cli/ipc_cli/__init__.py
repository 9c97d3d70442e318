"""AegisIPC operators' command line, ``ipc``."""

__version__ = "0.1.0"
