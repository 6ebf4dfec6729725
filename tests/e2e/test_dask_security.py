"""Who can reach zeekml's Dask: ``--dask local`` listens on loopback only and refuses a client
without the run's TLS credentials; a remote scheduler is reached with ``tls://`` and
``--dask-security FILE``, and plain ``tcp://`` to another host is refused unless
``--insecure-dask``. Every connection attempt here has a short timeout and stays on 127.0.0.1."""
from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from click.testing import CliRunner

from zeekml._core.errors import ZeekmlError
from zeekml.cli import main
from zeekml.pipeline.dask import dask_access, dask_client

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def _listening(pids: list[int]) -> list[tuple[int, str, int]]:
    out = []
    for pid in pids:
        for c in psutil.Process(pid).net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                out.append((pid, c.laddr.ip, c.laddr.port))
    return out


def _refused(connect) -> bool:
    try:
        client = connect()
    except Exception:  # noqa: BLE001 - Dask raises OSError, CommClosedError or TimeoutError
        return True
    client.close()
    return False


def test_local_cluster_listens_on_loopback_only_and_refuses_strangers():
    from distributed import Client
    from distributed.security import Security

    with dask_client("local:1") as client:
        assert client.submit(lambda x: x + 1, 1).result(timeout=60) == 2
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        workers = client.scheduler_info()["workers"]
        assert workers and all(a.startswith("tls://127.0.0.1:") for a in workers)

        me = psutil.Process()
        listeners = _listening([me.pid] + [p.pid for p in me.children(recursive=True)])
        assert listeners and all(ip == "127.0.0.1" for _, ip, _ in listeners), listeners

        plain = address.replace("tls://", "tcp://")
        assert _refused(lambda: Client(plain, timeout=3))                      # no TLS
        assert _refused(lambda: Client(address, timeout=3,                     # other credentials
                                       security=Security.temporary()))
        # The HTTP servers Dask still starts serve only a health check: no dashboard, no
        # JSON or Prometheus views of the run.
        for _, _, port in listeners:
            for path in ("/status", "/info/main/workers.html", "/json/counts.json", "/metrics"):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3)
                except (urllib.error.URLError, ConnectionError, OSError) as e:
                    assert getattr(e, "code", 404) == 404
                else:
                    pytest.fail(f"127.0.0.1:{port}{path} answered")


def _write_credentials(tmp_path: Path, security) -> Path:
    """The PEM texts of a ``Security`` as files and a Dask security YAML naming them."""
    files = {}
    for name, text in (("ca.pem", security.tls_ca_file), ("cert.pem", security.tls_client_cert),
                       ("key.pem", security.tls_client_key)):
        (tmp_path / name).write_text(text)
        files[name] = str(tmp_path / name)
    doc = {"distributed": {"comm": {"require-encryption": True, "tls": {
        "ca-file": files["ca.pem"],
        "client": {"cert": files["cert.pem"], "key": files["key.pem"]}}}}}
    path = tmp_path / "dask-security.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_remote_tls_scheduler_with_a_security_file(tmp_path):
    from distributed import LocalCluster
    from distributed.security import Security

    security = Security.temporary()
    conf = _write_credentials(tmp_path, security)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://",
                      host="127.0.0.1", security=security, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        spec = cluster.scheduler_address
        with dask_access(spec, str(conf)), dask_client(spec) as client:
            assert client.submit(lambda x: x * 2, 21).result(timeout=60) == 42
        with pytest.raises(ZeekmlError, match="needs --dask-security"):
            with dask_access(spec):
                pass


@pytest.mark.parametrize("spec, insecure, ok", [
    ("tcp://192.0.2.7:8786", False, False),
    ("192.0.2.7:8786", False, False),          # no scheme: Dask's default, tcp
    ("tcp://scheduler.example:8786", False, False),
    ("tcp://192.0.2.7:8786", True, True),
    ("tcp://127.0.0.1:8786", False, True),
    ("tcp://[::1]:8786", False, True),
    ("tcp://localhost:8786", False, True),
])
def test_plain_tcp_only_to_this_host_unless_insecure(spec, insecure, ok):
    if ok:
        with dask_access(spec, insecure=insecure):
            pass
    else:
        with pytest.raises(ZeekmlError, match="--insecure-dask"):
            with dask_access(spec, insecure=insecure):
                pass


def test_plain_tcp_refused_in_dask_client_too():
    # a library caller that never used dask_access gets the safe default
    with pytest.raises(ZeekmlError, match="plain tcp://"):
        with dask_client("tcp://192.0.2.7:8786"):
            pass


def test_bad_security_files_are_one_line_errors(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("distributed: [unclosed\n")
    no_tls = tmp_path / "no-tls.yaml"
    no_tls.write_text("distributed:\n  comm: {}\n")
    missing_pem = tmp_path / "missing.yaml"
    missing_pem.write_text(yaml.safe_dump({"distributed": {"comm": {"tls": {
        "ca-file": str(tmp_path / "nope.pem"),
        "client": {"cert": str(tmp_path / "nope.pem")}}}}}))
    for path, msg in ((bad_yaml, "not valid YAML"), (no_tls, "no distributed.comm.tls"),
                      (missing_pem, "cannot load the TLS files")):
        with pytest.raises(ZeekmlError, match=msg) as e:
            with dask_access("tls://127.0.0.1:8786", str(path)):
                pass
        assert "\n" not in str(e.value)
    with pytest.raises(ZeekmlError, match="needs a tls:// address"):
        with dask_access("tcp://127.0.0.1:8786", str(no_tls)):
            pass
    with pytest.raises(ZeekmlError, match="always uses TLS"):
        with dask_access("local:1", str(no_tls)):
            pass
    with pytest.raises(ZeekmlError, match="always uses TLS"):
        with dask_access("local", insecure=True):
            pass
    with pytest.raises(ZeekmlError, match="--insecure-dask is for a tcp:// address"):
        with dask_access("tls://127.0.0.1:8786", insecure=True):
            pass


def _score(tmp_path: Path, *args: str):
    return CliRunner().invoke(main, ["score", str(EXAMPLES / "zeek" / "conn.log"), "--out",
                                     str(tmp_path / "out"), "--no-models", "--no-progress",
                                     *args])


def test_cli_refuses_plain_tcp_to_another_host_before_any_work(tmp_path):
    r = _score(tmp_path, "--dask", "tcp://192.0.2.7:8786")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "zeekml: error: --dask tcp://192.0.2.7:8786: plain tcp://" in r.output
    assert "--insecure-dask" in r.output and not (tmp_path / "out").exists()


def test_cli_security_options_need_dask(tmp_path):
    r = _score(tmp_path, "--insecure-dask")
    assert r.exit_code == 2 and "need --dask" in r.output
