"""Redis with a password or an ACL user, and secrets in the broker URL."""

from __future__ import annotations

from support.output import assert_exactly_once
from support.services import RedisServer, Workers

from support.jobs import job_toml


def test_password_and_acl_user_in_redis_url(api, harvest, env, tmp_path):
    """A password-protected Redis works through HARVEST_REDIS_URL, with the default user's
    password and with an ACL user; the password never appears in CLI output or worker logs."""
    password = "pw-Hq2-never-shown"
    server = RedisServer(tmp_path / "redis", password=password).start()
    client = server.client()
    client.acl_setuser("harvester", enabled=True, passwords=[f"+{password}x"],
                       keys=["*"], channels=["*"], commands=["+@all"])
    acl_url = f"redis://harvester:{password}x@127.0.0.1:{server.port}/0"
    try:
        for name, url in (("default", server.url), ("acl", acl_url)):
            pool = Workers(url, env, tmp_path / f"logs-{name}", count=1).start()
            try:
                job = job_toml(tmp_path / f"{name}.toml", url=f"{api.url}/items",
                               params={"per_page": 5, "pages": 20},
                               pagination='style = "page"\npages = 20', out=f"out-{name}")
                result = harvest("run", str(job), redis_url=url)
                assert result.returncode == 0, result.stderr
                assert_exactly_once(tmp_path / f"out-{name}", range(1, 21))
                assert password not in result.stdout + result.stderr + pool.logs()
            finally:
                pool.stop()
        denied = harvest("status", "x", redis_url=f"redis://127.0.0.1:{server.port}/0")
        assert denied.returncode != 0 and "Traceback" not in denied.stderr
    finally:
        server.kill()


def _make_certificates(directory):
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    import subprocess

    def run(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
        "server.key", "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.crt")
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


def test_rediss_with_certificate_checks(api, harvest, env, tmp_path):
    """HARVEST_REDIS_URL=rediss:// talks TLS to Redis with the server certificate checked
    (against the CA named in the URL); a job runs end to end over it."""
    import subprocess
    import time

    import redis as redis_py

    from support.services import free_port

    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = _make_certificates(certs)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis_py.Redis.from_url(url).ping()
                break
            except redis_py.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        pool = Workers(url, env, tmp_path / "logs", count=1).start()
        try:
            job = job_toml(tmp_path / "job.toml", url=f"{api.url}/items",
                           params={"per_page": 5, "pages": 10},
                           pagination='style = "page"\npages = 10')
            result = harvest("run", str(job), redis_url=url)
            assert result.returncode == 0, result.stderr + pool.logs()[-3000:]
            assert_exactly_once(tmp_path / "out", range(1, 11))
        finally:
            pool.stop()
        wrong_ca = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required"
        refused = harvest("status", "x", redis_url=wrong_ca)
        assert refused.returncode == 3, "an unverifiable server certificate is refused"
    finally:
        server.kill()
