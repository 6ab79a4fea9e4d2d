//! Chaos soak: while our clients and seed-style Kazoo clients stream tasks, masters and workers
//! are SIGKILLed, SIGTERMed, SIGSTOPped, cut off from ZooKeeper (a silent network) and have
//! their connections reset, and servers of a three-server ensemble are killed and paused, one
//! at a time (rarely two, for a brief loss of quorum), following a plan drawn from a seeded
//! RNG. Killed and stopped processes are restarted under their own names. Once every fault is
//! undone, every client must have every answer, right and exactly once; no result may have been
//! written twice; no task may have run on two live workers at once; nothing of a collected task
//! may be left behind.
//!
//! `SOAK_FAULTS` faults (default 20); `SOAK_SEED` replays a plan (the seed is printed first).
//! The same seed gives the same faults in the same order, with the same targets and durations;
//! what the processes do meanwhile depends on timing.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use support::chaos::{logged_tasks, ResultWrites, Run, RunEnd, RunJournal, Stops};
use support::{
    assert_exactly_one_ok_result_each, assert_tree_drained, eventually_async, now_ns, seed_result, seed_results,
    wait_single_leader, Inspector, MasterOpts, Proc, Proxy, ResultLine, TestCluster, WorkerOpts, ZkCluster, LONG,
};

const MASTERS: [&str; 3] = ["m1", "m2", "m3"];
/// Workers and the seconds each spends per task: three fast, one close to the task timeout
/// (revoked when it starts late), one always over it (every run revoked).
const WORKERS: [(&str, &str); 5] = [("w1", "0.05"), ("w2", "0.05"), ("w3", "0.05"), ("w4", "2.9"), ("w5", "3.5")];
const TASK_TIMEOUT: &str = "3s";
/// Enough that no task runs out of attempts: a dead letter here means one was lost on the way.
const MAX_ATTEMPTS: u32 = 20;
/// Our clients and Kazoo clients running at once while faults are injected.
const OUR_CLIENTS: usize = 2;
const SEED_CLIENTS: usize = 1;
/// How long a planned fault may wait for its target to be back (restarted, serving).
const TARGET_WAIT: Duration = Duration::from_secs(120);
/// How long a SIGTERMed process may take to exit (its grace period is 2 s).
const STOP_WAIT: Duration = Duration::from_secs(60);
/// How long the clients may take, after the last fault is undone, to get their last answers.
const DRAIN_WAIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Master,
    Worker,
}

/// What is done to a master or worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProcessFault {
    /// SIGKILL, restarted after the hold.
    Kill,
    /// SIGTERM, restarted the hold after it exits.
    Term,
    /// SIGSTOP for the hold, then SIGCONT.
    Pause,
    /// Its network to every server goes silent for the hold (sockets open, nothing moves).
    Cut,
    /// Its connections are reset (RST both ways), once.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerFault {
    /// SIGKILL, restarted after the hold.
    Kill,
    /// SIGSTOP for the hold.
    Pause,
    /// Two servers SIGSTOPped for the hold: no quorum.
    QuorumPause,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Process(Role, ProcessFault),
    Server(ServerFault),
}

impl Fault {
    const WEIGHTS: [(Fault, u32); 13] = [
        (Fault::Process(Role::Master, ProcessFault::Kill), 3),
        (Fault::Process(Role::Master, ProcessFault::Term), 2),
        (Fault::Process(Role::Master, ProcessFault::Pause), 3),
        (Fault::Process(Role::Master, ProcessFault::Cut), 2),
        (Fault::Process(Role::Master, ProcessFault::Reset), 2),
        (Fault::Process(Role::Worker, ProcessFault::Kill), 3),
        (Fault::Process(Role::Worker, ProcessFault::Term), 3),
        (Fault::Process(Role::Worker, ProcessFault::Pause), 3),
        (Fault::Process(Role::Worker, ProcessFault::Cut), 2),
        (Fault::Process(Role::Worker, ProcessFault::Reset), 2),
        (Fault::Server(ServerFault::Kill), 3),
        (Fault::Server(ServerFault::Pause), 3),
        (Fault::Server(ServerFault::QuorumPause), 1),
    ];

    fn name(self) -> &'static str {
        use ProcessFault as P;
        match self {
            Fault::Process(Role::Master, P::Kill) => "master_kill",
            Fault::Process(Role::Master, P::Term) => "master_term",
            Fault::Process(Role::Master, P::Pause) => "master_pause",
            Fault::Process(Role::Master, P::Cut) => "master_cut",
            Fault::Process(Role::Master, P::Reset) => "master_reset",
            Fault::Process(Role::Worker, P::Kill) => "worker_kill",
            Fault::Process(Role::Worker, P::Term) => "worker_term",
            Fault::Process(Role::Worker, P::Pause) => "worker_pause",
            Fault::Process(Role::Worker, P::Cut) => "worker_cut",
            Fault::Process(Role::Worker, P::Reset) => "worker_reset",
            Fault::Server(ServerFault::Kill) => "server_kill",
            Fault::Server(ServerFault::Pause) => "server_pause",
            Fault::Server(ServerFault::QuorumPause) => "quorum_pause",
        }
    }
}

