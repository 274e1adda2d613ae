#!/usr/bin/env bash
# Smoke run of the diffusion stack on one GPU, in stages (each within a 10-minute call on an H100 when compiled):
#   bash tools/diffusion_smoke.sh base       # train the PixArt base on the synthetic pairs (configs/diffusion/)
#   bash tools/diffusion_smoke.sh control    # train RelaCtrl on the frozen base; its validation prints
#                                            # control_f1 (controlled) next to base_control_f1 (base alone)
#   bash tools/diffusion_smoke.sh eval       # tools/test.py on both checkpoints (same metrics), drawings in
#                                            # WORK/shown_base (generated | real) and WORK/shown_relactrl
#                                            # (control | base alone | controlled | real)
#   bash tools/diffusion_smoke.sh relevance  # ControlNet Relevance Score ranking of the 11 control blocks
#   bash tools/diffusion_smoke.sh lamamba    # train LaMamba-Diff-tiny, then draw its samples in WORK/shown_lamamba
#   bash tools/diffusion_smoke.sh all
# WORK (default work_dirs) holds the runs; SMOKE_OPTIONS adds --cfg-options to every stage (a tiny CPU check:
# SMOKE_OPTIONS="train_cfg.max_iters=6 ..." as in the report); TRAIN_FLAGS adds flags to tools/train.py (e.g. --amp);
# PYTHON names the interpreter (default: python). On a GPU: TRAIN_FLAGS=--amp and
# TRAIN_OPTIONS="model.compile_denoiser=True" (training only; the eager PixArt step is host-bound: 0.09 s at batch 128
# on an H100, docs/benchmarks/relactrl_h100_s10.md).
set -euo pipefail
STAGE=${1:-all}
WORK=${WORK:-work_dirs}
BASE_CFG=configs/diffusion/pixart_tiny_synthetic_pairs.py
CTRL_CFG=configs/diffusion/relactrl_pixart_tiny_synthetic_pairs.py
PYTHON=${PYTHON:-python}
read -r -a OPTIONS <<< "${SMOKE_OPTIONS:-}"
read -r -a FLAGS <<< "${TRAIN_FLAGS:-}"
read -r -a TRAIN_ONLY <<< "${TRAIN_OPTIONS:-}"
CTRL_OPTIONS=(model.denoiser.base_checkpoint="$WORK/base" "${OPTIONS[@]}")
LAMAMBA_CFG=configs/diffusion/lamamba_diff_tiny_synthetic_pairs.py

last_checkpoint() {
  if [[ ! -f "$1/last_checkpoint" ]]; then echo "no checkpoint in $1: run the earlier stage first" >&2; exit 1; fi
  local name
  name=$(<"$1/last_checkpoint")
  # the record names a checkpoint inside the work dir relative to it (so a moved work dir stays right)
  if [[ $name != /* && $name != *://* ]]; then name="$1/$name"; fi
  echo "$name"
}

if [[ $STAGE == base || $STAGE == all ]]; then
  BASE_OPTIONS=("${OPTIONS[@]}" "${TRAIN_ONLY[@]}")
  "$PYTHON" tools/train.py "$BASE_CFG" --work-dir "$WORK/base" "${FLAGS[@]}" \
    ${BASE_OPTIONS[@]:+--cfg-options "${BASE_OPTIONS[@]}"}
fi
if [[ $STAGE == control || $STAGE == all ]]; then
  "$PYTHON" tools/train.py "$CTRL_CFG" --work-dir "$WORK/relactrl" "${FLAGS[@]}" \
    --cfg-options "${CTRL_OPTIONS[@]}" "${TRAIN_ONLY[@]}"
fi
if [[ $STAGE == eval || $STAGE == all ]]; then
  "$PYTHON" tools/test.py "$BASE_CFG" "$(last_checkpoint "$WORK/base")" --work-dir "$WORK/base_test" \
    --show-dir "$WORK/shown_base" ${OPTIONS[@]:+--cfg-options "${OPTIONS[@]}"}
  "$PYTHON" tools/test.py "$CTRL_CFG" "$(last_checkpoint "$WORK/relactrl")" --work-dir "$WORK/relactrl_test" \
    --show-dir "$WORK/shown_relactrl" --cfg-options "${CTRL_OPTIONS[@]}"
fi
if [[ $STAGE == relevance || $STAGE == all ]]; then
  "$PYTHON" tools/relevance_score.py "$CTRL_CFG" "$(last_checkpoint "$WORK/relactrl")" --num-samples 128 \
    --out "$WORK/relevance.json" --cfg-options "${CTRL_OPTIONS[@]}"
fi
if [[ $STAGE == lamamba || $STAGE == all ]]; then
  "$PYTHON" tools/train.py "$LAMAMBA_CFG" --work-dir "$WORK/lamamba" "${FLAGS[@]}" \
    ${OPTIONS[@]:+--cfg-options "${OPTIONS[@]}"}
  "$PYTHON" tools/test.py "$LAMAMBA_CFG" "$(last_checkpoint "$WORK/lamamba")" --work-dir "$WORK/lamamba_test" \
    --show-dir "$WORK/shown_lamamba" ${OPTIONS[@]:+--cfg-options "${OPTIONS[@]}"}
fi
