//! A loopback TCP proxy in front of one ZooKeeper server, for faults injected on command rather
//! than awaited: every connection to it is relayed to the server, and the test can reset them
//! all (RST on both sides), hold their bytes (a silent network: sockets open, nothing moves),
//! hold only the replies (a request reaches the server, its reply never comes back), hold the
//! replies after each connection's first few (the session opens, then a request's reply never
//! comes back), hold every request from the first one that carries given bytes (a chosen
//! request and all after it wait, unsent: the client is stopped at a chosen point of a
//! sequence of reads), or refuse new connections.
//!
//! Everything runs on the test's runtime: one accept task, one task per connection. Dropping
//! the proxy aborts them all, and their sockets close with them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// What the relay lets through: `up` is client to server, `down` server to client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Flow {
    up_held: bool,
    down_held: bool,
    /// `down` is held on a connection once it has passed this many chunks: the replies that
    /// open a session go through, what follows waits.
    down_held_after: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

impl Flow {
    /// Whether `direction` waits on a connection that has passed `passed` chunks that way.
    fn holds(self, direction: Direction, passed: u64) -> bool {
        match direction {
            Direction::Up => self.up_held,
            Direction::Down => self.down_held || self.down_held_after.is_some_and(|n| passed >= n),
        }
    }
}

/// A relayed connection as the proxy's commands see it.
struct Live {
    /// Tells its task to abort the connection.
    kill: oneshot::Sender<()>,
    /// Resolves (with an error) once its task has ended and both sockets are closed.
    closed: oneshot::Receiver<()>,
}

struct Shared {
    target: SocketAddr,
    flow: watch::Sender<Flow>,
    refusing: AtomicBool,
    /// Bytes whose first appearance in a request holds the requests from there on.
    trap: Mutex<Option<Vec<u8>>>,
    trapped: AtomicBool,
    accepted: AtomicU64,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
}

impl Shared {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it aborts them too.
        self.accept.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and relays to `target` (`host:port`, loopback).
    pub async fn start(target: &str) -> Proxy {
        let target: SocketAddr = target.parse().unwrap_or_else(|e| panic!("proxy target {target:?}: {e}"));
        assert!(target.ip().is_loopback(), "the proxy relays to loopback only, not {target}");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy on loopback");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            target,
            flow: watch::Sender::new(Flow::default()),
            refusing: AtomicBool::new(false),
            trap: Mutex::new(None),
            trapped: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy { addr, shared, accept }
    }

    /// `127.0.0.1:<port>`: what to put in `--zk` instead of the server.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections being relayed now.
    pub fn connections(&self) -> usize {
        self.shared.live().len()
    }

    /// Aborts every current connection with an RST to both its client and the server (SO_LINGER
    /// 0, then close), and returns once they are closed. Returns how many there were.
    pub async fn reset(&self) -> usize {
        let victims: Vec<Live> = self.shared.live().drain().map(|(_, live)| live).collect();
        let count = victims.len();
        for victim in victims {
            let _ = victim.kill.send(());
            let _ = victim.closed.await;
        }
        count
    }

    /// A silent network: no byte moves in either direction, every socket stays open.
    pub fn freeze(&self) {
        self.shared.flow.send_replace(Flow { up_held: true, down_held: true, ..Flow::default() });
    }

    /// Only replies and notifications are held: requests still reach the server (and are
    /// applied) while their replies wait, to be lost by a [`Proxy::reset`].
    pub fn hold_replies(&self) {
        self.shared.flow.send_replace(Flow { down_held: true, ..Flow::default() });
    }

    /// Every connection, current or new, passes its first `chunks` reads from the server and
    /// holds the rest: the session opens, then its first requests reach the server while their
    /// replies wait, to be lost by a [`Proxy::reset`]. Each reply of the opening is a chunk of
    /// its own, as the client waits for it before it sends more: zookeeper-client opens with
    /// two (the connect response, then the reply to a ping it sends before it calls the session
    /// connected). Connections that passed as many already hold their replies at once.
    pub fn hold_replies_after(&self, chunks: u64) {
        self.shared.flow.send_replace(Flow { down_held_after: Some(chunks), ..Flow::default() });
    }

