#!/usr/bin/env bash
# Smoke run of the diffusion stack on one GPU. The base alone took 0.28-0.36 s an iteration at batch 128 on an H200
# shared with a detection training (2026-12-04), so base + control take well over 10 minutes there: run the stages
# separately (or in the background) to stay within per-command limits:
#   bash tools/diffusion_smoke.sh base       # train the PixArt base on the synthetic pairs (configs/diffusion/)
#   bash tools/diffusion_smoke.sh control    # train RelaCtrl on the frozen base; its validation prints
#                                            # control_f1 (controlled) next to base_control_f1 (base alone)
#   bash tools/diffusion_smoke.sh eval       # tools/test.py on the RelaCtrl checkpoint (same metrics)
#   bash tools/diffusion_smoke.sh relevance  # ControlNet Relevance Score ranking of the 11 control blocks
#   bash tools/diffusion_smoke.sh all
# WORK (default work_dirs) holds the runs; SMOKE_OPTIONS adds --cfg-options to every stage (a tiny CPU check:
# SMOKE_OPTIONS="train_cfg.max_iters=6 ..." as in the report); TRAIN_FLAGS adds flags to tools/train.py (e.g. --amp);
# PYTHON names the interpreter (default: python).
set -euo pipefail
STAGE=${1:-all}
WORK=${WORK:-work_dirs}
BASE_CFG=configs/diffusion/pixart_tiny_synthetic_pairs.py
CTRL_CFG=configs/diffusion/relactrl_pixart_tiny_synthetic_pairs.py
PYTHON=${PYTHON:-python}
read -r -a OPTIONS <<< "${SMOKE_OPTIONS:-}"
read -r -a FLAGS <<< "${TRAIN_FLAGS:-}"
CTRL_OPTIONS=(model.denoiser.base_checkpoint="$WORK/base" "${OPTIONS[@]}")

last_checkpoint() {
  if [[ ! -f "$1/last_checkpoint" ]]; then echo "no checkpoint in $1: run the earlier stage first" >&2; exit 1; fi
  cat "$1/last_checkpoint"
}

if [[ $STAGE == base || $STAGE == all ]]; then
  "$PYTHON" tools/train.py "$BASE_CFG" --work-dir "$WORK/base" "${FLAGS[@]}" ${OPTIONS[@]:+--cfg-options "${OPTIONS[@]}"}
fi
if [[ $STAGE == control || $STAGE == all ]]; then
  "$PYTHON" tools/train.py "$CTRL_CFG" --work-dir "$WORK/relactrl" "${FLAGS[@]}" --cfg-options "${CTRL_OPTIONS[@]}"
fi
if [[ $STAGE == eval || $STAGE == all ]]; then
  "$PYTHON" tools/test.py "$CTRL_CFG" "$(last_checkpoint "$WORK/relactrl")" --work-dir "$WORK/relactrl_test" \
    --cfg-options "${CTRL_OPTIONS[@]}"
fi
if [[ $STAGE == relevance || $STAGE == all ]]; then
  "$PYTHON" tools/relevance_score.py "$CTRL_CFG" "$(last_checkpoint "$WORK/relactrl")" --num-samples 128 \
    --out "$WORK/relevance.json" --cfg-options "${CTRL_OPTIONS[@]}"
fi
