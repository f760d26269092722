"""The split ViT: a per-task head on the client, one shared body on the server, a per-task tail."""

from festa.shared.model.body import Body
from festa.shared.model.head import Head
from festa.shared.model.permutation import TokenPermutation
from festa.shared.model.split import BodyLink, LocalBodyLink, SplitStepResult, split_train_step

__all__ = [
    "Body",
    "BodyLink",
    "Head",
    "LocalBodyLink",
    "SplitStepResult",
    "TokenPermutation",
    "split_train_step",
]
