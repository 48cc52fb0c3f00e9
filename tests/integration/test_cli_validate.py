"""`rlhf validate`: counts by reason, outputs written, exit codes 0 / 1 / 2."""

import json

from typer.testing import CliRunner

from rlhf_cli.main import app

runner = CliRunner()


def _file(tmp_path, lines):
    f = tmp_path / "feedback.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


def _pair(i, **kw):
    return json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", **kw})


def test_mixed_file_exits_non_zero_and_writes_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = _file(tmp_path, [_pair(1), _pair(2), _pair(3, chosen=" "), _pair(4, chosen="same", rejected="same"), "{oops"])
    out = tmp_path / "out"
    result = runner.invoke(app, ["validate", str(f), "--out", str(out)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "accepted │ 2" in text and "quarantined │ 3" in text
    for reason in ("chosen_not_blank", "chosen_differs_from_rejected", "unparseable"):
        assert reason in text
    assert "line 5, column" in text
    quarantine = (out / "quarantine_pairs.jsonl").read_text().splitlines()
    assert len(quarantine) == 3
    assert (out / "accepted_pairs.parquet").is_file() and (out / "report" / "index.html").is_file()


def test_clean_file_exits_zero(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", str(_file(tmp_path, [_pair(1), _pair(2)])), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output


def test_unreadable_file_is_a_message_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    result = runner.invoke(app, ["validate", str(junk)])
    assert result.exit_code == 2
    assert "cannot read feedback file" in result.output and "line 1" in result.output
    assert "Traceback" not in result.output


def test_store_flag_appends_and_reports_the_data_version(tmp_path, monkeypatch):
    from components.data.feedback.store import data_version
    from components.project.scaffold import init_project

    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    paths = init_project(tmp_path / "proj")
    monkeypatch.chdir(paths.root)
    f = _file(tmp_path, [_pair(1), _pair(2)])
    result = runner.invoke(app, ["validate", str(f), "--store"])
    assert result.exit_code == 0, result.output
    version = data_version(paths)
    assert version and version in " ".join(result.output.split())
    again = runner.invoke(app, ["validate", str(f)])  # same rows again: already stored -> quarantined
    assert again.exit_code == 1 and "not_already_stored" in again.output


def test_relative_out_folder_works(tmp_path, monkeypatch):
    """A relative --out used to end in a Great Expectations ValueError traceback."""
    monkeypatch.chdir(tmp_path)
    f = _file(tmp_path, [_pair(1), _pair(2), _pair(3, chosen=" ")])
    result = runner.invoke(app, ["validate", "feedback.jsonl", "--out", "o1"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert (tmp_path / "o1" / "report" / "index.html").is_file()
    assert len((tmp_path / "o1" / "quarantine_pairs.jsonl").read_text().splitlines()) == 1
    assert f.is_file()


def test_missing_params_file_is_an_error_not_a_silent_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = _file(tmp_path, [_pair(1)])
    result = runner.invoke(app, ["validate", str(f), "--params", "missing.yaml"])
    assert result.exit_code == 2
    assert "params file not found" in " ".join(result.output.split()) and "missing.yaml" in result.output
    assert not (tmp_path / "reports").exists()  # nothing was done


def test_demo_checks_every_params_section_before_any_work(tmp_path, monkeypatch):
    """A typo in the policy section used to surface minutes later (after seeding and the reward model)."""
    import yaml

    from components.project.scaffold import init_project

    paths = init_project(tmp_path / "proj")
    raw = yaml.safe_load(paths.params.read_text())
    raw["policy"]["stepz"] = 3
    paths.params.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(paths.root)
    result = runner.invoke(app, ["demo", "--params", str(paths.params)])
    assert result.exit_code == 2
    assert "unknown key policy.stepz" in " ".join(result.output.split())
    assert not paths.data.exists() and not paths.models.exists()  # no stage started
    missing = runner.invoke(app, ["demo", "--params", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "params file not found" in " ".join(missing.output.split())


def test_models_audit_and_rollback_on_an_empty_registry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    assert "no models registered" in runner.invoke(app, ["models"]).output
    assert runner.invoke(app, ["models", "--json"]).output.strip() == "[]"
    audit = runner.invoke(app, ["audit"])
    assert audit.exit_code == 2 and "nothing registered yet" in " ".join(audit.output.split())
    back = runner.invoke(app, ["rollback", "v1"])
    assert back.exit_code == 2 and "no model version 'v1'" in back.output
