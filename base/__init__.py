"""The layer below both stages: user errors, atomic files, devices, the code version.

``features`` (stage 1) and ``probe`` (stage 2) both build on it; it imports
nothing of theirs, so the imports run one way: ``cli`` → ``probe`` →
``features`` → ``base``.
"""

__version__ = "0.1.0"
