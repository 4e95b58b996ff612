//! IoT Hub route conditions: parsed, type-checked and evaluated column-wise over message batches.
//!
//! This crate does no I/O. [`compile`] turns one condition into a [`RouteCondition`]; [`RouteSet`]
//! compiles all routes of a hub together so that every application property, system property, body
//! path and twin path any of them reads is extracted once per batch (one forward scan of each JSON
//! body) into Arrow columns. Each condition is compiled once into DataFusion physical expressions over
//! those columns, with our own scalar functions where DataFusion has none, and subexpressions shared
//! by routes are computed once per batch.
//!
//! The pipeline, file by file: `lexer.rs` → `parser.rs` (AST) → `check.rs` (type checking,
//! unique input slots) → `physical.rs` (DAG of all routes, lowered to `PhysicalExpr`s in stages,
//! and their evaluation) over the columns of `extract.rs` (body paths found by `scan.rs`), laid out
//! as `repr.rs` describes, with `udf.rs` for what DataFusion lacks and `value.rs` for value kinds
//! and per-value semantics. `route_set.rs` ties them together behind [`RouteSet`] and [`compile`].
//!
//! The language is IoT Hub's (reference §1); where cloud behaviour is unverified we follow the Edge
//! engine (`Microsoft.Azure.Devices.Routing.Core`):
//! * tokenisation is ANTLR longest-match: `temp-1` and `a+b` are names, `5-3` is a syntax error;
//! * `NOT` binds tighter than comparisons (`NOT a = b` is `(NOT a) = b`);
//! * `$name` reads an application property literally named `$name` when the message has one, else
//!   the system property; `{$name}` always reads the system property (or body/twin path);
//! * static type errors (`severity <= 2` with an application property, `'a' + 'b'`, `x = null`)
//!   reject the condition with a suggestion such as `use as_number(severity)`;
//! * values are never converted implicitly: different runtime types compare `=` false, `!=` true and
//!   ordering `undefined`; objects and arrays compare `undefined`;
//! * a missing body or twin path is `undefined` (documented cloud behaviour, reference §1.12 #13; the
//!   Edge engine returns `null` instead), an explicit JSON `null` is `null`; body keys are
//!   case-sensitive, twin keys case-insensitive;
//! * `$enqueuedTime` is an ISO-8601 UTC string with milliseconds (`2022-06-06T22:56:06.000Z`);
//! * `IS_ARRAY`, `IS_OBJECT` and `IS_PRIMITIVE` (documented for the cloud, absent in Edge) see JSON
//!   arrays and objects; `is_defined` is true for them; `SUBSTRING` out of range is `undefined`;
//! * `-0 = 0` is true, and `1 / -0` is `-Infinity`, as in .NET.
//!
//! The mapping onto SQL: `undefined` is `NULL` for statically typed values, which makes DataFusion's
//! Kleene `AND`/`OR`/`NOT` and null-propagating operators IoT Hub's; dynamically typed values keep
//! their JSON type and the `null`/`undefined` distinction in a struct column (`repr.rs`).

mod check;
mod error;
mod extract;
mod lexer;
mod parser;
mod physical;
mod repr;
mod route_set;
mod scan;
mod udf;
mod value;

pub use error::{Diagnostic, Error, Result};
pub use route_set::{RouteCondition, RouteSet, RouteSetOutcome, Truth, compile};
