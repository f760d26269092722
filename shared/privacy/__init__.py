"""What an honest-but-curious server can learn from what a site sends: the attacks festa is
measured against (`simulations/bench_privacy.py`), one concept per module.

- `observer`: the body as a curious operator runs it, recording tokens and gradients.
- `inversion`: a decoder that rebuilds images from intercepted tokens (feature inversion).
- `positions`: a position classifier + Hungarian assignment that undoes token shuffling.
- `gradient_labels`: training labels from the gradients a client returns.
- `label_mix`: a site's label proportions from its tail-bias update.
- `baselines`: what an attacker gets without the leak (chance, majority class, uniform mix).

Defences: `label_protection` (returned gradients), `update_dp` (DP of head/tail updates).
"""

from festa.shared.privacy.baselines import majority_rate, mean_image_scores, uniform_mix_error
from festa.shared.privacy.gradient_labels import (
    cluster_gradients,
    gradient_norm_attack,
    infer_labels_from_gradients,
    matched_accuracy,
)
from festa.shared.privacy.inversion import TokenDecoder, image_scores, reconstruct, train_decoder
from festa.shared.privacy.label_mix import label_mix_attack
from festa.shared.privacy.observer import CuriousBodyLink, tokens_as_sent
from festa.shared.privacy.positions import (
    PositionClassifier,
    placement_accuracy,
    train_position_classifier,
    unshuffle_by_position,
)

__all__ = [
    "CuriousBodyLink",
    "PositionClassifier",
    "TokenDecoder",
    "cluster_gradients",
    "gradient_norm_attack",
    "image_scores",
    "infer_labels_from_gradients",
    "label_mix_attack",
    "majority_rate",
    "matched_accuracy",
    "mean_image_scores",
    "placement_accuracy",
    "reconstruct",
    "tokens_as_sent",
    "train_decoder",
    "train_position_classifier",
    "uniform_mix_error",
    "unshuffle_by_position",
]
