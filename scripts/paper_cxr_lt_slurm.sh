#!/usr/bin/env bash
# The paper's protocol on real CXR-LT on a SLURM GPU cluster: every Table 2 row, the Table 1 pair, the Table 4 row
# and release_faithful, 3 seeds each, one SLURM job (one GPU) per (row, seed), then the report table.
#
# Set before running (from the repository root, in the environment that has this project installed):
#   CXR_LT_ROOT   the MIMIC-CXR-JPG folder the CXR-LT CSVs' paths are relative to (required; the CSVs are looked up
#                 there or under CXR_LT_LABELS_DIR, see conf/data/cxr_lt.yaml)
#   PARTITION     your GPU partition (or put hydra.launcher.partition / account / qos / setup in the git-ignored
#                 conf/local/default.yaml, see README "Running on a cluster"); ACCOUNT, QOS likewise optional
#   SEEDS         default 1,2,3;  PYTHON  default python;  TASK  default paper_cxr_lt (outputs/<TASK>/multiruns/)
#   ImageNet ResNet-101 weights: in the torch hub cache of the compute nodes (model.backbone.pretrained=imagenet).
#   Decoding 1024-px JPEGs every epoch is slow: preprocess once (`python -m mlgcn_lt.data.preprocess data=cxr_lt
#   data.cache_dir=DIR`) and add `data.cache_dir=DIR` to EXTRA.
#   EXTRA         further overrides for every job, e.g. "data.cache_dir=/scratch/cache trainer.devices=1"
#   CHECK=1       compose every row with --cfg job (no submission) to check the configuration first.
#
# Rows: Table 2 (ablation_mlgcn, ablation_2experts, ablation_4experts_cycle, ablation_ride, ablation_lse,
# ablation_mha, ablation_lse_mha), Table 1 (sampler_random, sampler_cycle: the 2-expert model), Table 4
# (sampler_least_sampled), and release_faithful, which sets its own backbone and input handling (no backbone here).
# After the jobs finish:
#   python -m mlgcn_lt.report "outputs/$TASK/multiruns/*" --out "outputs/$TASK/report" --figures
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CXR_LT_ROOT:?set CXR_LT_ROOT to the MIMIC-CXR-JPG folder of CXR-LT}"
export CXR_LT_ROOT
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-1,2,3}
TASK=${TASK:-paper_cxr_lt}
ROWS=ablation_mlgcn,ablation_2experts,ablation_4experts_cycle,ablation_ride,ablation_lse,ablation_mha,ablation_lse_mha
ROWS=$ROWS,sampler_random,sampler_cycle,sampler_least_sampled

launcher=(hydra/launcher=slurm)
[[ -n ${PARTITION:-} ]] && launcher+=("hydra.launcher.partition=$PARTITION")
[[ -n ${ACCOUNT:-} ]] && launcher+=("hydra.launcher.account=$ACCOUNT")
[[ -n ${QOS:-} ]] && launcher+=("hydra.launcher.qos=$QOS")
common=(data=cxr_lt data.image_size=1024 trainer=gpu "task_name=$TASK")
# shellcheck disable=SC2206  # EXTRA is a list of overrides
extra=(${EXTRA:-})
paper=(model/backbone=resnet101 model.backbone.pretrained=imagenet)

if [[ ${CHECK:-0} == 1 ]]; then
    "$PYTHON" train.py "${launcher[@]}" "${common[@]}" "${paper[@]}" +experiment=ablation_mlgcn "${extra[@]}" \
        --cfg hydra >/dev/null
    echo "ok  hydra/launcher=slurm"
    for row in ${ROWS//,/ }; do
        "$PYTHON" train.py "${common[@]}" "${paper[@]}" "+experiment=$row" "${extra[@]}" --cfg job >/dev/null
        echo "ok  $row"
    done
    "$PYTHON" train.py "${common[@]}" +experiment=release_faithful "${extra[@]}" --cfg job >/dev/null
    echo "ok  release_faithful"
    exit 0
fi

"$PYTHON" train.py -m "${launcher[@]}" "${common[@]}" "${paper[@]}" "+experiment=$ROWS" "seed=$SEEDS" "${extra[@]}"
"$PYTHON" train.py -m "${launcher[@]}" "${common[@]}" +experiment=release_faithful "seed=$SEEDS" "${extra[@]}"
echo "submitted; when the jobs finish:"
echo "  $PYTHON -m mlgcn_lt.report \"outputs/$TASK/multiruns/*\" --out \"outputs/$TASK/report\" --figures"