/// One fault of the plan: what, on whom, for how long, and the pause before the next one.
#[derive(Clone, Debug)]
struct Planned {
    fault: Fault,
    /// Index among the masters, the workers or the servers.
    target: usize,
    /// The second server of a loss of quorum.
    other: usize,
    hold: Duration,
    gap: Duration,
}

fn plan(rng: &mut StdRng, faults: usize) -> Vec<Planned> {
    let total: u32 = Fault::WEIGHTS.iter().map(|(_, w)| w).sum();
    (0..faults)
        .map(|_| {
            let mut pick = rng.random_range(0..total);
            let mut fault = Fault::WEIGHTS[0].0;
            for (candidate, weight) in Fault::WEIGHTS {
                if pick < weight {
                    fault = candidate;
                    break;
                }
                pick -= weight;
            }
            let targets = match fault {
                Fault::Process(Role::Master, _) => MASTERS.len(),
                Fault::Process(Role::Worker, _) => WORKERS.len(),
                Fault::Server(_) => 3,
            };
            let target = rng.random_range(0..targets);
            let other = (target + rng.random_range(1..3)) % 3;
            let millis = match fault {
                // Up to 1.5 session timeouts: some outlive the session, some do not.
                Fault::Process(_, ProcessFault::Pause | ProcessFault::Cut) | Fault::Server(ServerFault::Pause) => {
                    rng.random_range(500..6_000)
                },
                Fault::Process(_, _) => rng.random_range(200..3_000),
                Fault::Server(ServerFault::Kill) => rng.random_range(1_000..5_000),
                // Shorter than the session timeout: the sessions survive the election.
                Fault::Server(ServerFault::QuorumPause) => rng.random_range(1_000..2_500),
            };
            let gap = Duration::from_millis(rng.random_range(300..2_500));
            Planned { fault, target, other, hold: Duration::from_millis(millis), gap }
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum State {
    Up,
    Paused {
        until: Instant,
    },
    Cut {
        until: Instant,
    },
    /// SIGKILLed, or exited after a SIGTERM: restarted at that time.
    Down {
        restart_at: Instant,
    },
    /// SIGTERM sent; restarted `hold` after it exits.
    Stopping {
        since: Instant,
        hold: Duration,
    },
}

/// A master or worker under a fixed `--id`, through its incarnations (one process each), and
/// the proxies (one per server) through which every incarnation reaches ZooKeeper.
struct Service {
    role: Role,
    id: &'static str,
    delay: &'static str,
    incarnation: u32,
    proc: Proc,
    state: State,
    proxies: Vec<Proxy>,
}

impl Service {
    /// The incarnation as the run journal names it.
    fn incarnation_name(&self) -> String {
        format!("{}.{}", self.id, self.incarnation)
    }
}

#[derive(Clone, Copy, Debug)]
enum ServerState {
    Up,
    Paused { until: Instant },
    Down { restart_at: Instant },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientKind {
    Ours,
    Seed,
}

struct Client {
    kind: ClientKind,
    proc: Proc,
    payloads: Vec<String>,
}

/// The running system and what has been done to it.
struct Soak<'a> {
    tc: &'a TestCluster,
    zk: &'a ZkCluster,
    journal: &'a RunJournal,
    started: Instant,
    services: Vec<Service>,
    servers: Vec<ServerState>,
    /// Processes of earlier incarnations, kept for their output (and the panic check on drop).
    retired: Vec<Proc>,
    /// Worker incarnation to the time it was SIGKILLed (journal clock).
    deaths: HashMap<String, u128>,
    /// Worker incarnation to the intervals it spent SIGSTOPped (journal clock).
    pauses: HashMap<String, Vec<(u128, u128)>>,
    paused_since: HashMap<String, u128>,
    /// Process name to the worker incarnation it is.
    incarnation_of: HashMap<String, String>,
    faults: BTreeMap<&'static str, u32>,
    /// Exit statuses of SIGTERMed processes.
    stop_exits: Vec<String>,
    clients: Vec<Client>,
    finished: Vec<Client>,
    clients_started: usize,
    /// Our clients that exited at start because ZooKeeper did not answer (nothing submitted).
    refused_at_start: usize,
}

impl Soak<'_> {
    fn log(&self, what: &str) {
        eprintln!("[soak +{:7.2}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// `--zk` through `proxies`: their addresses plus the test's chroot.
    fn zk_via(&self, proxies: &[Proxy]) -> String {
        let hosts: Vec<String> = proxies.iter().map(Proxy::addr).collect();
        format!("{}{}", hosts.join(","), self.tc.chroot)
    }

    /// Starts an incarnation of a master or worker, reaching ZooKeeper through `proxies`.
    fn spawn(&mut self, role: Role, id: &str, delay: &str, incarnation: u32, proxies: &[Proxy]) -> Proc {
        let zk = self.zk_via(proxies);
        match role {
            Role::Master => self.tc.master_at(&zk, id, &master_opts()),
            Role::Worker => {
                let mut opts = WorkerOpts::exec(self.journal.exec_command(), delay);
                opts.grace_period = "2s".into();
                opts.env.push(("SOAK_INCARNATION".into(), format!("{id}.{incarnation}")));
                let proc = self.tc.worker_at(&zk, id, &opts);
                self.incarnation_of.insert(proc.name.clone(), format!("{id}.{incarnation}"));
                proc
            },
        }
    }

    async fn start_services(&mut self) {
        let masters = MASTERS.iter().map(|id| (Role::Master, *id, ""));
        let workers = WORKERS.iter().map(|(id, delay)| (Role::Worker, *id, *delay));
        for (role, id, delay) in masters.chain(workers) {
            let mut proxies = Vec::new();
            for node in &self.zk.nodes {
                proxies.push(Proxy::start(&node.address()).await);
            }
            let proc = self.spawn(role, id, delay, 0, &proxies);
            self.services.push(Service { role, id, delay, incarnation: 0, proc, state: State::Up, proxies });
        }
    }

    fn service_index(&self, role: Role, target: usize) -> usize {
        let id = match role {
            Role::Master => MASTERS[target],
            Role::Worker => WORKERS[target].0,
        };
        self.services.iter().position(|s| s.id == id).expect("every planned target is a service")
    }

    fn faulted(&self, role: Role) -> usize {
        self.services.iter().filter(|s| s.role == role && !matches!(s.state, State::Up)).count()
    }

    /// Whether every server runs and serves: the condition for a server fault, so that at most
    /// one is down at a time (two only in a planned loss of quorum).
    fn servers_healthy(&self) -> bool {
        self.servers.iter().all(|s| matches!(s, ServerState::Up))
            && self.zk.nodes.iter().all(|n| matches!(n.mode().as_deref(), Some("leader" | "follower")))
    }

    /// Injects `p` if its target is ready for it; false: try again shortly.
    async fn try_inject(&mut self, p: &Planned) -> bool {
        let now = Instant::now();
        let what = match p.fault {
            Fault::Process(role, fault) => {
                let i = self.service_index(role, p.target);
                // One master always leads or can; two workers always run.
                let limit = if role == Role::Master { MASTERS.len() - 1 } else { WORKERS.len() - 2 };
                if !matches!(self.services[i].state, State::Up) || self.faulted(role) >= limit {
                    return false;
                }
                let name = self.services[i].incarnation_name();
                let service = &mut self.services[i];
                match fault {
                    ProcessFault::Kill => {
                        service.proc.kill();
                        if role == Role::Worker {
                            let at = service.proc.killed_at_ns.expect("a killed process has its kill time");
                            self.deaths.insert(name.clone(), at);
                        }
                        service.state = State::Down { restart_at: now + p.hold };
                    },
                    ProcessFault::Term => {
                        service.proc.terminate();
                        service.state = State::Stopping { since: now, hold: p.hold };
                    },
                    ProcessFault::Pause => {
                        service.proc.pause();
                        service.state = State::Paused { until: now + p.hold };
                        self.paused_since.insert(name.clone(), now_ns());
                    },
                    ProcessFault::Cut => {
                        service.proxies.iter().for_each(Proxy::freeze);
                        service.state = State::Cut { until: now + p.hold };
                    },
                    ProcessFault::Reset => {
                        let mut reset = 0;
                        for proxy in &service.proxies {
                            reset += proxy.reset().await;
                        }
                        let what = format!("{} {name}: {reset} connections reset", p.fault.name());
                        *self.faults.entry(p.fault.name()).or_default() += 1;
                        self.log(&what);
                        return true;
                    },
                }
                format!("{} {name} for {:?}", p.fault.name(), p.hold)
            },
            Fault::Server(fault) => {
                if !self.servers_healthy() {
                    return false;
                }
                let (first, second) = (&self.zk.nodes[p.target], &self.zk.nodes[p.other]);
                match fault {
                    ServerFault::Kill => {
                        first.kill();
                        self.servers[p.target] = ServerState::Down { restart_at: now + p.hold };
                        format!("{} server {} for {:?}", p.fault.name(), first.myid, p.hold)
                    },
                    ServerFault::Pause => {
                        first.pause();
                        self.servers[p.target] = ServerState::Paused { until: now + p.hold };
                        format!("{} server {} for {:?}", p.fault.name(), first.myid, p.hold)
                    },
                    ServerFault::QuorumPause => {
                        first.pause();
                        second.pause();
                        self.servers[p.target] = ServerState::Paused { until: now + p.hold };
                        self.servers[p.other] = ServerState::Paused { until: now + p.hold };
                        format!("{} servers {} and {} for {:?}", p.fault.name(), first.myid, second.myid, p.hold)
                    },
                }
            },
        };
        *self.faults.entry(p.fault.name()).or_default() += 1;
        self.log(&what);
        true
    }

    /// Undoes what is due (or everything, `all`); fails on a process that exited by itself or
    /// does not stop after a SIGTERM.
    fn undo_due(&mut self, all: bool) {
        let now = Instant::now();
        for i in 0..self.services.len() {
            let name = self.services[i].incarnation_name();
            match self.services[i].state {
                State::Up => {
                    let service = &mut self.services[i];
                    assert!(service.proc.is_running(), "{name} exited by itself\n{}", service.proc.describe());
                },
                State::Paused { until } if all || now >= until => {
                    self.services[i].proc.resume();
                    self.services[i].state = State::Up;
                    if let Some(since) = self.paused_since.remove(&name) {
                        self.pauses.entry(name.clone()).or_default().push((since, now_ns()));
                    }
                    self.log(&format!("resumed {name}"));
                },
                State::Cut { until } if all || now >= until => {
                    self.services[i].proxies.iter().for_each(Proxy::thaw);
                    self.services[i].state = State::Up;
                    self.log(&format!("reconnected {name}"));
                },
                State::Down { restart_at } if all || now >= restart_at => {
                    let proxies = std::mem::take(&mut self.services[i].proxies);
                    let service = &self.services[i];
                    let (role, id, delay, incarnation) =
                        (service.role, service.id, service.delay, service.incarnation + 1);
                    let proc = self.spawn(role, id, delay, incarnation, &proxies);
                    self.services[i].proxies = proxies;
                    self.services[i].incarnation = incarnation;
                    let old = std::mem::replace(&mut self.services[i].proc, proc);
                    self.retired.push(old);
                    self.services[i].state = State::Up;
                    self.log(&format!("restarted {}", self.services[i].incarnation_name()));
                },
                State::Stopping { since, hold } => {
                    let service = &mut self.services[i];
                    if let Some(status) = service.proc.try_status() {
                        service.state = State::Down { restart_at: if all { now } else { now + hold } };
                        self.stop_exits.push(format!("{name}: {status}"));
                        self.log(&format!("{name} exited after SIGTERM: {status}"));
                    } else {
                        assert!(
                            now.duration_since(since) < STOP_WAIT,
                            "{name} did not exit within {STOP_WAIT:?} of SIGTERM\n{}",
                            service.proc.describe()
                        );
                    }
                },
                _ => {},
            }
        }
        for j in 0..self.servers.len() {
            match self.servers[j] {
                ServerState::Paused { until } if all || now >= until => {
                    self.zk.nodes[j].resume();
                    self.servers[j] = ServerState::Up;
                    self.log(&format!("resumed server {}", self.zk.nodes[j].myid));
                },
                ServerState::Down { restart_at } if all || now >= restart_at => {
                    self.zk.nodes[j].restart();
                    self.servers[j] = ServerState::Up;
                    self.log(&format!("restarted server {}", self.zk.nodes[j].myid));
                },
                _ => {},
            }
        }
    }

    fn all_undone(&self) -> bool {
        self.services.iter().all(|s| matches!(s.state, State::Up))
            && self.servers.iter().all(|s| matches!(s, ServerState::Up))
    }

    /// Starts clients while fewer than wanted run. Our clients keep from 2 to 16 tasks in
    /// flight: with a short queue a retried task starts again soon, which is when a revoked run
    /// still going would show.
    fn launch_clients(&mut self, rng: &mut StdRng) {
        let running = |clients: &[Client], kind| clients.iter().filter(|c| c.kind == kind).count();
        if running(&self.clients, ClientKind::Ours) < OUR_CLIENTS {
            let n = self.clients_started;
            let payloads: Vec<String> = (0..rng.random_range(5..=25)).map(|i| payload("ours", n, i)).collect();
            let inflight = [2, 4, 16][rng.random_range(0..3)].to_string();
            let mut args = vec!["--wait", "--inflight", inflight.as_str()];
            args.extend(payloads.iter().map(String::as_str));
            let proc = self.tc.submit(&format!("client-{n}"), &args);
            self.clients.push(Client { kind: ClientKind::Ours, proc, payloads });
            self.clients_started += 1;
        }
        if running(&self.clients, ClientKind::Seed) < SEED_CLIENTS {
            let n = self.clients_started;
            let payloads: Vec<String> = (0..rng.random_range(3..=8)).map(|i| payload("kazoo", n, i)).collect();
            let proc = kazoo_client(self.tc, &format!("kazoo-client-{n}"), &payloads);
            self.clients.push(Client { kind: ClientKind::Seed, proc, payloads });
            self.clients_started += 1;
        }
    }

    /// Checks the clients that exited: each must have exited 0 with one right answer per
    /// task. A Kazoo client may also have died of an error of its own unretried writes.
    fn reap_clients(&mut self) {
        let mut i = 0;
        while i < self.clients.len() {
            if self.clients[i].proc.is_running() {
                i += 1;
                continue;
            }
            let mut client = self.clients.swap_remove(i);
            let code = client.proc.try_status().and_then(|s| s.code());
            if client.kind == ClientKind::Ours && code == Some(3) && refused_at_start(&client.proc) {
                let error = client.proc.stderr().trim().to_string();
                self.log(&format!("{} refused to start, nothing submitted: {error}", client.proc.name));
                self.refused_at_start += 1;
            } else if client.kind == ClientKind::Seed && code != Some(0) && seed_client_gave_up(&client.proc) {
                let stderr = client.proc.stderr();
                let error = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
                self.log(&format!(
                    "{} gave up on a ZooKeeper error of its own (no retries): {error}",
                    client.proc.name
                ));
            } else {
                assert_eq!(code, Some(0), "{} should exit 0\n{}", client.proc.name, client.proc.describe());
                let lines = ResultLine::parse_all(&client.proc.stdout());
                assert_exactly_one_ok_result_each(&client.proc.name, &lines, &seed_results(&client.payloads));
            }
            client.proc.assert_no_panic();
            self.finished.push(client);
        }
    }

    /// One loop step of the fault phase: undo what is due, check and replace clients.
    fn step(&mut self, rng: &mut StdRng) {
        self.undo_due(false);
        self.reap_clients();
        self.launch_clients(rng);
    }

    fn all_procs(&self) -> impl Iterator<Item = &Proc> {
        self.services.iter().map(|s| &s.proc).chain(self.retired.iter())
    }

    /// What ended runs outside the journal: kills, and the abandonments workers logged.
    fn stops(&self) -> Stops {
        let mut abandoned: HashMap<(String, String), Vec<u128>> = HashMap::new();
        for proc in self.all_procs() {
            let Some(incarnation) = self.incarnation_of.get(&proc.name) else { continue };
            for (task, at) in logged_tasks(&proc.stderr(), "assignment withdrawn while running; abandoned") {
                abandoned.entry((incarnation.clone(), task)).or_default().push(at);
            }
        }
        Stops { killed: self.deaths.clone(), abandoned }
    }

    /// Task to the moments a leader put it back in the queue (revocation, worker gone, ...).
    fn requeues(&self) -> HashMap<String, Vec<u128>> {
        let mut requeues: HashMap<String, Vec<u128>> = HashMap::new();
        for proc in self.all_procs().filter(|p| p.name.starts_with("master-")) {
            let log = proc.stderr();
            for (task, at) in
                logged_tasks(&log, "task back in the queue").into_iter().chain(logged_tasks(&log, REVOKED))
            {
                requeues.entry(task).or_default().push(at);
            }
        }
        requeues
    }

    /// Whether the earlier run's worker was SIGSTOPped at some moment between the last time a
    /// leader put the task back in the queue before the later run started, and that start.
    /// Stopped, it could hear of nothing, and its command (a process group of its own, which
    /// SIGSTOP does not reach) ran on: no worker can stop what it cannot hear of.
    fn holder_was_stopped(&self, first: &Run, second: &Run, requeues: &HashMap<String, Vec<u128>>) -> bool {
        let taken = requeues
            .get(&first.task)
            .and_then(|times| times.iter().copied().filter(|t| *t >= first.start && *t <= second.start).max())
            .unwrap_or(first.start);
        self.pauses
            .get(&first.incarnation)
            .is_some_and(|pauses| pauses.iter().any(|(from, to)| *from <= second.start && *to >= taken))
    }

    /// Counts the lines of masters' logs (every incarnation) that contain all of `needles`.
    fn master_log_lines(&self, needles: &[&str]) -> usize {
        self.all_procs()
            .filter(|p| p.name.starts_with("master-"))
            .map(|p| p.stderr().lines().filter(|l| needles.iter().all(|n| l.contains(n))).count())
            .sum()
    }

    fn describe_all(&self) -> String {
        self.services.iter().map(|s| s.proc.describe()).collect::<Vec<_>>().join("\n")
    }
}

/// What a leader logs when it revokes a task from one of our workers: the task is retried once
/// that worker has let go (no later than its session's end).
const REVOKED: &str = "revoked; retried once the worker has let go";

fn master_opts() -> MasterOpts {
    MasterOpts { max_attempts: MAX_ATTEMPTS, task_timeout: TASK_TIMEOUT.into(), ..MasterOpts::default() }
}

/// Distinct payloads of several words; every fourth is too long to travel in the task's name,
/// so its worker reads `/data`.
fn payload(kind: &str, client: usize, i: usize) -> String {
    if i % 4 == 3 {
        format!("{kind} client{client} task{i} carries words past the inline limit")
    } else {
        format!("{kind} c{client} t{i}")
    }
}

fn kazoo_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kazoo/seed_client.py")
}

fn require_kazoo() {
    support::python::require_kazoo("the soak's seed-style clients");
}

fn kazoo_client(tc: &TestCluster, name: &str, payloads: &[String]) -> Proc {
    let mut args = vec![
        "-u".to_string(),
        kazoo_script().display().to_string(),
        "--zk".into(),
        tc.zk(),
        "--timeout".into(),
        "900".into(),
    ];
    args.extend_from_slice(payloads);
    Proc::spawn_program(&support::python::python(), tc.dir(), name, &args, None, None, &[])
}

/// The seed client has no retries: a ZooKeeper error on one of its own writes (a server killed
/// or paused under it) ends it with a Kazoo traceback, or it cannot connect at all. That is the
/// client's weakness, not the system's; waiting for results in vain is not among these.
fn seed_client_gave_up(proc: &Proc) -> bool {
    let stderr = proc.stderr();
    (stderr.contains("Traceback") && stderr.contains("kazoo.exceptions."))
        || stderr.contains("cannot connect to ZooKeeper")
}

/// Our client fails fast, exit 3, when no server answers within its session timeout while it
/// opens its session (a paused ZooKeeper leader stalls the whole ensemble until its followers
/// give up on it): before it submitted anything, so no answer is owed (tasks of its would be
/// left in the tree, which the drained tree rules out). A connection lost after the session
/// is open is another matter: the client must ride it out like any other.
fn refused_at_start(proc: &Proc) -> bool {
    let stderr = proc.stderr();
    proc.stdout().is_empty() && stderr.starts_with("error: cannot reach ZooKeeper at ") && stderr.lines().count() == 1
}

/// Collects what Kazoo clients that gave up left: every such task must still get the right
/// result (the seed computation of its payload), then it is deleted as its client would have.
/// Returns how many there were.
async fn collect_for_seed_clients_that_gave_up(zk: &Inspector) -> usize {
    let mut collected = 0;
    for id in zk.children("/tasks").await.into_iter().filter(|id| id.starts_with("kz")) {
        let path = format!("/tasks/{id}");
        let what = format!("a result for {path}, left by a Kazoo client that gave up");
        let result = eventually_async(&what, LONG, || async { zk.data(&path).await.filter(|r| !r.is_empty()) }).await;
        let payload = zk.data(&format!("/data/{id}")).await.unwrap_or_default();
        let payload = String::from_utf8_lossy(&payload).into_owned();
        assert_eq!(String::from_utf8_lossy(&result), seed_result(&payload), "the result of {path} ({payload:?})");
        let _ = zk.client.delete(&path, None).await;
        let _ = zk.client.delete(&format!("/data/{id}"), None).await;
        collected += 1;
    }
    // A payload whose task was never created (the client died between its two writes).
    for id in zk.children("/data").await.into_iter().filter(|id| id.starts_with("kz")) {
        if !zk.exists(&format!("/tasks/{id}")).await {
            let _ = zk.client.delete(&format!("/data/{id}"), None).await;
        }
    }
    collected
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.trim().parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

/// Two runs of one task at once, the earlier start first.
type Overlap = (Run, Run);

fn describe_pairs(pairs: &[Overlap], requeues: &HashMap<String, Vec<u128>>) -> String {
    pairs
        .iter()
        .map(|(a, b)| {
            let taken = requeues.get(&a.task).cloned().unwrap_or_default();
            format!("{a:?}\n  and {b:?}\n  back in the queue at {taken:?}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_loses_nothing_and_runs_nothing_twice() {
    require_kazoo();
    let faults = env_number("SOAK_FAULTS").unwrap_or(20) as usize;
    let seed = env_number("SOAK_SEED").unwrap_or_else(|| (now_ns() % 1_000_000_007) as u64);
    eprintln!("soak: seed {seed}, {faults} faults (replay the plan with SOAK_SEED={seed})");
    let mut fault_rng = StdRng::seed_from_u64(seed);
    let mut client_rng = StdRng::seed_from_u64(seed ^ 0x5eed_c11e);
    let planned = plan(&mut fault_rng, faults);

    let zk = tokio::task::spawn_blocking(|| ZkCluster::ensemble(3)).await.expect("start the ensemble");
    let tc = TestCluster::on(&zk, "soak").await;
    let journal = RunJournal::new(tc.dir());
    let writes = ResultWrites::start(&tc.zk()).await;
    let mut soak = Soak {
        tc: &tc,
        zk: &zk,
        journal: &journal,
        started: Instant::now(),
        services: Vec::new(),
        servers: vec![ServerState::Up; zk.nodes.len()],
        retired: Vec::new(),
        deaths: HashMap::new(),
        pauses: HashMap::new(),
        paused_since: HashMap::new(),
        incarnation_of: HashMap::new(),
        faults: BTreeMap::new(),
        stop_exits: Vec::new(),
        clients: Vec::new(),
        finished: Vec::new(),
        clients_started: 0,
        refused_at_start: 0,
    };
    soak.start_services().await;
    let masters: Vec<&Proc> = soak.services.iter().filter(|s| s.role == Role::Master).map(|s| &s.proc).collect();
    wait_single_leader(&masters, LONG).await;

    // The faults, one after another as planned; clients come and go meanwhile.
    for (n, p) in planned.iter().enumerate() {
        let wait_until = Instant::now() + TARGET_WAIT;
        loop {
            soak.step(&mut client_rng);
            if soak.try_inject(p).await {
                break;
            }
            assert!(
                Instant::now() < wait_until,
                "fault {n} ({p:?}) found its target not back within {TARGET_WAIT:?}\n{}\n{}",
                soak.describe_all(),
                zk.log_tails(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let next = Instant::now() + p.gap;
        while Instant::now() < next {
            soak.step(&mut client_rng);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Every fault undone: servers up, paused and cut off processes back, stopped ones restarted.
    soak.log("all faults injected; undoing the rest");
    let undo_until = Instant::now() + STOP_WAIT;
    while !soak.all_undone() {
        soak.undo_due(true);
        soak.reap_clients();
        assert!(Instant::now() < undo_until, "faults not undone within {STOP_WAIT:?}\n{}", soak.describe_all());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_until = Instant::now() + DRAIN_WAIT;
    while !soak.clients.is_empty() {
        soak.undo_due(false);
        soak.reap_clients();
        if Instant::now() >= drain_until {
            let zkv = tc.inspector().await;
            let pending = zkv.children("/tasks").await;
            let workers = zkv.children("/workers").await;
            let waiting: Vec<String> = soak.clients.iter().map(|c| c.proc.describe()).collect();
            panic!(
                "clients still waiting {DRAIN_WAIT:?} after the last fault was undone: {pending:?} in /tasks, workers {workers:?}\n{}\n{}",
                waiting.join("\n"),
                soak.describe_all()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    soak.log("every client exited");

    // A leader, and nothing of a collected task left.
    let masters: Vec<&Proc> = soak.services.iter().filter(|s| s.role == Role::Master).map(|s| &s.proc).collect();
    wait_single_leader(&masters, LONG).await;
    let inspector = tc.inspector().await;
    let gave_up = soak
        .finished
        .iter()
        .filter(|c| c.kind == ClientKind::Seed && c.proc.stdout_lines().len() != c.payloads.len())
        .count();
    let left_by_seed_clients = if gave_up > 0 { collect_for_seed_clients_that_gave_up(&inspector).await } else { 0 };
    assert_tree_drained(&tc).await;

    // The runs: a worker stopped while the leader took its task back cannot stop its command
    // (see `holder_was_stopped`); those overlaps are counted apart, every other one fails.
    // Commands still going (a revoked run that outlived its task) end within their delay.
    let settle_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < settle_until && journal.runs(&soak.stops()).iter().any(|r| r.end.is_none()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stops = soak.stops();
    let runs = journal.runs(&stops);
    let requeues = soak.requeues();
    let (stopped_holder, concurrent): (Vec<Overlap>, Vec<Overlap>) =
        journal.concurrent_runs(&stops).into_iter().partition(|(a, b)| soak.holder_was_stopped(a, b, &requeues));
    let counts = writes.counts();
    let twice: Vec<(&String, &u32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let dead_letters = soak.master_log_lines(&["task dead-lettered"]);

    // The figures first, so that a failing run has them too.
    let ours: Vec<&Client> = soak.finished.iter().filter(|c| c.kind == ClientKind::Ours).collect();
    let seeds: Vec<&Client> = soak.finished.iter().filter(|c| c.kind == ClientKind::Seed).collect();
    // Every answered client got one line per task (checked as each exited).
    let tasks_of = |clients: &[&Client]| clients.iter().map(|c| c.proc.stdout_lines().len()).sum::<usize>();
    let results: usize = soak.finished.iter().map(|c| c.proc.stdout_lines().len()).sum();
    let ended = |how| runs.iter().filter(|r| r.how == how).count();
    let summary = serde_json::json!({
        "seed": seed,
        "faults": faults,
        "faults_by_kind": soak.faults,
        "clients": {
            "ours": ours.len(),
            "ours_refused_at_start": soak.refused_at_start,
            "seed": seeds.len(),
            "seed_gave_up": gave_up,
        },
        "tasks": { "ours": tasks_of(&ours), "seed": tasks_of(&seeds), "seed_of_clients_that_gave_up": left_by_seed_clients },
        "results": results,
        "lost": 0,
        "runs": {
            "total": runs.len(),
            "finished": ended(RunEnd::Finished),
            "abandoned": ended(RunEnd::Abandoned),
            "worker_killed": ended(RunEnd::WorkerKilled),
            "open": ended(RunEnd::Open),
        },
        "open_runs": runs.iter().filter(|r| r.how == RunEnd::Open).map(|r| format!("{} on {}", r.task, r.incarnation)).collect::<Vec<_>>(),
        "concurrent_runs": concurrent.len(),
        "concurrent_runs_of_a_stopped_holder": stopped_holder.len(),
        "revocations": soak.master_log_lines(&["back in the queue", "TimedOut"]) + soak.master_log_lines(&[REVOKED]),
        "dead_letters": dead_letters,
        "result_writes_seen": { "tasks": counts.len(), "more_than_once": twice.len() },
        "worker_incarnations_killed": soak.deaths.len(),
        "sigterm_exits": soak.stop_exits,
        "duration_s": (soak.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("soak summary: {summary}");
    for (a, b) in &stopped_holder {
        soak.log(&format!("overlap while the first worker was stopped: {a:?}\n  and {b:?}"));
    }

    assert!(twice.is_empty(), "results written more than once: {twice:?}");
    assert!(
        concurrent.is_empty(),
        "{} pairs of runs of one task on two live workers at once (kills {:?}, pauses {:?}):\n{}",
        concurrent.len(),
        soak.deaths,
        soak.pauses,
        describe_pairs(&concurrent, &requeues)
    );
    assert_eq!(dead_letters, 0, "with {MAX_ATTEMPTS} attempts no task may run out of them");
}

/// Waits for a worker's run of some task to start in the run journal.
async fn wait_run_start(journal: &RunJournal, worker: &str) -> Run {
    let what = format!("{worker} to start a run");
    support::eventually(&what, LONG, || journal.runs(&Stops::default()).into_iter().find(|r| r.worker == worker)).await
}

/// Found by the soak, reduced: the holder of a task is cut off from ZooKeeper (a silent
/// network, shorter than its session) while its command runs, and the leader revokes the task
/// at its timeout. The task must not run elsewhere until the holder has let go: the holder
/// hears of the revocation only when its network is back (or stops on its own first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_zookeeper_does_not_run_alongside_the_retry() {
    let tc = TestCluster::new("soak-cut-holder").await;
    let journal = RunJournal::new(tc.dir());
    let proxy = Proxy::start(&tc.hosts).await;
    let opts = MasterOpts { task_timeout: "2s".into(), max_attempts: 5, ..MasterOpts::default() };
    let master = tc.master_with("m1", &opts);
    wait_single_leader(&[&master], LONG).await;
    let mut holder = tc.worker_at(&tc.zk_via(&proxy), "holder", &WorkerOpts::exec(journal.exec_command(), "6"));
    support::wait_ready(&mut holder).await;
    let mut client = tc.submit_wait("client", &["cut off holder".to_string()]);
    wait_run_start(&journal, "holder").await;
    support::settle(Duration::from_millis(500)).await;
    proxy.freeze();
    let mut other = tc.worker_with("other", &WorkerOpts::exec(journal.exec_command(), "0.5"));
    support::wait_ready(&mut other).await;
    // Thawed before the holder's session (4 s) can expire: it is a live worker throughout.
    support::settle(Duration::from_secs(3)).await;
    proxy.thaw();
    support::assert_client_succeeded(&mut client, &["cut off holder".to_string()]).await;
    support::eventually("the holder's run to end", LONG, || {
        journal.runs(&Stops::default()).iter().all(|r| r.end.is_some()).then_some(())
    })
    .await;
    let concurrent = journal.concurrent_runs(&Stops::default());
    assert!(concurrent.is_empty(), "the task ran on two live workers at once: {concurrent:#?}");
}

/// The holder of a running task is cut off from ZooKeeper for longer than its session: the
/// server expires the session, and the leader, seeing the registration gone, hands the task to
/// another worker. The holder cannot hear of any of it, so it must have stopped the command on
/// its own before its session could expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_past_its_session_stops_before_the_task_runs_elsewhere() {
    let tc = TestCluster::new("soak-cut-expired").await;
    let journal = RunJournal::new(tc.dir());
    let proxy = Proxy::start(&tc.hosts).await;
    let opts = MasterOpts { max_attempts: 5, ..MasterOpts::default() };
    let master = tc.master_with("m1", &opts);
    wait_single_leader(&[&master], LONG).await;
    let mut holder = tc.worker_at(&tc.zk_via(&proxy), "holder", &WorkerOpts::exec(journal.exec_command(), "8"));
    support::wait_ready(&mut holder).await;
    let mut client = tc.submit_wait("client", &["cut off for good".to_string()]);
    wait_run_start(&journal, "holder").await;
    proxy.freeze();
    let mut other = tc.worker_with("other", &WorkerOpts::exec(journal.exec_command(), "0.5"));
    support::wait_ready(&mut other).await;
    // The holder's 4 s session expires while it is cut off; the retry runs on the other worker.
    support::assert_client_succeeded(&mut client, &["cut off for good".to_string()]).await;
    proxy.thaw();
    support::eventually("the holder's run to end", LONG, || {
        journal.runs(&Stops::default()).iter().all(|r| r.end.is_some()).then_some(())
    })
    .await;
    let concurrent = journal.concurrent_runs(&Stops::default());
    assert!(concurrent.is_empty(), "the task ran on two live workers at once: {concurrent:#?}");
}

/// Found by the soak, reduced: a worker told to stop (SIGTERM) finishes its current task
/// within its grace period, and meanwhile the leader revokes that task at its timeout. The
/// stopping worker still listens for the withdrawal: it stops the command at once, and the
/// task runs elsewhere only after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_holder_abandons_a_task_revoked_in_its_grace_period() {
    let tc = TestCluster::new("soak-grace-holder").await;
    let journal = RunJournal::new(tc.dir());
    let opts = MasterOpts { task_timeout: "2s".into(), max_attempts: 5, ..MasterOpts::default() };
    let master = tc.master_with("m1", &opts);
    wait_single_leader(&[&master], LONG).await;
    let mut stopping = WorkerOpts::exec(journal.exec_command(), "6");
    stopping.grace_period = "5s".into();
    let mut holder = tc.worker_with("holder", &stopping);
    support::wait_ready(&mut holder).await;
    let mut client = tc.submit_wait("client", &["stopping holder".to_string()]);
    wait_run_start(&journal, "holder").await;
    support::settle(Duration::from_millis(500)).await;
    holder.terminate();
    let mut other = tc.worker_with("other", &WorkerOpts::exec(journal.exec_command(), "0.5"));
    support::wait_ready(&mut other).await;
    support::assert_client_succeeded(&mut client, &["stopping holder".to_string()]).await;
    holder.wait_exit(LONG).await;
    support::eventually("the holder's run to end", LONG, || {
        journal.runs(&Stops::default()).iter().all(|r| r.end.is_some()).then_some(())
    })
    .await;
    let concurrent = journal.concurrent_runs(&Stops::default());
    assert!(concurrent.is_empty(), "the task ran on two live workers at once: {concurrent:#?}");
    // Let go when revoked, not held until the grace period ran out.
    let log = holder.stderr();
    assert!(
        log.contains("assignment withdrawn while running; abandoned"),
        "the stopping holder kept its revoked task until the end of its grace period:\n{log}"
    );
}
