"""mlgcn-lt: ML-GCN with experts for multi-label, long-tailed chest X-ray classification."""

import warnings

# Lightning 2.6 calls a torch pytree helper that torch 2.14 deprecates, once per loop: the same line at every
# epoch hides the console's progress. Nothing here can act on it, so it is silenced (and only it).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).* is deprecated")
