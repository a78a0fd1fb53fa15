"""The linear probe job (jobs.train_probe) on tiny-model features of visually distinct generated classes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from featurekit import CLASSES, shared_output
from jobs.train_probe import main, split, train_probe
from pipeline.errors import ConfigError


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return shared_output(tmp_path_factory)


def test_probe_beats_chance_by_a_clear_margin(kit, capsys):
    assert main([kit.out, "--labels", kit.labels, "--epochs", "60", "--seed", "0", "--test-fraction", "0.34"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == sorted(CLASSES) and report["num_classes"] == 3
    assert report["chance"] == pytest.approx(1 / 3)
    assert report["num_train"] + report["num_test"] == len(kit.ids) and report["num_test"] == 6
    assert report["train_accuracy"] >= 0.9
    assert report["test_accuracy"] >= report["chance"] + 0.4
    assert report["test_accuracy"] > report["majority_baseline"] + 0.3


def test_probe_is_deterministic_and_sources_agree(kit):
    a = train_probe(kit.out, kit.labels, epochs=20, seed=3)
    b = train_probe(kit.out, kit.labels, epochs=20, seed=3)
    c = train_probe(kit.out, kit.labels, epochs=20, seed=3, source="hdf5")
    assert a == b and {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in c.items() if k != "source"}


def test_split_is_stratified_disjoint_and_seeded():
    y = np.repeat([0, 1, 2], [10, 4, 1])
    train, test = split(y, 0.25, seed=7)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    assert np.bincount(y[test], minlength=3).tolist() == [2, 1, 0]                # a single item stays in train
    assert np.array_equal(split(y, 0.25, seed=7)[1], test)
    assert any(not np.array_equal(split(y, 0.25, seed=s)[1], test) for s in range(8, 12))


def test_one_class_or_a_bad_fraction_is_a_clear_error(kit, tmp_path, capsys):
    labels = tmp_path / "one.csv"
    labels.write_text("video_id,label\n" + "".join(f"{v},same\n" for v in kit.ids))
    with pytest.raises(ConfigError, match="two classes"):
        train_probe(kit.out, str(labels))
    assert main([kit.out, "--labels", kit.labels, "--test-fraction", "1.5"]) == 2
    assert "--test-fraction" in capsys.readouterr().err
