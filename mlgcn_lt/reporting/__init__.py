"""Reports beyond the ablation table: hyper-parameter searches (``search``) and the W&B dashboard (``dashboard``)."""
