#!/usr/bin/env bash
# Exact commands that produced the committed phantom64 weights (CPU, 1 torch thread).
set -euo pipefail
W=client/restoration/weights/phantom64
python -m festa.client.restoration.cli train-prior --data phantoms --size 64 --out $W/prior \
  --steps 500 --batch 16 --lr 1e-3 --seed 0 --preset small --threads 1
python -m festa.client.restoration.cli train-kernel-prior --out $W/kernel_prior --size 16 \
  --steps 1000 --batch 32 --lr 1e-3 --seed 0 --threads 1
python -m festa.client.restoration.cli train-bridge --degradation "noise:poisson:dose=200,read=0.01" \
  --data phantoms --size 64 --out $W/bridges/lowdose --init-from $W/prior \
  --steps 250 --batch 16 --lr 5e-4 --seed 0 --preset small --threads 1
python -m festa.client.restoration.cli train-bridge --degradation "blur:gauss:sigma=2+noise:gauss:sigma=0.01" \
  --data phantoms --size 64 --out $W/bridges/gaussblur2 --init-from $W/prior \
  --steps 250 --batch 16 --lr 5e-4 --seed 0 --preset small --threads 1
# One-step GCTM models distilled from the bridges above (client/restoration/gctm.py); train each
# in one go (the EMA target network is not checkpointed, so a resumed run differs slightly).
python -m festa.client.restoration.cli train-gctm --bridge $W/bridges/lowdose \
  --out $W/gctm/lowdose --data phantoms --steps 80 --batch 8 --lr 2e-4 --seed 0 --threads 1
# gaussblur2: 0 steps (no CPU left on the shared machine): the GCTM UNet as initialised from the
# bridge, i.e. exactly the bridge's one-step estimate x0_hat(x1, 1), not yet distilled.
python -m festa.client.restoration.cli train-gctm --bridge $W/bridges/gaussblur2 \
  --out $W/gctm/gaussblur2 --data phantoms --steps 0 --batch 8 --lr 2e-4 --seed 0 --threads 1
# A harsher low-dose scanner (a quarter of the photons), for bench_restore_training --scanners lowdose50
# (issue 14 item 6), and its GCTM. On one core of the 2-core Intel Xeon machine: bridge under 3 min,
# GCTM about 2 min.
python -m festa.client.restoration.cli train-bridge --degradation "noise:poisson:dose=50,read=0.01" \
  --data phantoms --size 64 --out $W/bridges/lowdose50 --init-from $W/prior \
  --steps 250 --batch 16 --lr 5e-4 --seed 0 --preset small --threads 1
python -m festa.client.restoration.cli train-gctm --bridge $W/bridges/lowdose50 \
  --out $W/gctm/lowdose50 --data phantoms --steps 80 --batch 8 --lr 2e-4 --seed 0 --threads 1
# Gaussian blur sigma 3 + noise, for bench_restore_training --scanners blur3, and its GCTM.
python -m festa.client.restoration.cli train-bridge --degradation "blur:gauss:sigma=3+noise:gauss:sigma=0.01" \
  --data phantoms --size 64 --out $W/bridges/gaussblur3 --init-from $W/prior \
  --steps 250 --batch 16 --lr 5e-4 --seed 0 --preset small --threads 1
python -m festa.client.restoration.cli train-gctm --bridge $W/bridges/gaussblur3 \
  --out $W/gctm/gaussblur3 --data phantoms --steps 80 --batch 8 --lr 2e-4 --seed 0 --threads 1
