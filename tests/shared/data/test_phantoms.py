import numpy as np

from festa.shared.data.phantoms import (
    BOX_CLASS_NAMES,
    CLASS_NAMES,
    LESION,
    make_phantom,
    phantom_images,
)


def test_same_index_and_seed_give_the_same_phantom():
    a, b = make_phantom(5, 64, seed=1), make_phantom(5, 64, seed=1)
    assert np.array_equal(a.image, b.image) and a.label == b.label
    assert not np.array_equal(a.image, make_phantom(5, 64, seed=2).image)
    # Phantom i does not depend on how many others are generated.
    assert np.array_equal(phantom_images(8, 64, seed=1)[5], a.image)


def test_phantoms_are_valid_images_with_consistent_labels():
    for i in range(60):
        p = make_phantom(i, 64, seed=0)
        assert p.image.dtype == np.float32 and p.image.shape == (64, 64)
        assert 0.0 <= p.image.min() and p.image.max() <= 1.0
        assert 0 <= p.label < len(CLASS_NAMES)
        assert p.mask.sum() > 0.1 * 64 * 64  # two visible lungs
        assert (p.box_labels == LESION).sum() == (
            1 if CLASS_NAMES[p.label] == "focal-opacity" else 0
        )
        assert set(p.box_labels.tolist()) <= set(range(len(BOX_CLASS_NAMES)))
        x0, y0, x1, y1 = p.boxes.T
        assert np.all(x1 > x0) and np.all(y1 > y0) and p.boxes.min() >= 0 and p.boxes.max() <= 64


def test_lungs_are_darker_than_the_mediastinum():
    p = make_phantom(0, 128, seed=0)
    lung = p.image[p.mask.astype(bool)].mean()
    centre = p.image[30:90, 60:68].mean()
    assert lung < centre - 0.1


def test_all_classes_occur():
    labels = [make_phantom(i, 32).label for i in range(90)]
    assert set(labels) == set(range(len(CLASS_NAMES)))


def test_a_lesion_share_sets_how_many_phantoms_carry_a_lesion():
    import pytest

    natural = phantom_images(60, size=32, seed=2)
    assert np.array_equal(natural, phantom_images(60, size=32, seed=2, lesion_share=None))
    rich = phantom_images(60, size=32, seed=2, lesion_share=0.75)
    assert rich.shape == (60, 32, 32)
    lesion_images = [
        make_phantom(i, 32, 2).image
        for i in range(400)
        if (make_phantom(i, 32, 2).box_labels == LESION).any()
    ]
    # The first 45 images are the first 45 phantoms with a lesion, in index order.
    assert all(np.array_equal(a, b) for a, b in zip(rich[:45], lesion_images[:45], strict=True))
    assert not any(np.array_equal(rich[45], b) for b in lesion_images[:60])
    assert np.array_equal(rich, phantom_images(60, size=32, seed=2, lesion_share=0.75))
    with pytest.raises(ValueError, match="lesion_share"):
        phantom_images(4, size=32, lesion_share=1.5)
