"""
The formula's library reaches a long-running salt-minion through Salt's own sync, and a changed
library function is what the *next* scheduled job runs, without restarting the minion.

A real salt-master serves a copy of the formula's custom modules (``_modules``, ``_states``,
``_utils``); a real salt-minion schedules ``state.apply envoy._mapdata`` (which dumps the settings
the library resolves) every few seconds. We change a default in the library's copy on the master,
run ``saltutil.sync_all``, and the same minion process's next scheduled run writes the new value.
"""

import getpass
import grp
import os
import shutil
import time

import pytest
import yaml

from tests.helpers.net import wait_for
from tests.helpers.sandbox import REPO

INTERVAL_S = 2


@pytest.fixture
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("library-sync")
    ext = base / "ext"
    for sub in ("_modules", "_states", "_utils"):
        shutil.copytree(REPO / sub, ext / sub, ignore=shutil.ignore_patterns("__pycache__"))
    root = base / "root"
    pillar = base / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["envoy"]}}))
    (pillar / "envoy.sls").write_text(yaml.safe_dump({"envoy": {"lookup": {
        "root": str(root), "user": getpass.getuser(), "group": grp.getgrgid(os.getgid()).gr_name}}}))
    return {"base": base, "ext": ext, "pillar": pillar, "root": root}


@pytest.fixture(params=[True, False], ids=["jobs-in-processes", "jobs-in-threads"])
def minion(request, salt_factories, tree):
    """A minion running jobs in forked processes (Salt's default) or in threads of its one long-lived
    process (``multiprocessing: False``), where a module imported once stays imported."""
    master = salt_factories.salt_master_daemon(
        f"sync-master-{request.param_index}",
        overrides={"file_roots": {"base": [str(REPO / "salt"), str(tree["ext"])]},
                   "pillar_roots": {"base": [str(tree["pillar"])]}})
    with master.started():
        minion = master.salt_minion_daemon("sync-minion", overrides={
            "multiprocessing": request.param,
            "schedule": {"mapdata": {"function": "state.sls", "args": ["envoy._mapdata"], "seconds": INTERVAL_S,
                                     "maxrunning": 1}}})
        with minion.started():
            yield master.salt_cli(timeout=120), minion


def dumped(tree):
    path = tree["root"] / "tmp" / "salt_mapdata_dump" / "sync-minion.yaml"
    try:
        return yaml.safe_load(path.read_text())["values"]
    except (OSError, TypeError, KeyError, yaml.YAMLError):
        return None


def test_a_synced_library_change_reaches_the_next_scheduled_job(minion, tree):
    cli, daemon = minion
    assert cli.run("saltutil.sync_all", minion_tgt="sync-minion").returncode == 0
    wait_for(lambda: (dumped(tree) or {}).get("keep_releases") == 3, timeout=60, interval=0.5,
             what="a scheduled run with the library as shipped")
    pid = daemon.pid

    settings = tree["ext"] / "_utils" / "envoy_formula" / "host_settings.py"
    text = settings.read_text()
    assert '"keep_releases": 3,' in text
    settings.write_text(text.replace('"keep_releases": 3,', '"keep_releases": 7,'))
    synced = cli.run("saltutil.sync_all", minion_tgt="sync-minion")
    assert synced.returncode == 0 and "utils.envoy_formula.host_settings" in str(synced.data), synced.data
    changed_at = time.monotonic()

    wait_for(lambda: (dumped(tree) or {}).get("keep_releases") == 7, timeout=60, interval=0.5,
             what="the next scheduled run with the synced library")
    assert daemon.pid == pid and daemon.is_running(), "the minion was not restarted"
    print(f"synced library change served by a scheduled job after {time.monotonic() - changed_at:.1f}s")
