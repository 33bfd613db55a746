//! The in-memory backend of RabbitMQ, for `flotilla demo` and tests: the same
//! topology (work queues with a delivery limit and dead-lettering, the reports
//! queue, delay queues emptied by the same delay pumps as on RabbitMQ), manual acks,
//! prefetch, and redelivery of whatever a closed connection held unacked.
//! `tests/conformance.rs` runs the same behaviours on both.
//!
//! One difference, on the safe side: a delivery dropped without being settled
//! goes back to its queue at once, where RabbitMQ waits for its channel to close.
//!
//! A hub is one "server"; `memory://<name>` URLs share the hub of that name.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use protocol::job::Priority;
use protocol::names::{DELAY_STEPS_SECONDS, Names};
use tokio::sync::Notify;

use crate::BrokerError;
use crate::topology::DELIVERY_LIMIT;

/// Hubs by name, for `memory://<name>` URLs.
static HUBS: LazyLock<Mutex<HashMap<String, Hub>>> = LazyLock::new(Default::default);

/// The hub named `name`, created on first use.
pub fn hub(name: &str) -> Hub {
    let mut hubs = HUBS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    hubs.entry(name.to_string()).or_default().clone()
}

/// One in-memory broker. Cheap to clone; clones share the queues.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Default)]
struct HubInner {
    state: Mutex<State>,
    /// Woken on every change a waiting consumer may care about (a message
    /// ready, a settlement freeing prefetch room, a close).
    changed: Notify,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    /// (exchange, routing key) → queue; the default exchange routes by queue name.
    bindings: HashMap<(String, String), String>,
    unacked: HashMap<u64, Unacked>,
    /// Unsettled deliveries per consumer, against its prefetch.
    held: HashMap<u64, usize>,
    /// Consumers by id: their queue, and whether they still take messages
    /// (not cancelled, connection open), as RabbitMQ counts a queue's consumers.
    consumers: HashMap<u64, ConsumerEntry>,
}

struct ConsumerEntry {
    queue: String,
    cancelled: Arc<AtomicBool>,
    connection_closed: Arc<AtomicBool>,
}

struct Queue {
    ready: VecDeque<Message>,
    /// Returns after which a message is dead-lettered instead of requeued.
    delivery_limit: Option<u32>,
    dead_letter_queue: Option<String>,
}

impl Queue {
    fn new() -> Self {
        Self {
            ready: VecDeque::new(),
            delivery_limit: None,
            dead_letter_queue: None,
        }
    }
}

#[derive(Clone)]
struct Message {
    payload: Arc<Vec<u8>>,
    retries: u32,
    due_ms: Option<u64>,
    /// Deliveries that came back unacked (RabbitMQ's `x-delivery-count`).
    returned: u32,
}

struct Unacked {
    queue: String,
    message: Message,
    connection: u64,
    consumer: u64,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update completes under the lock, so a poisoned lock is still sound.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn changed(&self) {
        self.inner.changed.notify_waiters();
    }

    /// Whether `names`' topology was declared (its work and reports queues
    /// are there), as `topology::verify` checks on RabbitMQ.
    pub(crate) fn has_topology(&self, names: &Names) -> bool {
        let state = self.lock();
        crate::topology::queue_names(names)
            .iter()
            .all(|queue| state.queues.contains_key(queue))
    }

    /// Declares `names`' topology, as `topology::declare` does on RabbitMQ.
    pub(crate) fn declare(&self, names: &Names) {
        let mut state = self.lock();
        let dead_letter = names.dead_letter_queue();
        state
            .queues
            .entry(dead_letter.clone())
            .or_insert_with(Queue::new);
        let work_queue = || Queue {
            delivery_limit: u32::try_from(DELIVERY_LIMIT).ok(),
            dead_letter_queue: Some(dead_letter.clone()),
            ..Queue::new()
        };
        for priority in [Priority::Bulk, Priority::Urgent] {
            let queue = names.work_queue(priority);
            state.queues.entry(queue.clone()).or_insert_with(work_queue);
            state.bindings.insert(
                (names.jobs_exchange(), priority.as_str().to_string()),
                queue.clone(),
            );
            for step in DELAY_STEPS_SECONDS {
                state
                    .queues
                    .entry(names.delay_queue_of_step(step, priority))
                    .or_insert_with(Queue::new);
            }
        }
        state
            .queues
            .entry(names.reports_queue())
            .or_insert_with(work_queue);
        state
            .queues
            .entry(names.reports_delay_queue())
            .or_insert_with(Queue::new);
    }

