#!/usr/bin/env bash
# Exact commands that produced the committed cxr64 weights: festa's 64-px restoration models
# trained on the cxr-open TRAIN split only (1,275 images; the manifest's val rows are never read),
# read in place from $CXR (default /work/shared/data/cxr-open). CPU, 1 torch thread, nice 19.
#
# Budget: on the shared 2-core machine (load 10-23 from ~5 engineers' jobs) one of these jobs
# got 8-25 % of a core: 0.15-0.25 training steps/s (batch 16), against 1.5 steps/s measured on
# the same machine at load 1.4. The step counts below are what fit in ~40 min of two such
# jobs; they are far too few for good diffusion models (see README.md and BENCHMARKS.md).
# The runs were stopped at a checkpoint and finished with `--steps` = that step (resume is
# exact: model, EMA, optimiser and RNG states), which is what these commands record.
#
# Stage 2 (2026-12-07, machine at 1-min load 1.5-5): the low-dose and Gaussian-blur bridges were
# trained on, each from its own stage-1 weights (the saved EMA UNet; fresh optimiser and EMA,
# seed 1 so the batches are new), one job at a time, 1 thread, nice 10: 1.46-1.48 steps/s
# measured. Stage 2 is what `continue_bridge` records; its `festa_training.json` replaces stage
# 1's (which had `--steps 120 --seed 0`, the `bridge` lines below).
#
# Order: prior and the low-dose bridge in parallel; the other bridges after the prior. The
# low-dose bridge starts from the phantom64 image prior (the cxr64 one was not trained yet
# when it started; same 64-px UNet preset), the others from the cxr64 prior; every bridge is
# trained on pairs made from cxr-open train images only. The kernel prior is not retrained.
set -euo pipefail
W=client/restoration/weights/cxr64
CXR=${CXR:-/work/shared/data/cxr-open}
RUN="nice -n 19 python -m festa.client.restoration.cli"
bridge() {  # name spec steps init
  $RUN train-bridge --degradation "$2" --data "$CXR" --size 64 --out $W/bridges/$1 \
    --init-from "$4" --steps "$3" --batch 16 --lr 5e-4 --seed 0 --preset small --threads 1
  rm -f $W/bridges/$1/checkpoint.pt  # stage 2 starts from the saved weights, not this checkpoint
}
continue_bridge() {  # name spec steps: stage 2, from the folder's own stage-1 weights
  nice -n 10 python -m festa.client.restoration.cli train-bridge --degradation "$2" --data "$CXR" \
    --size 64 --out $W/bridges/$1 --init-from $W/bridges/$1 --steps "$3" --batch 16 --lr 5e-4 \
    --seed 1 --preset small --threads 1
  rm -f $W/bridges/$1/checkpoint.pt
}
case "${1:-all}" in
  prior|all)
    $RUN train-prior --data "$CXR" --size 64 --out $W/prior \
      --steps 270 --batch 16 --lr 1e-3 --seed 0 --preset small --threads 1
    # The kernel prior is trained on synthetic Gaussian + motion kernels, not on images, so the
    # phantom64 one is the same model: copied rather than retrained.
    rm -rf $W/kernel_prior && cp -r client/restoration/weights/phantom64/kernel_prior $W/kernel_prior
    ;;&
  lowdose|all)
    bridge lowdose "noise:poisson:dose=200,read=0.01" 120 client/restoration/weights/phantom64/prior
    continue_bridge lowdose "noise:poisson:dose=200,read=0.01" 2900  # 33 min of one core
    # Stage 3 (2026-12-07 evening): 3,000 more steps at a lower lr from the stage-2 weights,
    # seed 2, nice 10 on one core (~48 min, shared for the first half); trained into a scratch
    # folder and copied here, which is what festa_training.json records. CDDB-deep@1 on 20 val
    # images: 32.50 -> 32.67 dB.
    nice -n 10 python -m festa.client.restoration.cli train-bridge \
      --degradation "noise:poisson:dose=200,read=0.01" --data "$CXR" --size 64 \
      --out $W/bridges/lowdose --init-from $W/bridges/lowdose --steps 3000 --batch 16 --lr 2e-4 \
      --seed 2 --preset small --threads 1
    rm -f $W/bridges/lowdose/checkpoint.pt
    ;;&
  bridges|all)
    bridge gaussblur2 "blur:gauss:sigma=2+noise:gauss:sigma=0.01" 120 $W/prior
    continue_bridge gaussblur2 "blur:gauss:sigma=2+noise:gauss:sigma=0.01" 1700  # ~20 min
    # sr2 (2026-12-07 evening, one stage from the prior; nice 5-10 on one core, ~25 min, partly
    # shared), trained into a scratch folder and copied here, which festa_training.json records:
    nice -n 5 python -m festa.client.restoration.cli train-bridge \
      --degradation "sr:2+noise:gauss:sigma=0.01" --data "$CXR" --size 64 --out $W/bridges/sr2 \
      --init-from $W/prior --steps 1800 --batch 16 --lr 5e-4 --seed 0 --preset small --threads 1
    rm -f $W/bridges/sr2/checkpoint.pt
    # inpaintbox, the same way (nice 5, ~25 min of one core, partly shared):
    nice -n 5 python -m festa.client.restoration.cli train-bridge --degradation "inpaint:box" \
      --data "$CXR" --size 64 --out $W/bridges/inpaintbox --init-from $W/prior --steps 1800 \
      --batch 16 --lr 5e-4 --seed 0 --preset small --threads 1
    rm -f $W/bridges/inpaintbox/checkpoint.pt
    # blindblur (2026-12-08): a bridge for `blur:unknown`, trained on pairs each blurred by its
    # own random kernel (the kernel prior's Gaussian + motion distribution), started from the
    # Gaussian-blur bridge (it already deblurs); nice 5 on one idle core, 30 min (1.67 steps/s):
    nice -n 5 python -m festa.client.restoration.cli train-bridge \
      --degradation "blur:unknown+noise:gauss:sigma=0.01" --data "$CXR" --size 64 \
      --out $W/bridges/blindblur --init-from $W/bridges/gaussblur2 --steps 3000 --batch 16 \
      --lr 5e-4 --seed 0 --preset small --threads 1
    rm -f $W/bridges/blindblur/checkpoint.pt
    ;;&
  gctm|all)
    # One-step GCTM models distilled from the stage-2 bridges (client/restoration/gctm.py), on
    # cxr-open train images; the two ran in parallel, one core each (~5 min). Train each in one
    # go: the EMA target network is not checkpointed, so a resumed run differs slightly.
    for name in lowdose gaussblur2; do
      nice -n 5 python -m festa.client.restoration.cli train-gctm --bridge $W/bridges/$name \
        --out $W/gctm/$name --data "$CXR" --steps 300 --batch 8 --lr 2e-4 --seed 0 --threads 1
      rm -f $W/gctm/$name/checkpoint.pt
    done
    ;;
esac
