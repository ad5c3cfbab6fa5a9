"""The job coordinator's pure core: which hosts a job targets, and when it is over.

``evolve`` folds every DF_JOBS event; ``start`` decides a requested job's targets from the
live hosts (waiting ``no_host_grace`` seconds for one to show up before failing the job, as
a manager that just started may not have projected its hosts yet); ``abandon`` fails the
unfinished part of a host that left (it will never report); ``settle`` ends a preheat as
Dragonfly does — failed as soon as any task failed, succeeded once every target finished;
``expire`` ends jobs past their deadline (preheats fail, get/delete-task jobs report what
they collected). Outputs carry ids derived from the request's, so a coordinator that
replays the log republishes nothing new. No clock, no I/O: the shell passes ``now`` and
the hosts that left, and stamps ``at``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from damselfly.events.base import Event
from damselfly.events.codec import AnyEvent
from damselfly.events.ids import derived_id
from damselfly.events.jobs import (
    DeleteTaskRequested,
    GetTaskRequested,
    JobFailed,
    JobProgressed,
    JobStarted,
    JobSucceeded,
    PreheatRequested,
    SyncPeersRequested,
)

TERMINAL: Final = ("succeeded", "failed")
SEED_SCOPES: Final = ("single_seed_peer", "all_seed_peers")


@dataclass(frozen=True)
class Host:
    host_id: str
    cluster: str
    seed: bool


@dataclass
class Job:
    job_id: str
    request_id: str
    kind: str
    scope: str
    clusters: tuple[str, ...]
    requested_at: float
    deadline: float
    task_ids: list[str]
    targets: frozenset[str] | None = None  # None: any one host may do it
    started: bool = False
    outcomes: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)


@dataclass
class Book:
    preheat_timeout: float
    collect_window: float
    no_host_grace: float = 10.0
    jobs: dict[str, Job] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)

    def evolve(self, e: AnyEvent) -> None:
        match e:
            case PreheatRequested():
                self._open(e.job_id, e.id, "preheat", e.scope, e.scheduler_cluster_ids,
                           e.at, e.at + self.preheat_timeout, [])
            case DeleteTaskRequested() | GetTaskRequested():
                kind = "delete_task" if isinstance(e, DeleteTaskRequested) else "get_task"
                self._open(e.job_id, e.id, kind, "all_peers", e.scheduler_cluster_ids,
                           e.at, e.at + self.collect_window, [e.task_id])
            case SyncPeersRequested():
                self._open(e.job_id, e.id, "sync_peers", "all_peers", e.scheduler_cluster_ids,
                           e.at, e.at + self.collect_window, [])
            case JobStarted():
                if job := self.jobs.get(e.job_id):
                    job.started = True
                    job.targets = frozenset(e.host_ids) if e.host_ids else None
            case JobProgressed():
                if job := self.jobs.get(e.job_id):
                    job.outcomes.setdefault(e.host_id, {})[e.task_id] = (e.state, e.reason)
            case JobSucceeded() | JobFailed():
                self.jobs.pop(e.job_id, None)
                self.finished.add(e.job_id)

    def _open(self, job_id: str, request_id: str, kind: str, scope: str, clusters: list[str],
              requested_at: float, deadline: float, task_ids: list[str]) -> None:
        if job_id not in self.finished and job_id not in self.jobs:
            self.jobs[job_id] = Job(job_id, request_id, kind, scope, tuple(clusters),
                                    requested_at, deadline, task_ids)

    def unstarted(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.started]

    def start(self, job: Job, hosts: Iterable[Host], now: float) -> list[Event]:
        """The job's targets among the live ``hosts``: ``JobStarted``; ``JobFailed`` when
        no host can do it past the grace period; nothing while it lasts."""
        eligible = sorted(h.host_id for h in hosts
                          if (not job.clusters or h.cluster in job.clusters)
                          and (h.seed or job.scope not in SEED_SCOPES))
        if job.kind == "preheat" and not eligible:
            if now < job.requested_at + self.no_host_grace:
                return []
            where = ", ".join(job.clusters) or "any cluster"
            who = "seed peer" if job.scope in SEED_SCOPES else "peer"
            return [JobFailed(id=derived_id(job.request_id, "failed"), job_id=job.job_id,
                              reason=f"no {who} alive in {where}")]
        targets = [] if job.scope == "single_seed_peer" else eligible
        return [JobStarted(id=derived_id(job.request_id, "started"), job_id=job.job_id,
                           task_ids=job.task_ids, host_ids=targets)]

    def settle(self, job_id: str) -> list[Event]:
        """End a preheat: failed once any task failed; succeeded once every target (for
        ``single_seed_peer``, one host) finished every task."""
        job = self.jobs.get(job_id)
        if job is None or job.kind != "preheat" or not job.started:
            return []
        done = {h: t for h, t in job.outcomes.items()
                if t and all(state in TERMINAL for state, _ in t.values())}
        if job.targets is None:
            return [self._outcome(job, dict([min(done.items())]))] if done else []
        failed = any(state == "failed" for t in job.outcomes.values() for state, _ in t.values())
        if failed or (done and job.targets <= done.keys()):
            return [self._outcome(job, job.outcomes)]
        return []

    def unfinished(self) -> dict[str, dict[str, list[str]]]:
        """Per started preheat, the hosts whose part is not over and their unfinished tasks
        (``[""]``: a target that has reported nothing yet)."""
        out: dict[str, dict[str, list[str]]] = {}
        for job in self.jobs.values():
            if job.kind != "preheat" or not job.started:
                continue
            hosts = job.outcomes.keys() if job.targets is None else job.targets
            for host in sorted(hosts):
                tasks = job.outcomes.get(host, {})
                pending = [t for t, (state, _) in sorted(tasks.items()) if state not in TERMINAL]
                if pending or not tasks:
                    out.setdefault(job.job_id, {})[host] = pending or [""]
        return out

    def abandon(self, left: Mapping[str, str]) -> list[Event]:
        """Fail the unfinished part of every host in ``left`` (host id → the reason its
        ``HostLeft`` gave): it will never report, and the job need not wait for its deadline.
        Depends on the hosts' state, not on when the coordinator noticed, so a replay that
        sees the same departures decides the same."""
        out: list[Event] = []
        for job_id, hosts in self.unfinished().items():
            request_id = self.jobs[job_id].request_id
            for host, tasks in hosts.items():
                if host not in left:
                    continue
                reason = f"host {host} left" + (f": {left[host]}" if left[host] else "")
                out += [JobProgressed(id=derived_id(request_id, host, task, "left"),
                                      job_id=job_id, host_id=host, task_id=task,
                                      state="failed", reason=reason) for task in tasks]
        return out

    def settle_all(self) -> list[Event]:
        return [e for job_id in list(self.jobs) for e in self.settle(job_id)]

    def _outcome(self, job: Job, outcomes: dict[str, dict[str, tuple[str, str]]]) -> Event:
        failures = [f"{' '.join(filter(None, (host, task[:12])))}: {reason or 'failed'}"
                    for host, tasks in sorted(outcomes.items())
                    for task, (state, reason) in sorted(tasks.items()) if state == "failed"]
        if failures:
            return JobFailed(id=derived_id(job.request_id, "failed"), job_id=job.job_id,
                             reason="; ".join(failures))
        tasks = sorted({t for tasks in outcomes.values() for t in tasks})
        return JobSucceeded(id=derived_id(job.request_id, "succeeded"), job_id=job.job_id,
                            result={"hosts": ",".join(sorted(outcomes)), "tasks": ",".join(tasks)})

    def expire(self, now: float) -> list[Event]:
        """End the started jobs past their deadline."""
        out: list[Event] = []
        for job in [j for j in self.jobs.values() if j.started and j.deadline <= now]:
            if job.kind == "preheat":
                waiting = sorted((job.targets or frozenset({"a seed peer"})) - job.outcomes.keys())
                reason = (f"timed out waiting for {', '.join(waiting)}" if waiting else
                          "timed out before every task finished")
                out.append(JobFailed(id=derived_id(job.request_id, "failed"), job_id=job.job_id,
                                     reason=reason))
                continue
            if job.kind == "sync_peers":  # the holdings themselves are the job's hosts
                tasks = {t for held in job.outcomes.values() for t in held}
                result = {"hosts": str(len(job.outcomes)), "tasks": str(len(tasks))}
            else:
                result = {host: ",".join(sorted({r or s for s, r in held.values()}))
                          for host, held in sorted(job.outcomes.items())}
            out.append(JobSucceeded(id=derived_id(job.request_id, "succeeded"),
                                    job_id=job.job_id, result=result))
        return out
