//! A TCP proxy on loopback that misbehaves on command, put between one
//! client and a service (RabbitMQ, Redis, the simulator) to try flotilla on
//! a network that is slow or cut rather than dead. One proxy per client: to
//! partition one worker while the others go on, give that worker a proxy of
//! its own.
//!
//! What it can do to the connections through it:
//! - [`FaultProxy::set_link`]: latency with jitter (bytes keep their order)
//!   and a bandwidth limit, each way;
//! - [`FaultProxy::partition`] / [`FaultProxy::heal`]: nothing passes either
//!   way — no FIN, no RST, bytes held as TCP would retransmit them — and new
//!   connections are accepted but pass nothing either, until healed;
//! - [`FaultProxy::strand`]: the connections open now go silent for good
//!   (half-open: the client never hears of the other end again), while new
//!   connections pass — what a client must detect by itself;
//! - [`FaultProxy::reset`]: the connections open now are reset (RST).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How the link through the proxy behaves, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// Added to every chunk of bytes.
    pub latency: Duration,
    /// Up to this much more, at random per chunk (order is kept).
    pub jitter: Duration,
    /// At most this many bytes a second; `None`: no limit.
    pub bytes_per_second: Option<u64>,
}

/// What becomes of one connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pass,
    /// Held until healed (a partition).
    Held,
    /// Held for good (half-open).
    Stranded,
    /// Reset: both sockets closed with RST.
    Reset,
}

struct Connection {
    fate: watch::Sender<Fate>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    link: watch::Sender<Link>,
    /// What a new connection starts as: `Pass`, or `Held` while partitioned.
    new_fate: Mutex<Fate>,
    connections: Mutex<Vec<Connection>>,
    accepted: AtomicU64,
}

impl Shared {
    fn set_fates(&self, change: impl Fn(Fate) -> Fate) {
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for connection in connections.iter() {
            connection.fate.send_modify(|fate| *fate = change(*fate));
        }
    }

    fn new_fate(&self) -> Fate {
        *self.new_fate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A proxy listening on a free loopback port, forwarding to one upstream;
/// everything it runs stops when it is dropped.
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        let connections = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for connection in connections.iter() {
            for task in &connection.tasks {
                task.abort();
            }
        }
    }
}

