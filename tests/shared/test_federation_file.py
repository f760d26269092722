"""Federation files: what each site declares, checked against the data it really holds."""

from __future__ import annotations

import pytest

from festa.shared.config import ConfigError, ModelConfig
from festa.shared.data.site_datasets import resolve_federation
from festa.shared.federation_file import FederationFileError, load_federation_file

THREE = ("normal", "pneumonia-bacterial", "pneumonia-viral")


def rows(site, findings, split_val=2, mask=True, patients=None):
    """Two train rows per finding and `split_val` val rows of the first findings."""
    out = []
    for f in findings * 2:
        out.append({"site": site, "finding": f, "split": "train", "mask": mask})
    for f in (findings * split_val)[:split_val]:
        out.append({"site": site, "finding": f, "split": "val", "mask": mask})
    if patients:
        for i, r in enumerate(out):
            r["patient_id"] = f"p{i % patients}"
    return out


def write(tmp_path, body: str):
    path = tmp_path / "fed.toml"
    path.write_text(body)
    return path


def site(id, task, data, extra=""):
    return f'[[site]]\nid = "{id}"\ntask = "{task}"\ndata = "{data}"\n{extra}\n'


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, site("a", "segmentation", "phantoms", 'colour = "red"'))
    with pytest.raises(FederationFileError, match="colour"):
        load_federation_file(path)


def test_a_federation_file_error_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_federation_file(tmp_path / "missing.toml")


def test_unknown_task_duplicate_ids_and_bad_shard_are_refused(tmp_path):
    with pytest.raises(FederationFileError, match="task"):
        load_federation_file(write(tmp_path, site("a", "ocr", "phantoms")))
    twice = site("a", "segmentation", "phantoms") + site("a", "detection", "phantoms")
    with pytest.raises(FederationFileError, match="'a' appears twice"):
        load_federation_file(write(tmp_path, twice))
    with pytest.raises(FederationFileError, match="patient-shard"):
        load_federation_file(
            write(tmp_path, site("a", "detection", "phantoms", 'patient-shard = "3/2"'))
        )


def test_a_data_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FederationFileError, match="site a: data: no manifest.csv"):
        load_federation_file(write(tmp_path, site("a", "classification", "empty")))


def test_segmentation_needs_a_site_with_masks(tmp_path, cxr_folder):
    data = cxr_folder(rows("x", list(THREE), mask=False))
    fed = load_federation_file(write(tmp_path, site("x", "segmentation", str(data))))
    with pytest.raises(FederationFileError, match="site x: task segmentation needs lung masks"):
        resolve_federation(fed, image_size=32)
    fed = load_federation_file(write(tmp_path, site("x", "detection", str(data))))
    with pytest.raises(FederationFileError, match="site x: task detection needs boxes"):
        resolve_federation(fed, image_size=32)


def test_class_names_come_from_the_data_and_agree_across_a_task(tmp_path, cxr_folder):
    data = cxr_folder(
        rows("k", list(THREE)) + rows("h", ["covid-19"]) + rows("n", ["normal", "other"])
    )
    body = (
        site("k1", "classification", str(data), 'sites = ["k"]')
        + site("k2", "classification", str(data), 'sites = ["k"]')
        + site("h", "segmentation", str(data), 'sites = ["h"]')
    )
    resolved = resolve_federation(load_federation_file(write(tmp_path, body)), image_size=32)
    assert resolved.class_names == THREE  # not the folder's 5 findings, not the default 3
    model = resolved.model_config(ModelConfig(image_size=32))
    assert model.num_classes == 3 and model.class_names == THREE
    k1 = resolved.sites[0]
    assert {k1.train.class_names[label] for label in k1.train.labels} == set(THREE)
    # hannover's COVID-19 is no class of this model: its rows carry no classification label
    assert set(resolved.sites[2].train.labels) == {-1}


def test_sites_of_a_task_that_disagree_on_classes_are_refused(tmp_path, cxr_folder):
    data = cxr_folder(rows("k", list(THREE)) + rows("n", ["normal", "other"]))
    body = site("k", "classification", str(data), 'sites = ["k"]') + site(
        "n", "classification", str(data), 'sites = ["n"]'
    )
    fed = load_federation_file(write(tmp_path, body))
    with pytest.raises(FederationFileError, match="disagree on their classes") as err:
        resolve_federation(fed, image_size=32)
    assert "k: ['normal', 'pneumonia-bacterial', 'pneumonia-viral']" in str(err.value)
    assert "n: ['normal', 'other']" in str(err.value)
    # Declaring the shared classes makes them agree: rows of other findings lose their label.
    both = 'classes = ["normal", "pneumonia-bacterial"]'
    body = site("k", "classification", str(data), f'sites = ["k"]\n{both}') + site(
        "n", "classification", str(data), 'sites = ["n"]\nclasses = ["normal", "other"]'
    )
    with pytest.raises(FederationFileError, match="disagree"):
        resolve_federation(load_federation_file(write(tmp_path, body)), image_size=32)


def test_a_single_class_classification_site_is_refused(tmp_path, cxr_folder):
    data = cxr_folder(rows("h", ["covid-19"]))
    fed = load_federation_file(write(tmp_path, site("h", "classification", str(data))))
    with pytest.raises(FederationFileError, match="site h: classification needs at least 2"):
        resolve_federation(fed, image_size=32)


def test_a_site_filter_that_matches_nothing_is_refused(tmp_path, cxr_folder):
    data = cxr_folder(rows("k", list(THREE)))
    fed = load_federation_file(
        write(tmp_path, site("z", "segmentation", str(data), 'sites = ["zz"]'))
    )
    with pytest.raises(FederationFileError, match="site z: no train images"):
        resolve_federation(fed, image_size=32)


def test_patient_shards_split_a_source_by_patient(tmp_path, cxr_folder):
    data = cxr_folder(rows("k", list(THREE) * 4, patients=9))
    body = "".join(
        site(f"k{k}", "segmentation", str(data), f'patient-shard = "{k}/3"') for k in (1, 2, 3)
    )
    resolved = resolve_federation(load_federation_file(write(tmp_path, body)), image_size=32)
    patients = [{s["patient"] for s in r.train.samples} for r in resolved.sites]
    assert sum(len(r.train) for r in resolved.sites) == 24  # every train row, once
    assert all(a.isdisjoint(b) for i, a in enumerate(patients) for b in patients[i + 1 :])


def test_the_shipped_cxr_open_federation_gives_every_task_two_labelled_sites(cxr_open_dir):
    from pathlib import Path

    from festa.shared.data.site_datasets import site_indices

    path = Path(__file__).resolve().parents[2] / "simulations" / "federations" / "cxr-open.toml"
    resolved = resolve_federation(load_federation_file(path, data=str(cxr_open_dir)), image_size=16)
    assert resolved.class_names == THREE
    per_task: dict[str, int] = {}
    for s in resolved.sites:
        train_idx, _ = site_indices(s)
        assert len(train_idx) > 0
        per_task[s.declaration.task] = per_task.get(s.declaration.task, 0) + 1
    assert per_task == {"classification": 3, "segmentation": 2, "detection": 2}