    pub(crate) fn delete(&self, names: &Names) {
        let mut state = self.lock();
        for queue in crate::topology::queue_names(names) {
            state.queues.remove(&queue);
        }
        state
            .bindings
            .retain(|(exchange, _), _| exchange != &names.jobs_exchange());
        drop(state);
        self.changed();
    }

    /// Puts a message on a queue.
    fn enqueue(&self, state: &mut State, queue_name: &str, message: Message) {
        // Deleted meanwhile: RabbitMQ drops messages routed nowhere after the fact too.
        if let Some(queue) = state.queues.get_mut(queue_name) {
            queue.ready.push_back(message);
        }
    }

    /// A delivery came back unacked: requeue it, or dead-letter it past the limit.
    fn return_message(&self, state: &mut State, unacked: Unacked) {
        let Unacked {
            queue: queue_name,
            mut message,
            ..
        } = unacked;
        message.returned = message.returned.saturating_add(1);
        let Some(queue) = state.queues.get_mut(&queue_name) else {
            return;
        };
        match (queue.delivery_limit, queue.dead_letter_queue.clone()) {
            (Some(limit), Some(dead_letter)) if message.returned > limit => {
                self.enqueue(state, &dead_letter, message);
            }
            _ => queue.ready.push_front(message),
        }
    }

    fn forget_unacked(state: &mut State, tag: u64) -> Option<Unacked> {
        let unacked = state.unacked.remove(&tag)?;
        if let Some(held) = state.held.get_mut(&unacked.consumer) {
            *held = held.saturating_sub(1);
        }
        Some(unacked)
    }
}

/// One "connection" to a hub.
#[derive(Clone)]
pub(crate) struct Connection {
    hub: Hub,
    id: u64,
    closed: Arc<AtomicBool>,
}

impl Connection {
    pub(crate) fn open(hub: Hub) -> Self {
        Self {
            id: hub.next_id(),
            hub,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    fn ensure_open(&self) -> Result<(), BrokerError> {
        if self.is_open() {
            Ok(())
        } else {
            Err(BrokerError::Closed)
        }
    }

    pub(crate) fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: Vec<u8>,
        headers: crate::publisher::Headers,
    ) -> Result<(), BrokerError> {
        self.ensure_open()?;
        let mut state = self.hub.lock();
        let queue = if exchange.is_empty() {
            Some(routing_key.to_string())
        } else {
            state
                .bindings
                .get(&(exchange.to_string(), routing_key.to_string()))
                .cloned()
        };
        let Some(queue) = queue.filter(|queue| state.queues.contains_key(queue)) else {
            return Err(BrokerError::Unroutable(format!(
                "exchange {exchange:?}, routing key {routing_key:?}"
            )));
        };
        let message = Message {
            payload: Arc::new(payload),
            retries: headers.retries,
            due_ms: headers.due_ms,
            returned: 0,
        };
        self.hub.enqueue(&mut state, &queue, message);
        drop(state);
        self.hub.changed();
        Ok(())
    }

    pub(crate) fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        self.ensure_open()?;
        let id = self.hub.next_id();
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut state = self.hub.lock();
        if !state.queues.contains_key(queue) {
            return Err(BrokerError::Unroutable(format!("no queue {queue:?}")));
        }
        state.consumers.insert(
            id,
            ConsumerEntry {
                queue: queue.to_string(),
                cancelled: cancelled.clone(),
                connection_closed: self.closed.clone(),
            },
        );
        drop(state);
        Ok(Consumer {
            connection: self.clone(),
            queue: queue.to_string(),
            id,
            prefetch: usize::from(prefetch.max(1)),
            cancelled,
        })
    }

    /// Ready messages and live consumers of `queue`, as a passive declare
    /// answers them on RabbitMQ.
    pub(crate) fn depth(&self, queue: &str) -> Result<(u32, u32), BrokerError> {
        self.ensure_open()?;
        let state = self.hub.lock();
        let ready = state
            .queues
            .get(queue)
            .ok_or_else(|| BrokerError::Unroutable(format!("no queue {queue:?}")))?
            .ready
            .len();
        let consumers = state
            .consumers
            .values()
            .filter(|consumer| {
                consumer.queue == queue
                    && !consumer.cancelled.load(Ordering::Acquire)
                    && !consumer.connection_closed.load(Ordering::Acquire)
            })
            .count();
        Ok((
            u32::try_from(ready).unwrap_or(u32::MAX),
            u32::try_from(consumers).unwrap_or(u32::MAX),
        ))
    }

