"""jestkit: train image-text models with JEST joint example selection.

The pure-tensor heart of the method lives in :mod:`jestkit.losses`, :mod:`jestkit.scoring` and
:mod:`jestkit.selection`; they import nothing from the rest of the package, so a user's own
training loop can use them alone.
"""

__version__ = "0.1.0"
