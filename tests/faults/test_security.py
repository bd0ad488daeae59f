"""Redis with a password or an ACL user, and secrets in the broker URL."""

from __future__ import annotations

from support.output import assert_exactly_once
from support.services import RedisServer, Workers

from .helpers import job_toml


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
