from pathlib import Path

import pytest

from components.config import load_section, to_dict
from components.config.serve import ServeConfig
from serving.middleware import check_host_allowed, is_loopback, token_ok

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_params_yaml_serve_section_equals_the_defaults():
    assert to_dict(load_section(ServeConfig, "serve", PARAMS)) == to_dict(ServeConfig())


def test_non_loopback_host_needs_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    check_host_allowed("127.0.0.1", None)
    check_host_allowed("0.0.0.0", "t")
    with pytest.raises(SystemExit, match="RLHF_API_TOKEN"):
        check_host_allowed("0.0.0.0", None)


def test_token_compare():
    assert token_ok("abc", "abc")
    assert not token_ok("abd", "abc") and not token_ok(None, "abc") and not token_ok("", "abc")


def test_rlhf_serve_refuses_a_public_address_without_a_token(monkeypatch):
    from typer.testing import CliRunner

    from rlhf_cli.main import app

    monkeypatch.delenv("RLHF_API_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", "--params", str(PARAMS), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "RLHF_API_TOKEN" in result.output


def test_bound_host_reads_the_socket_bentoml_hands_the_worker():
    import socket

    from serving.service import bound_host

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert bound_host(["worker", "--fd", str(sock.fileno()), "--x"]) == "127.0.0.1"
    assert bound_host(["worker"]) is None and bound_host(["worker", "--fd", "999999"]) is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"canary_share": 0.2}, "needs canary_version"),
        ({"shadow": True}, "needs canary_version"),
        ({"canary_version": "v2", "canary_share": 1.5}, "from 0 to 1"),
        ({"max_queued": 0}, "at least 1"),
        ({"deadline_s": 0}, "positive"),
    ],
)
def test_serve_config_refuses_impossible_values(fields, says):
    with pytest.raises(ValueError, match=says):
        ServeConfig(**fields)
