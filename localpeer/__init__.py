"""localpeer: turn a local chat model into a dignified peer, and measure it.

Run `localpeer --help` for the commands.
"""

__version__ = "0.1.0"
