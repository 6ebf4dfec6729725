"""The ``classifier`` detector (issue 14 item 2): which classes count as known-bad, which
finetuned directories it refuses (by name, in one line), and what ``--models`` makes of them.
The detector contract on real finetuned models of every kind: ``test_model_kind_contract.py``."""
from __future__ import annotations

import os

import numpy as np
import pytest
from test_registry_kinds import fake_model_dir

from zeekml._core.errors import ModelError
from zeekml.scoring.detectors.classifier import NOTES, ClassifierDetector, bad_classes
from zeekml.scoring.registry import load_model_detectors


def test_bad_classes_are_all_but_benign_and_background():
    assert bad_classes(["Benign", "Malicious"]).tolist() == [1]
    assert bad_classes(["Background", "Benign", "C&C", "DDoS"]).tolist() == [2, 3]
    assert bad_classes(["benign-traffic", "Normal", "PartOfAHorizontalPortScan"]).tolist() == [2]
    assert bad_classes(["Benign"]).tolist() == []


def test_notes_are_the_zeek_package_notice_types():
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "..", "zeek-scripts", "scripts",
                           "main.zeek")) as f:
        main = f.read()
    for note in NOTES.values():
        assert f'["{note}"]' in main


def test_a_service_classifier_is_not_a_known_bad_detector(tmp_path):
    d = fake_model_dir(tmp_path / "svc", kind="moe", schema_version=1, label_field="service",
                 classes=["dns", "http"], head={"in_dim": 8})
    with pytest.raises(ModelError, match="classifier of 'service' is not a known-bad detector") as e:
        ClassifierDetector(d)
    assert e.value.exit_code == 5 and e.value.path == d
    with pytest.raises(ModelError, match="not a known-bad detector"):
        load_model_detectors(d)                     # named by --models: the same one line


def test_an_unknown_kind_is_refused_by_name(tmp_path):
    d = fake_model_dir(tmp_path / "x", kind="fourier", schema_version=1, label_field="label",
                 classes=["Benign", "Malicious"])
    with pytest.raises(ModelError, match="no classifier detector for kind 'fourier'"):
        ClassifierDetector(d)


def test_two_detectors_of_one_name_are_refused(tmp_path, monkeypatch):
    """Thresholds and verdict scores are keyed by detector name: a second detector of the same
    name would silently take the first one's threshold."""
    from zeekml.scoring import registry

    class Fake:
        def __init__(self, name):
            self.name = name

    a = fake_model_dir(tmp_path / "p" / "a", kind="mae", detector=True)
    fake_model_dir(tmp_path / "p" / "b", kind="mae", detector=True)
    monkeypatch.setattr(registry.get_kind("mae"), "detector", lambda d, device="cpu": Fake("mae"))
    with pytest.raises(ModelError, match="a second detector named 'mae'"):
        load_model_detectors(str(tmp_path / "p"))
    assert [x.name for x in load_model_detectors(a)] == ["mae"]


def test_score_is_the_probability_of_the_bad_classes():
    det = ClassifierDetector.__new__(ClassifierDetector)
    det.bad = bad_classes(["Background", "Benign", "C&C", "DDoS"])
    p = np.array([[0.1, 0.6, 0.2, 0.1], [0.0, 0.0, 0.5, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(det._bad_proba(p), [0.3, 1.0], rtol=1e-6)
