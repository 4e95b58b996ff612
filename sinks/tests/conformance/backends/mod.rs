//! One harness per sink, each over a real backend that injects the faults of
//! [`crate::faults::Fault`], each running the contract checks in a test of its own.

use std::time::Duration;

use hubroute_sinks::RetryPolicy;

pub(crate) mod amqp;
mod object_store;
mod parquet;
mod postgres;
mod sqlite;
mod storage;
pub(crate) mod webhook;

/// Retries quick enough that injected failures cost a test milliseconds.
pub(crate) fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
    }
}
