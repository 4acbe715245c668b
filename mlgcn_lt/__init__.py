"""mlgcn-lt: ML-GCN with experts for multi-label, long-tailed chest X-ray classification."""

import os
import warnings

# libgomp's OpenMP threads spin while they wait (OMP_WAIT_POLICY=ACTIVE by default). On a machine with few cores
# the spinning starves the DataLoader workers and any other process: a ResNet-18 step (128 px, batch 32, 2 cores)
# took 3.1 s instead of 1.2 s beside one other busy process. Passive waiting unless the user chose otherwise; it
# must be set before torch loads OpenMP, which is why it sits here, before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Lightning 2.6 calls a torch pytree helper that torch 2.14 deprecates, once per loop: the same line at every
# epoch hides the console's progress. Nothing here can act on it, so it is silenced (and only it).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).* is deprecated")
