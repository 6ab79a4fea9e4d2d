//! The znode layout of docs/protocol.md: seed roots plus the `/taskcluster` extensions.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub const MASTER: &str = "/master";
pub const TASKS: &str = "/tasks";
pub const DATA: &str = "/data";
pub const WORKERS: &str = "/workers";

pub const EXTENSIONS: &str = "/taskcluster";
pub const LEADER: &str = "/taskcluster/leader";
pub const STATUS: &str = "/taskcluster/status";
pub const CONFIG: &str = "/taskcluster/config";
pub const ATTEMPTS: &str = "/taskcluster/attempts";
pub const DEADLETTER: &str = "/taskcluster/deadletter";
pub const INBOX: &str = "/taskcluster/inbox";

/// Persistent znodes every participant makes sure exist, parents first.
pub const ROOTS: [&str; 8] = [MASTER, TASKS, DATA, WORKERS, EXTENSIONS, ATTEMPTS, DEADLETTER, INBOX];

/// What a shutting-down worker writes into its znode to hand back its task: not a task id
/// (a NUL-led name cannot be one), so the leader neither waits for it nor assigns to it.
pub const DRAINING: &[u8] = b"\0draining";

/// What the leader writes into a worker's znode when it revokes `task` from a worker with an
/// inbox (ours): NUL-led, so never a task id. The task goes nowhere else until the worker,
/// having stopped its run, clears the mark.
pub fn withdrawal(task: &str) -> Vec<u8> {
    [WITHDRAWN, task.as_bytes()].concat()
}

/// The task a withdrawal mark names, if `data` is one.
pub fn withdrawn_task(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data.strip_prefix(WITHDRAWN)?).ok().filter(|task| is_valid_name(task))
}

const WITHDRAWN: &[u8] = b"\0withdrawn\0";

/// ZooKeeper's default `jute.maxbuffer` is 1 MiB; a payload must leave room for the request.
pub const MAX_PAYLOAD_BYTES: usize = 1_000_000;

pub fn task(id: &str) -> String {
    format!("{TASKS}/{id}")
}

pub fn data(id: &str) -> String {
    format!("{DATA}/{id}")
}

pub fn worker(wid: &str) -> String {
    format!("{WORKERS}/{wid}")
}

pub fn attempts(id: &str) -> String {
    format!("{ATTEMPTS}/{id}")
}

pub fn deadletter(id: &str) -> String {
    format!("{DEADLETTER}/{id}")
}

/// A worker's inbox: `/taskcluster/inbox/<wid>@<session>`, created in one multi with the
/// registration of `<wid>` by session `session`, so each registration has its own.
pub fn inbox(wid: &str, session: i64) -> String {
    format!("{INBOX}/{wid}@{session:016x}")
}

/// The inbox entry that announces `task` to the worker owning inbox `dir`.
pub fn inbox_entry(dir: &str, task: &str) -> String {
    format!("{dir}/{task}")
}

/// The worker id and session an inbox is named after (None for a foreign name).
pub fn inbox_owner(name: &str) -> Option<(&str, i64)> {
    let (wid, session) = name.rsplit_once('@')?;
    let session = u64::from_str_radix(session, 16).ok()? as i64;
    is_valid_name(wid).then_some((wid, session))
}

/// The direct child name of `parent` that `path` names, if `path` is exactly one level below.
pub fn child_of<'a>(parent: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(parent)?.strip_prefix('/')?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// Whether `name` can be a znode name we create or accept as a task or worker id.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.contains('/')
        && name.chars().all(|c| !c.is_control())
}

/// Payloads up to this size also travel in the name of the task, so that our workers need not
/// read `/data/<id>` (docs/protocol.md, "Small payloads in the task's name").
pub const INLINE_PAYLOAD_MAX: usize = 32;

/// The id our client gives its `n`th task in session `session`: `t<session hex>-<n>`, followed
/// by `~<payload in unpadded base64url>` when the payload is small enough.
pub fn task_id(session: u64, n: u64, payload: &[u8]) -> String {
    if payload.len() <= INLINE_PAYLOAD_MAX {
        format!("t{session:x}-{n}~{}", URL_SAFE_NO_PAD.encode(payload))
    } else {
        format!("t{session:x}-{n}")
    }
}

/// The payload a task id of the form `t<hex>-<digits>~<base64url>` carries; None for any other
/// id (foreign clients', or ours with a large payload), whose payload is read from `/data`.
pub fn inline_payload(task: &str) -> Option<Vec<u8>> {
    let (unique, encoded) = task.split_once('~')?;
    let (session, n) = unique.strip_prefix('t')?.split_once('-')?;
    let hex = !session.is_empty() && session.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    if !hex || !digits {
        return None;
    }
    URL_SAFE_NO_PAD.decode(encoded).ok().filter(|payload| payload.len() <= INLINE_PAYLOAD_MAX)
}

