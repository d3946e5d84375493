import json

import pytest

from cloudalliance.cli import build_parser, main


def test_every_stage_has_a_subcommand():
    parser = build_parser()
    for argv in (["data", "synth", "--out", "x"], ["data", "validate", "x"], ["data", "fetch"],
                 ["s3", "start"], ["s3", "stop"], ["s3", "status"], ["s3", "upload", "a", "s3://b/c"],
                 ["course", "run"], ["records", "x"]):
        assert callable(parser.parse_args(argv).func)


def test_synth_then_validate_json(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--train-per-class", "2", "--test-per-class", "1",
                 "--pred", "1", "--problem-files", "--json"]) == 0
    capsys.readouterr()
    assert main(["data", "validate", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train"]["counts"]["sea"] == 2
    assert len(report["train"]["problems"]) == 5


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fetch_offline_says_what_to_do(monkeypatch, capsys):
    from cloudalliance.data import layout

    monkeypatch.setattr(layout, "_online", lambda *a, **k: False)
    assert main(["data", "fetch"]) == 2
    err = capsys.readouterr().err
    assert "not reachable" in err and "synthetic" in err


def test_bad_s3_uri(tmp_path, capsys):
    assert main(["s3", "upload", str(tmp_path), "bucket/prefix"]) == 2
    assert "s3://BUCKET/PREFIX" in capsys.readouterr().err


@pytest.mark.parametrize("rounds", ["0", "-1", "two"])
def test_bench_upload_refuses_a_bad_round_count(rounds, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "upload", str(tmp_path), "--rounds", rounds])
    assert exc.value.code == 2
    assert "--rounds" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--shard-mb", "0"), ("--shard-mb", "-1"), ("--shard-mb", "nan"),
                                        ("--workers", "0"), ("--workers", "-3")])
def test_bench_upload_refuses_numbers_that_mean_nothing(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "upload", str(tmp_path), flag, value])
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_bench_upload_tools_given_twice_add_up_and_default_to_all():
    from cloudalliance.storage import UPLOAD_TOOLS

    args = build_parser().parse_args(["bench", "upload", "src", "--tools", "s5cmd", "--tools", "objects"])
    assert args.tools == ["s5cmd", "objects"]
    assert build_parser().parse_args(["bench", "upload", "src"]).tools is None  # compare_uploads gets them all
    from cloudalliance import cli

    assert tuple(cli._UPLOAD_TOOLS) == UPLOAD_TOOLS


def test_bench_upload_checks_its_folders_before_starting_anything(tmp_path, capsys, monkeypatch):
    from cloudalliance.cli import bench  # the command group's module, which makes the client

    monkeypatch.setattr(bench, "_client", lambda *a, **k: pytest.fail("a client was made before the checks"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "upload", str(empty)]) == 2
    assert "no files to upload" in capsys.readouterr().err
    (empty / "a.jpg").write_bytes(b"x")
    (tmp_path / "records.txt").write_text("")
    assert main(["bench", "upload", str(empty), "--record-dir", str(tmp_path / "records.txt")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["bench", "upload", str(tmp_path / "missing")]) == 2


def test_bench_upload_refuses_files_only_some_tools_send_before_starting_anything(tmp_path, capsys, monkeypatch):
    from cloudalliance.cli import bench  # the command group's module, which makes the client

    monkeypatch.setattr(bench, "_client", lambda *a, **k: pytest.fail("a client was made before the checks"))
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["bench", "upload", str(tmp_path), "--tools", "s5cmd", "shards"]) == 2
    assert "manifest.json" in capsys.readouterr().err