    /// From the first chunk a client sends that contains `bytes` (a request's opcode and path,
    /// say) on, requests wait unsent, on every connection, until [`Proxy::thaw`]; replies and
    /// notifications still flow. [`Proxy::trapped`] tells when it happened.
    pub fn hold_requests_from(&self, bytes: &[u8]) {
        self.shared.trapped.store(false, Ordering::SeqCst);
        *self.shared.trap.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes.to_vec());
    }

    /// Whether a request matched [`Proxy::hold_requests_from`] and is held.
    pub fn trapped(&self) -> bool {
        self.shared.trapped.load(Ordering::SeqCst)
    }

    /// Lets bytes move again; what was held is delivered.
    pub fn thaw(&self) {
        self.shared.flow.send_replace(Flow::default());
    }

    /// While true, new connections are accepted and reset at once; current ones are untouched.
    pub fn refuse(&self, refuse: bool) {
        self.shared.refusing.store(refuse, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        // Reap the finished ones so the set stays as large as the live connections.
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = accepted else {
            // Out of descriptors or the like: try again shortly rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refusing.load(Ordering::SeqCst) {
            abort(&client);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let (kill, killed) = oneshot::channel();
        let (closing, closed) = oneshot::channel::<()>();
        shared.live().insert(id, Live { kill, closed });
        let shared = shared.clone();
        connections.spawn(async move {
            relay(client, &shared, killed).await;
            shared.live().remove(&id);
            drop(closing);
        });
    }
}

/// Relays one connection until both sides have closed it, or aborts it on `killed`.
async fn relay(mut client: TcpStream, shared: &Shared, mut killed: oneshot::Receiver<()>) {
    let server = tokio::select! {
        server = TcpStream::connect(shared.target) => server.ok(),
        _ = &mut killed => None,
    };
    let Some(mut server) = server else {
        abort(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clean = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both = async {
            tokio::try_join!(
                pump(client_read, server_write, Direction::Up, shared),
                pump(server_read, client_write, Direction::Down, shared),
            )
        };
        tokio::select! {
            done = both => done.is_ok(),
            _ = &mut killed => false,
        }
    };
    if !clean {
        abort(&client);
        abort(&server);
    }
}

/// Copies one direction while the flow lets it. Ok at end of stream (passed on as a half
/// close), Err when a side failed: the caller then aborts the whole connection.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, direction: Direction, shared: &Shared) -> Result<(), ()> {
    let mut flow = shared.flow.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    // Chunks passed so far, for a hold that starts after the first few.
    let mut passed = 0u64;
    loop {
        flow.wait_for(|f| !f.holds(direction, passed)).await.map_err(drop)?;
        let n = from.read(&mut buf).await.map_err(drop)?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        if direction == Direction::Up {
            spring_trap(shared, &buf[..n]);
        }
        // Bytes read just before a freeze wait for the thaw too.
        flow.wait_for(|f| !f.holds(direction, passed)).await.map_err(drop)?;
        to.write_all(&buf[..n]).await.map_err(drop)?;
        passed += 1;
    }
}

/// Holds the requests once a chunk carries the trap's bytes; the trap fires once.
fn spring_trap(shared: &Shared, chunk: &[u8]) {
    let mut trap = shared.trap.lock().unwrap_or_else(|e| e.into_inner());
    let fired = trap.as_ref().is_some_and(|bytes| chunk.windows(bytes.len()).any(|w| w == bytes.as_slice()));
    if fired {
        *trap = None;
        shared.flow.send_modify(|f| f.up_held = true);
        shared.trapped.store(true, Ordering::SeqCst);
    }
}

/// Closes with an RST instead of a FIN once the socket is dropped.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}
