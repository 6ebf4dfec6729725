"""The autoencoder runs only what is asked of it (issue 15): the kNN reference needs the
embedding alone, which the encoder gives with the bits of the whole model's pass."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zeekml._core.errors import ModelError

ROOT = Path(__file__).resolve().parents[4]
MAE_BASE = ROOT / "models" / "mae-base"
IOT23 = ROOT / "examples" / "iot23" / "conn.log.labeled"

pytestmark = pytest.mark.skipif(not (MAE_BASE / "config.json").exists(), reason="models/mae-base not shipped")


@pytest.fixture(scope="module")
def loaded_and_table():
    from zeekml.parse import Quarantine
    from zeekml.pipeline import ScoreSummary, load_conns
    from zeekml.scoring.detectors.mae import LoadedMAE

    table = load_conns([str(IOT23)], Quarantine(), ScoreSummary()).slice(0, 400)
    return LoadedMAE.from_dir(str(MAE_BASE)), table


def _no_decoder(monkeypatch, loaded) -> None:
    def refuse(*a, **k):
        raise AssertionError("the decoder ran for an embedding")

    monkeypatch.setattr(loaded.model.decoder, "forward", refuse)


def test_the_embedding_alone_runs_the_encoder_alone_with_the_same_bits(loaded_and_table, monkeypatch):
    loaded, table = loaded_and_table
    m = loaded.modalities(table)
    whole = loaded.run(m)
    assert set(whole) == {"embedding", "quantity", "sequence", "entity", "score", "proba"}
    _no_decoder(monkeypatch, loaded)
    emb = loaded.run(m, want=("embedding",))
    assert set(emb) == {"embedding"}
    assert emb["embedding"].dtype == np.float32
    assert np.array_equal(emb["embedding"], whole["embedding"])
    assert loaded.run(m.take(np.arange(0)), want=("embedding",))["embedding"].shape == (0, 64)
    with pytest.raises(ModelError, match="unknown autoencoder outputs"):
        loaded.run(m, want=("embedding", "emb"))


def test_errors_asked_alone_equal_the_whole_pass(loaded_and_table):
    loaded, table = loaded_and_table
    m = loaded.modalities(table)
    whole = loaded.run(m)
    part = loaded.run(m, want=("sequence", "score"))
    assert set(part) == {"sequence", "score"}
    assert np.array_equal(part["sequence"], whole["sequence"]) and np.array_equal(part["score"], whole["score"])


def test_the_knn_detector_never_decodes_and_scores_as_before(loaded_and_table, monkeypatch):
    """Fit, score and explain of the kNN detector: no decoder pass; scores equal those from the
    whole pass's embeddings."""
    from zeekml.scoring.detectors.mae import MAEDetector
    from zeekml.scoring.detectors.reference import KnnReference

    loaded, table = loaded_and_table
    base, rest = table.slice(0, 200), table.slice(200)
    ref = KnnReference().fit(loaded.run(loaded.modalities(base))["embedding"])
    want = ref.score(loaded.run(loaded.modalities(rest))["embedding"])
    want_rows = ref.score(loaded.run(loaded.modalities(table, rows=np.arange(200, 400)))["embedding"])
    _no_decoder(monkeypatch, loaded)
    det = MAEDetector(loaded).fit(base)
    assert np.array_equal(det.score(rest), want)
    assert np.array_equal(det.score_rows(table, np.arange(200, 400)), want_rows)
    assert len(det.explain(rest, np.arange(3))) == 3
    p = det.profile(rest, want=("embedding",))
    assert set(p) == {"embedding"}
    with pytest.raises(ModelError, match="unknown profile outputs"):
        det.profile(rest, want=("embedding", "z"))


def test_the_zscore_detector_profiles_parts(loaded_and_table):
    from zeekml.scoring.detectors.mae import MAEDetector

    loaded, table = loaded_and_table
    det = MAEDetector(loaded, reference="zscore").fit(table.slice(0, 200))
    p = det.profile(table.slice(200), want=("parts", "raw"))
    assert set(p) == {"parts", "raw"} and p["parts"].shape == (200, 3)
    np.testing.assert_allclose(p["parts"].sum(axis=1), p["raw"], rtol=1e-5)
    assert det.explain(table.slice(200), np.arange(2))[0]
