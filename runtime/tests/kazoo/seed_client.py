#!/usr/bin/env python3
"""A seed-style task client written with Kazoo, following docs/protocol.md only.

For each payload: create /data/<id> holding it, then /tasks/<id> empty (two separate writes,
as the seed did); wait until /tasks/<id> holds data; print the result; delete both znodes.

Prints `<id>\tok\t<result>` or `<id>\tfailed\t<message>` per task (backslash, tab and newline
escaped), exits 0 if all succeeded, 1 if any failed, 3 on timeout or ZooKeeper errors, and 4
when Kazoo is missing.
"""
import argparse
import sys
import threading
import uuid

try:
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoNodeError
except ImportError:
    sys.stderr.write("the Kazoo library is missing: install it with `python3 -m pip install kazoo==2.11.0`\n")
    sys.exit(4)

FAILURE_PREFIX = b"\0FAILED\0 "
ROOTS = ("/master", "/tasks", "/data", "/workers")


def escape(text):
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def result_watcher(task_id, results, arrived):
    """A DataWatch callback (exactly two parameters: Kazoo passes the event to a third)."""

    def on_change(data, _stat):
        if data:
            with arrived:
                results.setdefault(task_id, data)
                arrived.notify_all()
            return False  # stop watching: the result is in
        return True

    return on_change


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zk", required=True, help="host:port[,host:port...][/chroot]")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for all results")
    parser.add_argument("payloads", nargs="+")
    args = parser.parse_args()

    zk = KazooClient(hosts=args.zk, timeout=10.0)
    try:
        zk.start(timeout=15)
    except Exception as error:  # noqa: BLE001 - report any start failure the same way
        sys.stderr.write(f"cannot connect to ZooKeeper at {args.zk}: {error}\n")
        return 3
    for root in ROOTS:
        zk.ensure_path(root)

    results = {}
    arrived = threading.Condition()
    ids = []
    for payload in args.payloads:
        task_id = "kz" + uuid.uuid4().hex[:16]
        zk.create(f"/data/{task_id}", payload.encode())
        zk.create(f"/tasks/{task_id}", b"")
        ids.append(task_id)
        zk.DataWatch(f"/tasks/{task_id}", result_watcher(task_id, results, arrived))

    with arrived:
        complete = arrived.wait_for(lambda: len(results) == len(ids), timeout=args.timeout)
    if not complete:
        missing = [i for i in ids if i not in results]
        sys.stderr.write(f"timed out after {args.timeout}s waiting for {len(missing)} results: {missing}\n")
        zk.stop()
        return 3

    failed = False
    for task_id in ids:
        data = results[task_id]
        if data.startswith(FAILURE_PREFIX):
            failed = True
            message = data[len(FAILURE_PREFIX):].decode("utf-8", "replace")
            print(f"{task_id}\tfailed\t{escape(message)}", flush=True)
        else:
            print(f"{task_id}\tok\t{escape(data.decode('utf-8', 'replace'))}", flush=True)
        for path in (f"/tasks/{task_id}", f"/data/{task_id}"):
            try:
                zk.delete(path)
            except NoNodeError:
                pass
    zk.stop()
    zk.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
