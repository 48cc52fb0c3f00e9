"""The HH-RLHF importer on the first 200 lines of the real file, when $RLHF_HH_RLHF_FILE points to it.

(The repository carries only a small benign excerpt, tested in the unit tests; the full file is real
red-teaming data with offensive content and stays outside the repository.)
"""

import gzip
import os
from pathlib import Path

import pytest

from components.config.validation import ValidationConfig
from components.data.feedback.validation import validate_file

SOURCE = os.environ.get("RLHF_HH_RLHF_FILE")


@pytest.mark.skipif(not SOURCE or not Path(SOURCE).is_file(), reason="set RLHF_HH_RLHF_FILE to the HH-RLHF .jsonl.gz")
def test_first_200_hh_rlhf_pairs_import_and_reconcile(tmp_path):
    with gzip.open(SOURCE, "rt", encoding="utf-8") as fh:
        head = [next(fh) for _ in range(200)]
    sample = tmp_path / "hh-200.jsonl"
    sample.write_text("".join(head), encoding="utf-8")
    r = validate_file(sample, ValidationConfig())
    assert r.rows_in == 200 == len(r.accepted) + len(r.quarantined)
    assert len(r.accepted) >= 190  # real human data: a few rows (e.g. an empty final reply) are quarantined
    assert all(p.startswith("Human:") for p in r.accepted.prompt)
    assert not r.accepted.chosen.str.contains("\n\nAssistant:").any()
