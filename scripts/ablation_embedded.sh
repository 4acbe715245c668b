#!/usr/bin/env bash
# The ablation on the embedded default (synthetic CXR-LT, CPU): the 7 Table 2 rows, the Table 1 pair
# (sampler_random, sampler_cycle: the 2-expert model) and the attention comparison (ablation_4experts_cycle with
# model/attention=mha, the paper's form, and =joint), 3 seeds each, then the report table.
#   IMAGE_SIZE (default 64), EPOCHS (default 3), SEEDS (default 1,2,3), PYTHON (default python),
#   EXTRA (further overrides for every run), CHECK=1 (compose every run with --cfg job, train nothing).
# The table: python -m mlgcn_lt.report "outputs/ablation/multiruns/*" --out outputs/ablation/report
# (with MLGCN_LOG_DIR set, outputs/ is that directory).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
IMAGE_SIZE=${IMAGE_SIZE:-64}
EPOCHS=${EPOCHS:-3}
SEEDS=${SEEDS:-1,2,3}
LOG_DIR=${MLGCN_LOG_DIR:-outputs}
ROWS=ablation_mlgcn,ablation_2experts,ablation_4experts_cycle,ablation_ride,ablation_lse,ablation_mha,ablation_lse_mha
ROWS=$ROWS,sampler_random,sampler_cycle
common=(trainer=cpu "data.image_size=$IMAGE_SIZE" "trainer.max_epochs=$EPOCHS" task_name=ablation)
# shellcheck disable=SC2206  # EXTRA is a list of overrides
extra=(${EXTRA:-})
# The attention comparison: ablation_4experts_cycle with each attention form, named apart in the report
# (ablation_4experts_cycle_mha, ablation_4experts_cycle_joint; the row itself has none).
attention() { echo +experiment=ablation_4experts_cycle "model/attention=$1" "experiment_name=ablation_4experts_cycle_$1"; }

if [[ ${CHECK:-0} == 1 ]]; then
    for row in ${ROWS//,/ }; do
        "$PYTHON" train.py "${common[@]}" "+experiment=$row" "${extra[@]}" --cfg job >/dev/null
        echo "ok  $row"
    done
    for form in mha joint; do
        # shellcheck disable=SC2046
        "$PYTHON" train.py "${common[@]}" $(attention "$form") "${extra[@]}" --cfg job \
            | grep -q "^experiment_name: ablation_4experts_cycle_$form$"
        echo "ok  ablation_4experts_cycle_$form"
    done
    exit 0
fi

"$PYTHON" train.py -m "${common[@]}" "+experiment=$ROWS" "seed=$SEEDS" "${extra[@]}"
for form in mha joint; do
    # shellcheck disable=SC2046
    "$PYTHON" train.py -m "${common[@]}" $(attention "$form") "seed=$SEEDS" "${extra[@]}"
done
"$PYTHON" -m mlgcn_lt.report "$LOG_DIR/ablation/multiruns/*" --out "$LOG_DIR/ablation/report"
