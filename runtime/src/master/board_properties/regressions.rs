//! Failures the properties found, each reduced to the calls the leader makes (or to the steps of
//! the model), kept as regression tests now that they are fixed.

use std::time::{Duration, Instant};

use super::world::{Step, World, PERIOD};
use crate::master::board::{Action, Assignment, Board, ReturnReason};

/// A free worker `w1` without an inbox (a seed-style one), holding `t1` at version 1.
fn w1_running_t1() -> Board {
    let mut board = Board::new();
    board.worker_read("w1", b"", 0, 1);
    board.set_inbox("w1", 1, None);
    board.task_created("t1");
    let a = board.plan(1).remove(0);
    board.assigned(&a, 1, 1);
    board
}

/// The worker records a failure of `t1` and clears its znode (version 2) just as the task
/// times out. The read the attempts event asked for comes back first and shows `w1` free;
/// then the revocation, guarded by version 1, is rejected. `revocation_failed` puts `t1`
/// back as assigned to `w1`, which the board knows is free: the re-read changes nothing
/// (same version), `expired` walks workers holding a task and never finds it again, and no
/// event will come. The task is lost until a rebuild.
#[test]
fn a_revocation_that_fails_after_a_read_showed_the_worker_free_loses_the_task() {
    let mut board = w1_running_t1();
    let revoke = board.expired(Duration::ZERO, Instant::now());
    assert!(matches!(&revoke[..], [Action::Resolve { reason: ReturnReason::TimedOut { version: 1, .. }, .. }]));
    assert_eq!(board.worker_read("w1", b"", 2, 1), None, "the read of the failed worker: free at version 2");
    let failed = board.revocation_failed("w1", "t1");
    // The leader reads the worker again; whatever the board makes of it, t1 must come back.
    let reread = board.worker_read("w1", b"", 2, 1);
    let resolved = [failed, reread].iter().any(|a| matches!(a, Some(Action::Resolve { task, .. }) if task == "t1"));
    let later = Instant::now() + PERIOD;
    let comes_back = resolved || !board.expired(Duration::ZERO, later).is_empty() || !board.plan(10).is_empty();
    assert!(comes_back, "t1 is {:?} on a free worker: never retried", board.task_state("t1"));
}

/// An assignment of `t1` to `w1` at version 0 is in flight when a result of `t1` is heard
/// (one that landed before the write: after a rebuild the leader may plan a task that
/// completed while it was rebuilding). The board assumes the assignment landed and the
/// worker cleared, so `w1` is free at version 2. Then the write is rejected (the client
/// collected `t1` meanwhile): `w1` is still at version 0, but the board keeps version 2.
/// The next assignment is rejected too, and every read of `w1` (version 0) looks older
/// than what the board knows and is ignored: `w1` stays unusable until it changes, which
/// an idle worker never does.
#[test]
fn a_rejected_assignment_leaves_its_worker_at_a_version_assumed_from_a_result() {
    let mut board = Board::new();
    board.worker_read("w1", b"", 0, 1);
    board.set_inbox("w1", 1, None);
    board.task_created("t1");
    let first = board.plan(1).remove(0);
    board.task_completed("t1", Instant::now());
    board.assignment_failed(&first);
    board.task_deleted("t1");
    board.task_created("t2");
    let second = board.plan(1);
    if let [a] = &second[..] {
        assert_eq!(a.version, 2, "planned at the assumed version");
        board.assignment_failed(a);
        assert_eq!(board.workers_needing_read(), vec!["w1".to_string()]);
        board.worker_read("w1", b"", 0, 1);
    }
    assert_eq!(board.counts().workers_busy, 0, "the read shows w1 free at version 0");
    assert_eq!(board.plan(1).len(), 1, "t2 goes to w1");
}

/// Free workers `w1` and `w2` (registered at zxids 1 and 2), and `t1` planned for `w1` at
/// version 0. Before the write, `w1` dies and registers again (zxid 3): the write lands on
/// the new registration, whose version starts at 0 too (the ABA the board handles when the
/// new registration's first read shows the task).
fn t1_planned_for_w1_which_registers_again() -> (Board, Assignment) {
    let mut board = Board::new();
    for (wid, created) in [("w1", 1), ("w2", 2)] {
        board.worker_read(wid, b"", 0, created);
        board.set_inbox(wid, created, None);
    }
    board.task_created("t1");
    let a = board.plan(1).remove(0);
    assert_eq!((a.worker.as_str(), a.version), ("w1", 0));
    (board, a)
}

