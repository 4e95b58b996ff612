//! End-to-end tests: the real `hubroute` binary and public crate APIs against real peers (the
//! emulator, PostgreSQL, Azurite, HTTP servers, the official Azure Python SDK, fastavro, headless
//! Chromium).
//!
//! Everything lives in this one test binary so the full dependency stack is linked once.
//! Peers that `.ci/test` provides are located through `support`; a missing peer fails the test
//! with instructions, it never skips.

mod amqp_endpoints;
mod browser;
mod chaos;
mod check;
mod crate_graph;
mod dead_letters;
mod emulator;
mod engine;
mod example;
mod fault_proxy;
mod iothub_connect;
mod logs;
mod migration;
mod operator_view;
mod parking;
mod private_postgres;
mod scale_out;
mod source;
mod storage;
mod support;
mod twins;
