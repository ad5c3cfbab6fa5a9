"""The daemon's downloads by task, shared by the local API, the proxy and the job worker."""

from __future__ import annotations

from anyio.abc import TaskGroup

from damselfly.services.peer.downloader import Download, PeerContext
from damselfly.services.peer.request import DownloadRequest


class Downloads:
    """The daemon's downloads by task: a second request for a running task joins it."""

    def __init__(self, ctx: PeerContext, tg: TaskGroup) -> None:
        self.ctx = ctx
        self._tg = tg
        self._by_task: dict[str, Download] = {}

    def start(self, request: DownloadRequest, *, task_id: str = "",
              straight_to_source: str = "") -> Download:
        task_id = task_id or request.task_id()
        current = self._by_task.get(task_id)
        if current is not None and not current.finished.is_set():
            return current
        download = Download(self.ctx, request, task_id, straight_to_source=straight_to_source)
        self._by_task[task_id] = download
        self._tg.start_soon(download.run)
        return download

    def get(self, task_id: str) -> Download | None:
        download = self._by_task.get(task_id)
        if download is not None and download.state == "succeeded" \
                and self.ctx.storage.get(task_id) is None:
            del self._by_task[task_id]  # garbage-collected since it finished
            return None
        return download

    def active(self) -> set[str]:
        return {t for t, d in self._by_task.items() if not d.finished.is_set()}

    async def cancel(self, task_id: str) -> bool:
        """Stop a running download (if any) and drop the task's files; False if unknown."""
        download = self._by_task.pop(task_id, None)
        if download is not None:
            download.cancel()
            await download.finished.wait()
        meta = self.ctx.storage.remove(task_id)
        if meta is not None:
            await self.ctx.forget([meta])
        return download is not None or meta is not None

    def cancel_all(self) -> None:
        for download in self._by_task.values():
            download.cancel()
