"""Store.writing_behind: the runner's writes run in order on one thread while it goes on.

Every use of the connection from another thread waits for the writes given before it, so a
read never sees a store older than the runner's own writes; a failed write is raised, once,
at the next use, naming the step that wrote it, and the writes after it are not run.
"""

from __future__ import annotations

import threading

import pytest

from datamix.store import Store, WriteFailed


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "s.duckdb"))
    s.con.execute("CREATE TABLE log (n INTEGER)")
    yield s
    s.close()


def test_writes_run_in_order_on_another_thread_and_a_read_waits_for_them(store):
    released_by_caller = threading.Event()
    threads, went_on = [], []

    def write(n):
        def go():
            threads.append(threading.current_thread())
            if n == 0:  # held until the caller has given every write: it did not wait for this one
                went_on.append(released_by_caller.wait(10))
            store.con.execute("INSERT INTO log VALUES (?)", [n])
        return go

    with store.writing_behind():
        for n in range(5):
            store.later("s", f"write {n}", write(n))
        released_by_caller.set()
        rows = store.con.execute("SELECT list(n ORDER BY rowid) FROM log").fetchone()[0]
    assert went_on == [True]
    assert rows == [0, 1, 2, 3, 4]
    assert len(threads) == 5 and all(t is not threading.current_thread() for t in threads)


def test_without_writing_behind_a_write_runs_at_once(store):
    store.later("s", "write", lambda: store.con.execute("INSERT INTO log VALUES (7)"))
    assert store.con.execute("SELECT n FROM log").fetchall() == [(7,)]


def test_a_failed_write_is_raised_once_at_the_next_use_and_the_writes_after_it_are_dropped(store):
    def fail():
        raise OSError("No space left on device")

    with store.writing_behind():
        store.later("src", "committing chunk a:0", lambda: store.con.execute("INSERT INTO log VALUES (1)"))
        store.later("src", "committing chunk a:2", fail)
        store.later("next", "starting", lambda: store.con.execute("INSERT INTO log VALUES (3)"))
        with pytest.raises(WriteFailed) as failed:
            store.con.execute("SELECT 1")
        assert failed.value.step == "src" and isinstance(failed.value.error, OSError)
        assert "step src: committing chunk a:2 failed: OSError: No space left on device" in str(failed.value)
        # raised once: the store is usable again, and what came after the failure never ran
        assert store.con.execute("SELECT list(n) FROM log").fetchone()[0] == [1]


def test_leaving_raises_a_failure_not_yet_reported(store):
    def fail():
        raise RuntimeError("disk on fire")

    with pytest.raises(WriteFailed, match="disk on fire"):
        with store.writing_behind():
            store.later("src", "finishing", fail)
    assert store.con.execute("SELECT count(*) FROM log").fetchone()[0] == 0  # and the store works after it


def test_an_exception_in_flight_is_not_replaced_by_a_failed_write_and_the_writes_before_it_run(store):
    def fail():
        raise OSError("No space left on device")

    with pytest.raises(KeyboardInterrupt):
        with store.writing_behind():
            store.later("src", "committing chunk a:0", lambda: store.con.execute("INSERT INTO log VALUES (1)"))
            store.later("src", "committing chunk a:2", fail)
            raise KeyboardInterrupt
    assert store.con.execute("SELECT list(n) FROM log").fetchone()[0] == [1]


def test_a_caller_ahead_of_the_writer_by_the_pending_limit_waits_for_it(store):
    """Chunks made faster than they commit are not all held in memory: `later` waits."""
    from datamix.store import PENDING_WRITES

    release = threading.Event()
    with store.writing_behind():
        store.later("s", "held", lambda: release.wait(10))  # the writer takes it and blocks
        for n in range(PENDING_WRITES):
            store.later("s", f"write {n}", lambda n=n: store.con.execute("INSERT INTO log VALUES (?)", [n]))
        one_more = threading.Thread(target=lambda: store.later("s", "one more", lambda: None))
        one_more.start()
        one_more.join(0.5)
        assert one_more.is_alive()  # the queue is full: it waits for the writer
        release.set()
        one_more.join(10)
        assert not one_more.is_alive()
    assert store.con.execute("SELECT count(*) FROM log").fetchone()[0] == PENDING_WRITES
