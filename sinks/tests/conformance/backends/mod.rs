//! One harness per sink, each over a real backend that injects the faults of
//! [`crate::faults::Fault`], each running the contract checks in a test of its own.

pub(crate) mod amqp;
mod object_store;
mod parquet;
mod postgres;
mod sqlite;
mod storage;
pub(crate) mod webhook;
