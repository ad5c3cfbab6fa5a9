"""What a client asks the daemon to download (the local API's request body, also kept with
the task on disk so that a restarted daemon can resume it)."""

from __future__ import annotations

import msgspec

from damselfly.events.taskid import task_id


class DownloadRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    tag: str = ""
    application: str = ""
    priority: int = 0
    piece_length: int = 0
    filtered_query_params: list[str] = msgspec.field(default_factory=list)
    disable_back_to_source: bool = False
    digest: str = ""
    content_for_calculating_task_id: str = ""  # dfget's: the task id from this, not the URL

    def task_id(self) -> str:
        if self.content_for_calculating_task_id:
            return task_id(self.content_for_calculating_task_id, tag=self.tag,
                           application=self.application, piece_length=self.piece_length)
        return task_id(self.url, tag=self.tag, application=self.application,
                       piece_length=self.piece_length,
                       filtered_query_params=self.filtered_query_params)