impl FaultProxy {
    /// A proxy in front of `upstream` (e.g. `127.0.0.1:6379`), passing
    /// everything until told otherwise.
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .parse()
            .unwrap_or_else(|error| panic!("fault proxy upstream {upstream:?}: {error}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("fault proxy: no loopback port: {error}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("fault proxy: {error}"));
        let shared = Arc::new(Shared {
            upstream,
            link: watch::channel(Link::default()).0,
            new_fate: Mutex::new(Fate::Pass),
            connections: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Self {
            address,
            shared,
            accept,
        }
    }

    /// The loopback port clients connect to instead of the upstream's.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Connections accepted so far (a client that reconnects shows here).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Latency, jitter and bandwidth of every connection, now and later.
    pub fn set_link(&self, link: Link) {
        self.shared.link.send_replace(link);
    }

    /// Nothing passes, on open connections or new ones, until [`heal`].
    ///
    /// [`heal`]: FaultProxy::heal
    pub fn partition(&self) {
        self.turn(Fate::Pass, Fate::Held);
    }

    /// Ends a partition: held bytes go on, in order.
    pub fn heal(&self) {
        self.turn(Fate::Held, Fate::Pass);
    }

    /// New connections get `to`, and open ones that had `from` do too
    /// (stranded and reset ones stay as they are).
    fn turn(&self, from: Fate, to: Fate) {
        *self
            .shared
            .new_fate
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = to;
        self.shared
            .set_fates(|fate| if fate == from { to } else { fate });
    }

    /// The connections open now go silent for good, with no FIN and no
    /// RST; new connections pass.
    pub fn strand(&self) {
        self.shared.set_fates(|fate| match fate {
            Fate::Reset => Fate::Reset,
            _ => Fate::Stranded,
        });
    }

    /// The connections open now are reset (RST, both ends); new ones pass.
    pub fn reset(&self) {
        self.shared.set_fates(|_| Fate::Reset);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let Ok(server) = TcpStream::connect(shared.upstream).await else {
            reset_stream(&client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (fate, _) = watch::channel(shared.new_fate());
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let tasks = vec![
            spawn_direction(client_read, server_write, &fate, &shared),
            spawn_direction(server_read, client_write, &fate, &shared),
        ];
        let mut connections = shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Connections that ended leave their entry: a test's proxy sees a
        // few hundred at most.
        connections.push(Connection { fate, tasks });
    }
}

/// One direction of one connection: a reader that holds what it read while
/// the connection is held, and a writer that delivers each chunk when its
/// latency has passed, at the link's bandwidth.
fn spawn_direction(
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    fate: &watch::Sender<Fate>,
    shared: &Arc<Shared>,
) -> JoinHandle<()> {
    let (chunks, pending) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let reader = read_side(from, chunks, fate.subscribe(), shared.link.subscribe());
    let writer = write_side(to, pending, fate.subscribe(), shared.link.subscribe());
    tokio::spawn(async move {
        // Either side ending ends both: a reset closes both halves with RST,
        // an end of stream was handed to the writer before the reader ended.
        tokio::join!(reader, writer);
    })
}

/// Waits until the connection may pass bytes; false once it is reset.
async fn passable(fate: &mut watch::Receiver<Fate>) -> bool {
    loop {
        let now = *fate.borrow_and_update();
        match now {
            Fate::Pass => return true,
            Fate::Reset => return false,
            Fate::Held | Fate::Stranded => {
                if fate.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

async fn read_side(
    mut from: OwnedReadHalf,
    chunks: mpsc::Sender<(Instant, Vec<u8>)>,
    mut fate: watch::Receiver<Fate>,
    link: watch::Receiver<Link>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut last_due = Instant::now();
    loop {
        if !passable(&mut fate).await {
            reset_stream(from.as_ref());
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = fate.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let chunk = match read {
            Ok(0) => Vec::new(),
            Ok(read) => buffer[..read].to_vec(),
            // The peer went (reset): the other side is closed too.
            Err(_) => Vec::new(),
        };
        let Link {
            latency, jitter, ..
        } = *link.borrow();
        let jitter = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = Duration::from_nanos(fastrand::u64(0..=jitter));
        // Never before the chunk ahead of it: bytes keep their order.
        let due = (Instant::now() + latency + extra).max(last_due);
        last_due = due;
        let end = chunk.is_empty();
        if chunks.send((due, chunk)).await.is_err() || end {
            return;
        }
    }
}

async fn write_side(
    mut to: OwnedWriteHalf,
    mut pending: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut fate: watch::Receiver<Fate>,
    link: watch::Receiver<Link>,
) {
    // When the link is free again at its bandwidth.
    let mut free_at = Instant::now();
    loop {
        let next = tokio::select! {
            next = pending.recv() => next,
            changed = fate.changed() => {
                if changed.is_err() || *fate.borrow() == Fate::Reset {
                    return abort(to);
                }
                continue;
            }
        };
        let Some((due, chunk)) = next else {
            // The reader ended: at the end of its stream (sent as an empty
            // chunk, handled below), or on a reset.
            if *fate.borrow() == Fate::Reset {
                abort(to);
            }
            return;
        };
        // A chunk arrives once its latency has passed and its last byte
        // went through at the link's bandwidth.
        let rate = link.borrow().bytes_per_second.filter(|rate| *rate > 0);
        let ready = match rate {
            Some(rate) => {
                let sending = Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
                let ready = due.max(free_at) + sending;
                free_at = ready;
                ready
            }
            None => due,
        };
        tokio::time::sleep_until(ready).await;
        if !passable(&mut fate).await {
            return abort(to);
        }
        if chunk.is_empty() {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// Gives up a write half with a reset: dropped as such it would send a FIN
/// (tokio shuts a write half down on drop), so it is forgotten, and the
/// socket closes with RST once its read half goes too.
fn abort(to: OwnedWriteHalf) {
    reset_stream(to.as_ref());
    to.forget();
}

/// Closes a socket with RST instead of FIN once its last handle is dropped.
fn reset_stream(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        address
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap()
    }

    async fn echo(stream: &mut TcpStream, message: &[u8], limit: Duration) -> Option<Vec<u8>> {
        stream.write_all(message).await.ok()?;
        let mut answer = vec![0u8; message.len()];
        tokio::time::timeout(limit, stream.read_exact(&mut answer))
            .await
            .ok()?
            .ok()?;
        Some(answer)
    }

    #[tokio::test]
    async fn passes_bytes_unchanged_until_told_otherwise() {
        let proxy = FaultProxy::start(&echo_server().await).await;
        let mut stream = connect(&proxy).await;
        let message: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let answer = echo(&mut stream, &message, Duration::from_secs(10)).await;
        assert_eq!(answer.as_deref(), Some(message.as_slice()));
        assert_eq!(proxy.accepted(), 1);
    }

    #[tokio::test]
    async fn latency_delays_each_way_and_keeps_order() {
        let proxy = FaultProxy::start(&echo_server().await).await;
        proxy.set_link(Link {
            latency: Duration::from_millis(100),
            jitter: Duration::from_millis(50),
            bytes_per_second: None,
        });
        let mut stream = connect(&proxy).await;
        let started = std::time::Instant::now();
        for round in 0..5u8 {
            let message = [round; 64];
            let answer = echo(&mut stream, &message, Duration::from_secs(10)).await;
            assert_eq!(answer.as_deref(), Some(&message[..]), "round {round}");
        }
        // Five round trips of at least 2 × 100 ms.
        assert!(started.elapsed() >= Duration::from_millis(1_000));
    }

    #[tokio::test]
    async fn bandwidth_is_limited() {
        let proxy = FaultProxy::start(&echo_server().await).await;
        proxy.set_link(Link {
            bytes_per_second: Some(200_000),
            ..Link::default()
        });
        let mut stream = connect(&proxy).await;
        let started = std::time::Instant::now();
        let message = vec![7u8; 100_000];
        let answer = echo(&mut stream, &message, Duration::from_secs(20)).await;
        assert_eq!(answer.map(|answer| answer.len()), Some(100_000));
        // 100 kB at 200 kB/s, at least one way (the echo overlaps).
        assert!(started.elapsed() >= Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_partition_holds_bytes_until_healed_also_on_new_connections() {
        let proxy = FaultProxy::start(&echo_server().await).await;
        let mut open = connect(&proxy).await;
        assert!(
            echo(&mut open, b"before", Duration::from_secs(5))
                .await
                .is_some()
        );
        proxy.partition();
        assert_eq!(
            echo(&mut open, b"during", Duration::from_millis(500)).await,
            None
        );
        let mut new = connect(&proxy).await;
        assert_eq!(
            echo(&mut new, b"fresh", Duration::from_millis(500)).await,
            None
        );
        proxy.heal();
        // What was held arrives, in order, and nothing was lost.
        let mut answer = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"during");
        let mut answer = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), new.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"fresh");
    }

    #[tokio::test]
    async fn stranded_connections_go_silent_without_closing_and_new_ones_pass() {
        let proxy = FaultProxy::start(&echo_server().await).await;
        let mut old = connect(&proxy).await;
        assert!(
            echo(&mut old, b"hello", Duration::from_secs(5))
                .await
                .is_some()
        );
        proxy.strand();
        // No answer, and no end of stream or reset either: silence.
        assert!(old.write_all(b"anyone").await.is_ok());
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(700), old.read(&mut byte)).await;
        assert!(read.is_err(), "a stranded connection answered: {read:?}");
        let mut new = connect(&proxy).await;
        assert_eq!(
            echo(&mut new, b"again", Duration::from_secs(5))
                .await
                .as_deref(),
            Some(&b"again"[..])
        );
    }

    #[tokio::test]
    async fn reset_connections_see_a_reset() {
        let proxy = FaultProxy::start(&echo_server().await).await;
        let mut stream = connect(&proxy).await;
        assert!(
            echo(&mut stream, b"hello", Duration::from_secs(5))
                .await
                .is_some()
        );
        proxy.reset();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(
            read.map_err(|error| error.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }
}