/// The first read of the new registration to complete was taken before the write landed
/// (its inbox look delayed it past the write's reply): free at version 0, so `t1` is
/// resolved as lost. The next read shows the new registration running `t1`, but the task
/// is resolving, so nothing is learnt, and the resolve's requeue (which looks for
/// withdrawal marks only) makes it pending: it goes to `w2` while `w1` runs it.
#[test]
fn a_task_that_landed_on_a_new_registration_is_not_retried_after_an_older_read_of_it() {
    let (mut board, a) = t1_planned_for_w1_which_registers_again();
    board.assigned(&a, 1, 3);
    // Taken before the write landed; the write's reply named the registration it landed on.
    board.worker_read("w1", b"", 0, 3);
    assert_eq!(board.worker_read("w1", b"t1", 1, 3), None, "the new registration runs t1");
    board.requeue("t1");
    let again: Vec<_> = board.plan(10).into_iter().filter(|a| a.task == "t1").collect();
    assert!(again.is_empty(), "t1 runs on w1 and is planned again: {again:?}");
}

/// The listing the leader asked for before planning shows `w1` gone (served before it
/// registered again): `t1` is resolved as lost. The write's reply then says it landed,
/// but `assigned` ignores a worker the board no longer knows; the resolve requeues `t1`
/// and it goes to `w2`, while the new registration of `w1` runs it.
#[test]
fn a_task_whose_write_landed_after_its_worker_left_the_listing_is_not_retried() {
    let (mut board, a) = t1_planned_for_w1_which_registers_again();
    let died = board.worker_deleted("w1");
    assert!(matches!(died, Some(Action::Resolve { reason: ReturnReason::WorkerDied { .. }, .. })));
    board.assigned(&a, 1, 3);
    board.requeue("t1");
    let again: Vec<_> = board.plan(10).into_iter().filter(|a| a.task == "t1").collect();
    assert!(again.is_empty(), "the write landed (on w1's new registration), yet t1 is planned again: {again:?}");
}

/// A revocation of `t1` is refused without being applied (a transient error such as
/// throttling): `revocation_failed` marks `w1` stale and asks for a read. Then `w1`
/// completes `t1`; the result frees it (at version 2) but used to leave it stale, and `t2`
/// was planned for it at once. The read, served before that assignment, shows `w1` free at
/// version 2, the version the board knows: being stale, the worker took it, and the
/// assignment in flight looked returned. `t2` was retried while `w1` ran it. Now a stale
/// worker is planned only once a read has confirmed it; either way `t2` stays on `w1`.
#[test]
fn a_read_from_before_an_assignment_does_not_return_it() {
    let mut board = w1_running_t1();
    board.task_created("t2");
    assert_eq!(board.expired(Duration::ZERO, Instant::now()).len(), 1);
    let _ = board.revocation_failed("w1", "t1");
    board.task_completed("t1", Instant::now());
    let a = match board.plan(1).pop() {
        Some(a) => {
            assert_eq!(board.worker_read("w1", b"", 2, 1), None, "the read shows w1 as it was before t2");
            a
        },
        None => {
            assert_eq!(board.worker_read("w1", b"", 2, 1), None, "the read confirms w1 free");
            board.plan(1).pop().expect("t2 planned for w1 once confirmed")
        },
    };
    assert_eq!((a.task.as_str(), a.version), ("t2", 2));
    assert_eq!(board.worker_read("w1", b"", 2, 1), None, "a repeated read from before the assignment");
    board.assigned(&a, 3, 1);
    assert_eq!(board.holder_of("t2"), Some("w1"));
}

/// The leader loop's, not the board's: after a rebuild it plans before applying the events
/// that came in while it rebuilt. Here the rebuild lists `t0` as pending; meanwhile `w0`
/// completes it, the client collects it and submits a new task of the same id. The fresh
/// board plans `t0` for `w0`, and the write lands on the new `t0`. Then the events: the
/// old result makes the board assume `w0` free again, and the new `t0` is planned for
/// `w1` while `w0` runs it. (Without a new task of that id, a completed task runs again.)
#[test]
fn the_first_plan_after_a_rebuild_comes_before_the_events_received_during_it() {
    let steps = [
        Step::Register { name: 0, inbox: false },
        Step::Register { name: 1, inbox: false },
        Step::Settle,
        Step::Settle,
        Step::Settle,
        Step::Settle,
        Step::ConnectionLoss { applied: 0, failed: 0, received: 0 },
        Step::Submit { id: 0 },
        Step::Reconnect,
        Step::Reconnect,
        Step::Plan { batch: 1 },
        Step::ConnectionLoss { applied: 1, failed: 0, received: 0 },
        Step::Reconnect,
        Step::Complete { name: 0 },
        Step::Collect { id: 0 },
        Step::Submit { id: 0 },
        Step::Reconnect,
        Step::Plan { batch: 1 },
        Step::Settle,
    ];
    let mut world = World::new();
    for step in &steps {
        world.step(step);
        if let Err(broken) = world.check_safety() {
            panic!("after {step:?}: {broken}");
        }
    }
}
