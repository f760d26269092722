#!/usr/bin/env bash
# Exact commands that produced the committed cxr128 weights: two CDDB bridges at 128 px,
# fine-tuned from the cxr64 bridges of the same SPEC on the cxr-open TRAIN split only (1,275
# images, area-downsized to 128 px; the manifest's val rows are never read), read in place from
# $CXR (default /work/shared/data/cxr-open).
#
# Budget (2026-12-08, no GPU lent to this task): the two ran in parallel, one per core of the
# 2-core Intel Xeon, 1 torch thread, nice 19. For the first 20 minutes they ran beside the test
# suite and got almost nothing; after that each ran at 0.33 steps/s (batch 16, 128 px). Each was
# stopped at its step-1200 checkpoint and finished by rerunning the same command with
# --steps 1200 (resume restores the model, EMA, optimiser and RNG states exactly), which is what
# festa_training.json records. Train into a scratch folder, then copy the bridge here.
set -euo pipefail
W=client/restoration/weights/cxr128
CXR=${CXR:-/work/shared/data/cxr-open}
bridge() {  # name spec
  nice -n 19 python -m festa.client.restoration.cli train-bridge --degradation "$2" \
    --data "$CXR" --size 128 --out $W/bridges/$1 \
    --init-from client/restoration/weights/cxr64/bridges/$1 --steps 1200 --batch 16 --lr 2e-4 \
    --seed 0 --preset small --threads 1
  rm -f $W/bridges/$1/checkpoint.pt
}
bridge lowdose "noise:poisson:dose=200,read=0.01"
bridge gaussblur2 "blur:gauss:sigma=2+noise:gauss:sigma=0.01"
