"""`zeekml embed` writes its Parquet file through the output helper (``_core.outfile``): a
symbolic link planted at --out is refused with exit 6, its target left alone (issue 17)."""
import os
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from zeekml.cli import main

ROOT = Path(__file__).parent.parent.parent
LOG = ROOT / "examples" / "zeek" / "conn.log"
MAE = ROOT / "models" / "mae-base"


@pytest.fixture
def mae():
    if not (MAE / "config.json").exists():
        pytest.skip("models/mae-base not shipped")
    return str(MAE)


def _embed(mae: str, out: Path):
    return CliRunner().invoke(main, ["embed", str(LOG), "--model", mae, "--out", str(out),
                                     "--device", "cpu"])


def test_embed_refuses_a_planted_symlink(mae, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "emb.parquet"
    out.symlink_to(victim)
    r = _embed(mae, out)
    assert r.exit_code == 6, r.output
    assert "symbolic link" in r.output and "Traceback" not in r.output
    assert victim.read_text() == "keep me\n"
    assert out.is_symlink()


def test_embed_writes_a_new_file_0640(mae, tmp_path):
    out = tmp_path / "emb.parquet"
    old = os.umask(0o022)
    try:
        r = _embed(mae, out)
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    t = pq.read_table(out)
    assert t.num_rows > 300 and t.column_names[:2] == ["uid", "e00"]


def test_embed_of_a_damaged_archive_keeps_its_records_before_the_damage_and_exits_7(mae, tmp_path):
    import gzip

    whole = gzip.compress(LOG.read_bytes())
    cut = tmp_path / "conn.log.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    out = tmp_path / "emb.parquet"
    r = CliRunner().invoke(main, ["embed", str(cut), "--model", mae, "--out", str(out),
                                  "--device", "cpu"])
    assert r.exit_code == 7, r.output
    rows = pq.read_table(out).num_rows
    assert 0 < rows < 360                                  # the records before the damage
    assert f"zeekml: failed: {cut}: archive ends early" in r.stderr
    assert "Traceback" not in r.output
