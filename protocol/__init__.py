"""The on-disk contract of orchestrate: task files, their states, and every transition.

This package starts no processes and never talks to git, so any script can use it
to submit or inspect work.
"""
