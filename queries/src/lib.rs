//! IoT Hub route conditions: parsed, type-checked and evaluated column-wise over message batches.
//!
//! This crate does no I/O. [`compile`] turns one condition into a [`RouteCondition`]; [`RouteSet`]
//! compiles all routes of a hub together so that every application property, system property, body
//! path and twin path any of them reads is extracted once per batch (one JSON parse per message) and
//! shared. Evaluation then runs each condition as column-at-a-time kernels over those inputs.
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
//!   arrays and objects; `is_defined` is true for them; `SUBSTRING` out of range is `undefined`.
//!
//! The design choice: values are a small tagged enum evaluated by our own vectorised
//! kernels rather than DataFusion physical expressions, because IoT Hub's `undefined`-vs-`null`
//! three-valued logic and dynamically typed body values have no faithful DataFusion counterpart.

mod compile;
mod error;
mod eval;
mod extract;
mod lexer;
mod parser;
mod value;

pub use error::{Diagnostic, Error, Result};
pub use eval::{RouteCondition, RouteSet, RouteSetOutcome, Truth, compile};
