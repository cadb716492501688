"""The alarm mesh: SWIM membership, incidents and the agent that runs them."""

# The distribution's version; setup.cfg reads it from here. Kept as a constant
# rather than looked up with importlib.metadata, which costs the agent about
# 0.8 MiB of memory to import.
__version__ = "0.1.0"
