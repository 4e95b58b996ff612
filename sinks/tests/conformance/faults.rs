//! Fault injection shared between a test and the backend it controls. Most backends ask
//! [`Backend::before_operation`] before each operation they perform for the sink; one that cannot
//! see the sink's operations (SQLite's lock holder) enforces each fault itself when it is set and
//! reports the failures it caused with [`Backend::failed_one`]. Either way the backend counts the
//! failures it injected, so a check can tell that the faults reached the sink.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What the backend does with the next operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer normally.
    None,
    /// Fail this many operations with a retryable error, then answer normally.
    FailNext(usize),
    /// Do not answer until [`Backend::release`].
    Stall,
}

/// Puts a newly set fault in force before [`Backend::set`] returns.
type Enforce = Box<dyn Fn(Fault) + Send + Sync>;

/// Fault injection shared between a test and the backend it controls.
pub(crate) struct Backend {
    fault: Mutex<Fault>,
    released: Notify,
    /// Operations failed so far by [`Fault::FailNext`].
    injected: AtomicUsize,
    enforce: Option<Enforce>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("fault", &self.fault())
            .field("injected", &self.injected())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// A backend that asks [`Backend::before_operation`] before each operation.
    pub(crate) fn new() -> Arc<Self> {
        Self::with(None)
    }

    /// A backend that enforces each fault itself: `enforce` is called with every fault set, and
    /// returns once it is in force.
    pub(crate) fn enforced_by(enforce: impl Fn(Fault) + Send + Sync + 'static) -> Arc<Self> {
        Self::with(Some(Box::new(enforce)))
    }

    fn with(enforce: Option<Enforce>) -> Arc<Self> {
        Arc::new(Self {
            fault: Mutex::new(Fault::None),
            released: Notify::new(),
            injected: AtomicUsize::new(0),
            enforce,
        })
    }

    pub(crate) fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
        if let Some(enforce) = &self.enforce {
            enforce(fault);
        }
    }

    pub(crate) fn release(&self) {
        self.set(Fault::None);
        self.released.notify_waiters();
    }

    /// The fault in force.
    pub(crate) fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }

    /// How many operations [`Fault::FailNext`] failed so far.
    pub(crate) fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    /// Counts one failed operation against [`Fault::FailNext`]; `false` (and nothing counted)
    /// when no failure was due.
    pub(crate) fn failed_one(&self) -> bool {
        let mut fault = self.fault.lock().unwrap();
        let Fault::FailNext(n) = *fault else {
            return false;
        };
        *fault = if n > 1 {
            Fault::FailNext(n - 1)
        } else {
            Fault::None
        };
        self.injected.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Called by the backend before each operation: `true` means fail it.
    pub(crate) async fn before_operation(&self) -> bool {
        loop {
            let notified = self.released.notified();
            match self.fault() {
                Fault::None => return false,
                Fault::FailNext(_) => {
                    if self.failed_one() {
                        return true;
                    }
                }
                Fault::Stall => notified.await,
            }
        }
    }
}
