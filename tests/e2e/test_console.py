"""The console in a real browser (Debian's chromium driven by Playwright) against a running
swarm — scheduler, seed peer, two peers and the manager, all processes — that has just
downloaded a file: sign-in, every view loads offline, the dashboard charts draw the download,
a preheat and a census start from the jobs view and are watched to their end, and a user
bound to a tenant sees that tenant's task only."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from damselfly.services.runtime.procs import DAMSELFLY, spawn, stop, wait_ready
from tests.support.swarm import Origin, Swarm
from tests.support.wait import eventually

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

pytestmark = pytest.mark.anyio
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PIECE = 16 << 10
SIZE = 12 * PIECE + 123
# Panels a download feeds; jobs and back-to-source reasons may rightly be empty.
FED_BY_A_DOWNLOAD = {"back_to_source_ratio", "p2p_vs_origin", "active_peers",
                     "download_duration", "scheduling_latency", "top_tasks"}


ROOT_PASSWORD = "root-password-for-the-console"
ALICE_PASSWORD = "alice-password-for-the-console"


def call(url: str, body: object = None, token: str = "") -> Any:
    """JSON from the manager; ``None`` for a 4xx/5xx answer."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers),
                                    timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError:
        return None


def start_manager(nats_url: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    with open(tmp_path / "manager.log", "wb") as log:
        return spawn([*DAMSELFLY, "manager", "--nats", nats_url,
                      "--data-dir", str(tmp_path / "manager"),
                      "--ready-file", str(tmp_path / "manager.json")], log,
                     {"DAMSELFLY_ROOT_PASSWORD": ROOT_PASSWORD,
                      # the swarm's: a preheat's credentials are sealed for its daemons
                      "DAMSELFLY_CLUSTER_SECRET": Swarm.secret})


async def signed_in(url: str, name: str, password: str) -> str:
    """A session token, once the manager's projections know the user."""
    async def answer() -> Any:
        return await anyio.to_thread.run_sync(
            call, f"{url}/api/v1/users/signin", {"name": name, "password": password})

    body = await eventually(answer, timeout=30)
    assert isinstance(body, dict)
    return str(body["token"])


@dataclass
class Seen:
    """What the console showed."""

    offsite: list[str] = field(default_factory=list)  # requests that left the manager
    errors: list[str] = field(default_factory=list)
    schedulers: int = 0
    panels: list[dict[str, Any]] = field(default_factory=list)  # from the page's script
    task_peers: int = 0
    sql: str = ""
    alice_tasks: list[str] = field(default_factory=list)
    alice_sql_link: bool = True
    alice_task_count: str = ""
    job_error: str = ""
    preheated: list[str] = field(default_factory=list)  # the preheat's host rows
    census: int = 0  # the sync_peers job's host rows


def sign_in(page: Page, name: str, password: str) -> None:
    page.fill("form.signin input[name=name]", name)
    page.fill("form.signin input[name=password]", password)
    page.click("form.signin button")


def start_job(page: Page, console: str, kind: str, **fields: str) -> None:
    """Fill the jobs view's form and submit it."""
    page.goto(console + "/#/jobs")
    page.select_option("form.newjob select[name=type]", kind)
    for name, value in fields.items():
        if name == "scope":
            page.select_option("form.newjob select[name=scope]", value)
        else:
            page.fill(f"form.newjob input[name={name}]", value)
    page.click("form.newjob button")


def browse(url: str, shot: Path, download_another: Callable[[], None], preheat: str) -> Seen:
    """Sign in and open the console's views, with a download for tenant team-a happening
    while the overview is open; start a preheat of ``preheat`` and a census from the jobs
    view; then sign in as that tenant's user. Returns what the page showed. Blocks
    (Playwright sync)."""
    from playwright.sync_api import sync_playwright

    seen = Seen()

    def offsite(request: Request) -> None:
        if not request.url.startswith(url):
            seen.offsite.append(request.url)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.on("request", offsite)
            page.on("pageerror", lambda e: seen.errors.append(str(e)))
            page.goto(url + "/#/overview")
            sign_in(page, "root", "wrong-password")
            page.wait_for_selector("form.signin .error:has-text('wrong user name or password')")
            sign_in(page, "root", ROOT_PASSWORD)
            page.wait_for_selector(".card[data-key=peers]")
            page.wait_for_selector("section[data-panel=p2p_vs_origin] polyline.series",
                                   state="attached")
            seen.schedulers = page.locator("#schedulers tbody tr").count()
            page.screenshot(path=str(shot.with_name("overview.png")), full_page=True)
            download_another()
            # no reload: the overview's live refresh shows the second task
            page.wait_for_function(
                "document.querySelector('.card[data-key=tasks] .n').textContent === '2'")
            page.goto(url + "/#/dashboards")
            page.wait_for_function("document.querySelectorAll('section.panel[data-rows]').length"
                                   " === document.querySelectorAll('section.panel').length"
                                   " && document.querySelectorAll('section.panel').length > 0")
            seen.panels = page.eval_on_selector_all(
                "section.panel", "els => els.map(e => ({name: e.dataset.panel, "
                "rows: Number(e.dataset.rows), marks: e.querySelectorAll("
                "'polyline.series, rect.bar').length}))")
            page.screenshot(path=str(shot), full_page=True)
            page.goto(url + "/#/tasks")
            page.wait_for_selector("#list tr.link")
            page.click("#list tr.link:has-text('blob.bin')")
            page.wait_for_selector("#peers tr.link")
            seen.task_peers = page.locator("#peers tbody tr").count()
            page.goto(url + "/#/sql")
            page.fill("textarea", "SELECT count(*) AS n FROM downloads WHERE ok")
            page.click("button")
            page.wait_for_selector("#result td")
            seen.sql = page.locator("#result td").inner_text()
            start_job(page, url, "preheat", url="")  # refused: the form says why
            page.wait_for_selector("form.newjob .error:not(:empty)")
            seen.job_error = page.locator("form.newjob .error").inner_text()
            start_job(page, url, "preheat", url=preheat, scope="all_seed_peers")
            page.wait_for_selector("#job dd:text-is('succeeded')", timeout=60_000)
            page.wait_for_selector("#hosts tbody tr")
            seen.preheated = page.locator("#hosts tbody tr").all_inner_texts()
            start_job(page, url, "sync_peers")
            page.wait_for_selector("#job dd:text-is('succeeded')", timeout=60_000)
            page.wait_for_selector("#hosts tbody tr")
            seen.census = page.locator("#hosts tbody tr").count()
            page.click("#signout")
            page.wait_for_selector("form.signin")
            sign_in(page, "alice", ALICE_PASSWORD)
            page.wait_for_selector("#who:has-text('tenant team-a')")
            page.goto(url + "/#/tasks")
            page.wait_for_selector("#list tr.link")
            seen.alice_tasks = page.locator("#list tbody tr").all_inner_texts()
            seen.alice_sql_link = page.locator("nav a[href='#/sql']").is_visible()
            page.goto(url + "/#/overview")
            page.wait_for_selector(".card[data-key=tasks]")
            seen.alice_task_count = page.locator(".card[data-key=tasks] .n").inner_text()
        finally:
            browser.close()
    return seen


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="apt-get install -y chromium")
async def test_console_draws_a_real_download(nats_url: str, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    for name in ("blob.bin", "other.bin", "preheated.bin"):
        (www / name).write_bytes(os.urandom(SIZE))
    origin = Origin(www)
    await origin.start()
    manager = start_manager(nats_url, tmp_path)
    try:
        url = str(wait_ready(tmp_path / "manager.json", manager)["url"])
        with Swarm(nats_url, tmp_path / "swarm", 2, cluster="console") as swarm:
            def download(name: str, peer: int, application: str = "") -> None:
                out = tmp_path / f"{name}.{peer}"
                done = subprocess.run(
                    [*DAMSELFLY, "get", f"{origin.url}/{name}",
                     "-O", str(out), "--piece-length", str(PIECE), "--application", application,
                     "--endpoint",
                     str(swarm.peer_services[peer].endpoints["api_url"]), "--no-progress",
                     "--timeout", "60"], check=False, capture_output=True, text=True,
                    timeout=90)
                assert done.returncode == 0, done.stderr
                assert out.read_bytes() == (www / name).read_bytes()

            for peer in range(len(swarm.peer_services)):
                await anyio.to_thread.run_sync(download, "blob.bin", peer)
            root = await signed_in(url, "root", ROOT_PASSWORD)
            assert call(f"{url}/api/v1/applications", {"name": "team-a"}, root)

            def fed() -> bool:  # each stream is projected on its own
                return all(call(f"{url}/api/v1/dashboards/{name}", token=root)["rows"]
                           for name in FED_BY_A_DOWNLOAD) and bool(
                    call(f"{url}/api/v1/applications/team-a", token=root))

            async def projected() -> bool:
                return await anyio.to_thread.run_sync(fed)

            await eventually(projected, timeout=30)
            assert call(f"{url}/api/v1/users", {"name": "alice", "password": ALICE_PASSWORD,
                                                "role": "guest", "tenant": "team-a"}, root)
            await signed_in(url, "alice", ALICE_PASSWORD)
            shot = tmp_path / "console.png"
            seen = await anyio.to_thread.run_sync(
                browse, url, shot, functools.partial(download, "other.bin", 0, "team-a"),
                f"{origin.url}/preheated.bin")
    finally:
        stop([manager])
        await origin.stop()
    assert manager.returncode == 0
    assert seen.offsite == [] and seen.errors == []
    panels = {p["name"]: p for p in seen.panels}
    for name in FED_BY_A_DOWNLOAD:
        assert panels[name]["rows"] > 0 and panels[name]["marks"] > 0, panels[name]
    assert seen.task_peers >= 3  # the seed and both peers took part
    assert seen.schedulers == 1
    assert seen.sql == "5"  # three downloads of the first file, two of the other
    assert seen.job_error.startswith("args: give url"), seen.job_error
    (preheated,) = seen.preheated  # the one seed peer
    assert "succeeded" in preheated
    # Every host holds blob.bin; the seed also the preheated file and other.bin, which
    # peer-1 fetched for team-a through it.
    assert seen.census == 6
    (row,) = seen.alice_tasks
    assert "other.bin" in row
    assert seen.alice_sql_link is False and seen.alice_task_count == "1"
    assert shot.stat().st_size > 10_000
    if keep := os.environ.get("DAMSELFLY_CONSOLE_SHOTS"):  # a folder to look at them in
        for taken in (shot, shot.with_name("overview.png")):
            shutil.copy(taken, Path(keep) / taken.name)
