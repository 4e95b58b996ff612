//! End-to-end tests: the real `hubroute` binary and public crate APIs against real peers (the
//! emulator, PostgreSQL, Azurite, HTTP servers, the official Azure Python SDK).
//!
//! Everything lives in this one test binary so the full dependency stack is linked once.
//! Peers that `.ci/test` provides are located through `support`; a missing peer fails the test
//! with instructions, it never skips.

mod amqp_endpoints;
mod crate_graph;
mod emulator;
mod engine;
mod pipeline;
mod source;
mod support;
