#!/usr/bin/env python3
"""A seed-style worker written with Kazoo, following docs/protocol.md only.

Registers the ephemeral /workers/<id>, and for each task id written into it: reads
/data/<id>, computes the seed result (the words in reverse order, upper-cased), writes it into
/tasks/<id>, then clears /workers/<id> (two separate writes, as the seed did). Stops on SIGTERM.
Exits 4 when Kazoo is missing.
"""
import argparse
import queue
import signal
import sys
import threading

try:
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoNodeError
except ImportError:
    sys.stderr.write("the Kazoo library is missing: install it with `python3 -m pip install kazoo==2.11.0`\n")
    sys.exit(4)

ROOTS = ("/master", "/tasks", "/data", "/workers")


def seed(payload):
    return " ".join(word.upper() for word in reversed(payload.split()))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zk", required=True, help="host:port[,host:port...][/chroot]")
    parser.add_argument("--id", required=True, help="worker id, the name of /workers/<id>")
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    zk = KazooClient(hosts=args.zk, timeout=10.0)
    zk.start(timeout=15)
    for root in ROOTS:
        zk.ensure_path(root)
    me = f"/workers/{args.id}"
    zk.create(me, b"", ephemeral=True)
    sys.stderr.write(f"registered {me}\n")

    assignments = queue.Queue()

    def on_assignment(data, stat):
        if data:
            assignments.put((data.decode("utf-8", "replace"), stat.version))
        return not stop.is_set()

    zk.DataWatch(me, on_assignment)
    done = set()
    while not stop.is_set():
        try:
            task_id, version = assignments.get(timeout=0.2)
        except queue.Empty:
            continue
        if (task_id, version) in done:
            continue
        done.add((task_id, version))
        try:
            payload, _ = zk.get(f"/data/{task_id}")
            result = seed(payload.decode("utf-8", "replace")).encode()
            zk.set(f"/tasks/{task_id}", result)
            sys.stderr.write(f"completed {task_id}\n")
        except NoNodeError:
            sys.stderr.write(f"task {task_id} vanished\n")
        zk.set(me, b"")

    zk.stop()
    zk.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
