"""recone-lite: teach an LLM to think before it recommends (RecZero / RecOne, arXiv 2510.23077).

Importing this package is cheap: it imports no torch, touches no GPU, no network and no disk.
"""

__version__ = "0.1.0"
