"""A tenant-bound read sees only its tenant's rows of every relation, whatever the query."""

from __future__ import annotations

import duckdb
import pytest

from damselfly.services.manager.reader import Reader
from damselfly.services.manager.tenancy import scoped

pytestmark = pytest.mark.anyio

SCHEMA = """
CREATE TABLE tasks (task_id VARCHAR, application VARCHAR, url VARCHAR);
CREATE TABLE peers (task_id VARCHAR, peer_id VARCHAR, host_id VARCHAR);
CREATE TABLE hosts (host_id VARCHAR);
CREATE TABLE jobs (job_id VARCHAR, task_id VARCHAR);
CREATE TABLE job_hosts (job_id VARCHAR, host_id VARCHAR, task_id VARCHAR);
CREATE TABLE admin_job_tenants (job_id VARCHAR, tenant VARCHAR);
CREATE TABLE admin_users (user_id VARCHAR, password_hash VARCHAR);
CREATE VIEW peer_hosts AS SELECT task_id, host_id FROM peers;
INSERT INTO tasks VALUES ('ta', 'team-a', 'http://o/a'), ('tb', 'team-b', 'http://o/b'),
                         ('tn', NULL, 'http://o/n');
INSERT INTO peers VALUES ('ta', 'pa', 'ha'), ('tb', 'pb', 'hb'), ('tn', 'pn', 'ha');
INSERT INTO hosts VALUES ('ha'), ('hb'), ('idle');
INSERT INTO jobs VALUES ('ja', 'ta'), ('jb', 'tb'), ('jn', 'ta');
INSERT INTO job_hosts VALUES ('ja', 'ha', 'ta'), ('jb', 'hb', 'tb');
INSERT INTO admin_job_tenants VALUES ('ja', 'team-a'), ('jb', 'team-b');
INSERT INTO admin_users VALUES ('root', 'hash');
"""


@pytest.fixture
def reader() -> Reader:
    con = duckdb.connect()
    con.execute(SCHEMA)
    return Reader(con)


async def _column(reader: Reader, sql: str, tenant: str) -> list[object]:
    return [row[0] for row in (await reader.query(sql, tenant=tenant)).rows]


@pytest.mark.parametrize(("sql", "team_a", "everyone"), [
    ("SELECT task_id FROM tasks ORDER BY 1", ["ta"], ["ta", "tb", "tn"]),
    ("SELECT peer_id FROM peers ORDER BY 1", ["pa"], ["pa", "pb", "pn"]),
    ("SELECT host_id FROM hosts ORDER BY 1", ["ha"], ["ha", "hb", "idle"]),
    ("SELECT job_id FROM jobs ORDER BY 1", ["ja"], ["ja", "jb", "jn"]),
    ("SELECT job_id FROM job_hosts ORDER BY 1", ["ja"], ["ja", "jb"]),
    ("SELECT host_id FROM peer_hosts ORDER BY 1", ["ha"], ["ha", "ha", "hb"]),
    ("SELECT user_id FROM admin_users", [], ["root"]),
    # a panel's own WITH, after comment lines, with a CTE reading a shadowed table
    (("-- title: x\n/* note */ WITH t AS (SELECT * FROM tasks) SELECT count(*) FROM t "
      "JOIN peers USING (task_id)"), [1], [3]),
    (("with recursive n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2) "
      "SELECT count(*) FROM n, tasks"), [2], [6]),
])
async def test_a_tenant_reads_its_rows_only(reader: Reader, sql: str, team_a: list[object],
                                            everyone: list[object]) -> None:
    assert await _column(reader, sql, "team-a") == team_a
    assert await _column(reader, sql, "") == everyone


def test_parameters_keep_their_order() -> None:
    text, params = scoped("SELECT * FROM tasks WHERE url = ? LIMIT ?", ["u", 5],
                          {"jobs": {"job_id"}, "tasks": {"task_id"}}, "team-a")
    assert params == ["team-a", "team-a", "u", 5]
    assert text.index('"tasks" AS') < text.index('"jobs" AS') < text.index("SELECT * FROM tasks")