    pub(crate) fn ready_count(&self, queue: &str) -> Result<u32, BrokerError> {
        self.ensure_open()?;
        let state = self.hub.lock();
        let queue = state
            .queues
            .get(queue)
            .ok_or_else(|| BrokerError::Unroutable(format!("no queue {queue:?}")))?;
        Ok(u32::try_from(queue.ready.len()).unwrap_or(u32::MAX))
    }

    pub(crate) fn delete_topology(&self, names: &Names) {
        self.hub.delete(names);
    }

    /// Closes the connection: everything it held unacked goes back to its queue.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut state = self.hub.lock();
        let tags: Vec<u64> = state
            .unacked
            .iter()
            .filter(|(_, unacked)| unacked.connection == self.id)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in tags {
            if let Some(unacked) = Hub::forget_unacked(&mut state, tag) {
                self.hub.return_message(&mut state, unacked);
            }
        }
        drop(state);
        self.hub.changed();
    }
}

pub(crate) struct Consumer {
    connection: Connection,
    queue: String,
    id: u64,
    prefetch: usize,
    cancelled: Arc<AtomicBool>,
}

impl Consumer {
    /// The next delivery once one is ready and the prefetch has room; `None`
    /// once cancelled or closed.
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        let hub = self.connection.hub.clone();
        loop {
            let changed = hub.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.connection.is_open() || self.cancelled.load(Ordering::Acquire) {
                return None;
            }
            if let Some(delivery) = self.take() {
                return Some(delivery);
            }
            changed.await;
        }
    }

    fn take(&self) -> Option<Delivery> {
        let hub = &self.connection.hub;
        let mut state = hub.lock();
        if state.held.get(&self.id).copied().unwrap_or(0) >= self.prefetch {
            return None;
        }
        let message = state.queues.get_mut(&self.queue)?.ready.pop_front()?;
        let tag = hub.next_id();
        *state.held.entry(self.id).or_insert(0) += 1;
        state.unacked.insert(
            tag,
            Unacked {
                queue: self.queue.clone(),
                message: message.clone(),
                connection: self.connection.id,
                consumer: self.id,
            },
        );
        Some(Delivery {
            hub: hub.clone(),
            tag,
            payload: message.payload,
            retries: message.retries,
            due_ms: message.due_ms,
            returned: message.returned,
            settled: false,
        })
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.connection.hub.changed();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.connection.hub.lock().consumers.remove(&self.id);
    }
}

#[derive(Debug)]
pub(crate) struct Delivery {
    hub: Hub,
    tag: u64,
    pub(crate) payload: Arc<Vec<u8>>,
    pub(crate) retries: u32,
    pub(crate) due_ms: Option<u64>,
    pub(crate) returned: u32,
    settled: bool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

/// How a delivery is settled.
enum Settle {
    Ack,
    Requeue,
    DeadLetter,
}

impl Delivery {
    fn settle(&mut self, how: Settle) -> Result<(), BrokerError> {
        self.settled = true;
        let mut state = self.hub.lock();
        // Unknown: its connection closed and it went back to the queue already.
        let unacked = Hub::forget_unacked(&mut state, self.tag).ok_or(BrokerError::Closed)?;
        match how {
            Settle::Ack => {}
            Settle::Requeue => self.hub.return_message(&mut state, unacked),
            Settle::DeadLetter => {
                let dead_letter = state
                    .queues
                    .get(&unacked.queue)
                    .and_then(|queue| queue.dead_letter_queue.clone());
                if let Some(dead_letter) = dead_letter {
                    self.hub.enqueue(&mut state, &dead_letter, unacked.message);
                }
            }
        }
        drop(state);
        self.hub.changed();
        Ok(())
    }

    pub(crate) fn ack(mut self) -> Result<(), BrokerError> {
        self.settle(Settle::Ack)
    }

    pub(crate) fn requeue(mut self) -> Result<(), BrokerError> {
        self.settle(Settle::Requeue)
    }

    pub(crate) fn dead_letter(mut self) -> Result<(), BrokerError> {
        self.settle(Settle::DeadLetter)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            // Already requeued if its connection closed; either way nothing to report.
            let _ = self.settle(Settle::Requeue);
        }
    }
}
