//! Fault injection shared between a test and the backend it controls: a backend asks
//! [`Backend::before_operation`] before each operation it performs for the sink, and the test sets
//! what the next operations do.

use std::sync::Arc;
use std::sync::Mutex;

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

/// Fault injection shared between a test and the backend it controls.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) fault: Mutex<Fault>,
    released: Notify,
}

impl Backend {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            fault: Mutex::new(Fault::None),
            released: Notify::new(),
        })
    }

    pub(crate) fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub(crate) fn release(&self) {
        self.set(Fault::None);
        self.released.notify_waiters();
    }

    /// Called by the backend before each operation: `true` means fail it.
    pub(crate) async fn before_operation(&self) -> bool {
        loop {
            let notified = self.released.notified();
            let fault = *self.fault.lock().unwrap();
            match fault {
                Fault::None => return false,
                Fault::FailNext(n) => {
                    *self.fault.lock().unwrap() = if n > 1 {
                        Fault::FailNext(n - 1)
                    } else {
                        Fault::None
                    };
                    return true;
                }
                Fault::Stall => notified.await,
            }
        }
    }
}