/// The sequence number ZooKeeper appended to a sequential znode name (10 digits).
pub fn sequence_of(name: &str) -> Option<u64> {
    let digits = name.get(name.len().checked_sub(10)?..)?;
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Name part of our election znodes: `_c_<session hex>-latch-<sequence>` (Curator's
/// LeaderLatch shape).
pub const CONTENDER_NAME: &str = "latch-";

/// The name our election znode gets before ZooKeeper appends the sequence number.
pub fn contender_prefix(session: i64) -> String {
    format!("{MASTER}/_c_{session:016x}-{CONTENDER_NAME}")
}

/// Whether `name` under `/master` is a proposal in the election: any sequential name (the
/// seed's `n_…`, Curator's, ours), since they all take part in one recipe: the lowest
/// sequence number leads. Anything else there is ignored.
pub fn is_contender(name: &str) -> bool {
    sequence_of(name).is_some_and(|s| s <= i32::MAX as u64)
}

/// The contender that leads: the lowest sequence number among the proposals.
pub fn lowest_contender<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names.into_iter().filter(|n| is_contender(n)).filter_map(|n| sequence_of(n).map(|s| (s, n))).min().map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_of_accepts_direct_children_only() {
        assert_eq!(child_of(TASKS, "/tasks/t1"), Some("t1"));
        assert_eq!(child_of(TASKS, "/tasks"), None);
        assert_eq!(child_of(TASKS, "/tasks/"), None);
        assert_eq!(child_of(TASKS, "/tasks/a/b"), None);
        assert_eq!(child_of(TASKS, "/tasksx/a"), None);
        assert_eq!(child_of(WORKERS, "/tasks/a"), None);
    }

    #[test]
    fn sequence_numbers_parse_from_the_last_ten_digits() {
        assert_eq!(sequence_of("_c_abc-latch-0000000042"), Some(42));
        assert_eq!(sequence_of("n_0000000001"), Some(1));
        assert_eq!(sequence_of("latch-42"), None);
        assert_eq!(sequence_of("x"), None);
        assert_eq!(sequence_of("abcdefghij"), None);
    }

    #[test]
    fn lowest_sequence_leads_regardless_of_prefix() {
        let names = ["_c_b-latch-0000000007", "_c_a-latch-0000000009", "garbage", "n_0000000003"];
        assert_eq!(lowest_contender(names), Some("n_0000000003"), "a seed master's proposal counts");
        assert_eq!(lowest_contender(["_c_b-latch-0000000007", "_c_a-latch-0000000009"]), Some("_c_b-latch-0000000007"));
        assert_eq!(lowest_contender(["garbage"]), None);
    }

    #[test]
    fn inbox_names_carry_worker_and_session() {
        let dir = inbox("w@1", -2);
        assert_eq!(dir, "/taskcluster/inbox/w@1@fffffffffffffffe");
        let name = child_of(INBOX, &dir).unwrap();
        assert_eq!(inbox_owner(name), Some(("w@1", -2)));
        assert_eq!(inbox_owner(&inbox("w", 0x1234)[INBOX.len() + 1..]), Some(("w", 0x1234)));
        assert_eq!(inbox_owner("w1"), None);
        assert_eq!(inbox_owner("w1@xyz"), None);
        assert_eq!(inbox_owner("@00000000000000ff"), None);
        assert_eq!(inbox_entry(&dir, "t1"), "/taskcluster/inbox/w@1@fffffffffffffffe/t1");
    }

    #[test]
    fn names_with_slashes_or_controls_are_rejected() {
        assert!(is_valid_name("task-1"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(".."));
        assert!(!is_valid_name("a\nb"));
    }

    #[test]
    fn a_withdrawal_mark_names_its_task_and_is_no_task_id() {
        let mark = withdrawal("t1-2~YQ");
        assert_eq!(withdrawn_task(&mark), Some("t1-2~YQ"));
        assert!(!is_valid_name(&String::from_utf8_lossy(&mark)));
        assert_eq!(withdrawn_task(b"t1"), None);
        assert_eq!(withdrawn_task(DRAINING), None);
        assert_eq!(withdrawn_task(&withdrawal("")), None);
    }

    #[test]
    fn small_payloads_travel_in_the_task_id() {
        let id = task_id(0x1a2b, 7, b"bench-0-7");
        assert_eq!(id, "t1a2b-7~YmVuY2gtMC03");
        assert_eq!(inline_payload(&id).as_deref(), Some(&b"bench-0-7"[..]));
        assert!(is_valid_name(&id));
        let binary = [0u8, 0xff, b'/', b'~', b'\n'];
        assert_eq!(inline_payload(&task_id(1, 0, &binary)).as_deref(), Some(&binary[..]));
        assert_eq!(inline_payload(&task_id(1, 0, b"")).as_deref(), Some(&b""[..]));
        let largest = [b'x'; INLINE_PAYLOAD_MAX];
        assert_eq!(inline_payload(&task_id(1, 0, &largest)).as_deref(), Some(&largest[..]));
        assert!(is_valid_name(&task_id(u64::MAX, u64::MAX, &largest)));
    }

    #[test]
    fn other_ids_carry_no_payload() {
        let large = [b'x'; INLINE_PAYLOAD_MAX + 1];
        assert_eq!(task_id(1, 3, &large), "t1-3");
        assert_eq!(inline_payload("t1-3"), None);
        // Foreign ids, even with a tilde, and malformed encodings are read from /data.
        for id in ["task-5", "task-5~Zm9v", "t-1~Zm9v", "tzz-1~Zm9v", "t1-~Zm9v", "t1-x~Zm9v", "t1-1~Zm9v!", "t1-1~Z"] {
            assert_eq!(inline_payload(id), None, "{id}");
        }
        let too_long = format!("t1-1~{}", URL_SAFE_NO_PAD.encode(large));
        assert_eq!(inline_payload(&too_long), None);
    }
}
