"""Where the model looks: class activation maps per finding, overlays, and the pointing game against boxes.

``python -m mlgcn_lt.explain`` (:mod:`mlgcn_lt.explain.cli`); maps in :mod:`.cams`, boxes in :mod:`.boxes`,
the pointing game in :mod:`.pointing`, figures in :mod:`.overlay`.
"""
