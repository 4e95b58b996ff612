//! The public face of the crate: compiled conditions, and what evaluating them over a batch yields.
//!
//! A [`RouteSet`] holds many conditions over one set of [`UniqueInputs`]: per batch it parses each
//! referenced body/twin once and extracts every referenced input once into Arrow columns, then
//! evaluates the conditions as DataFusion physical expressions over them (`physical.rs`), with the
//! subexpressions that several routes share (`$body.status = 'alarm'`, `as_number(severity)`)
//! computed once per batch. A [`RouteCondition`] is a set of one; single-message evaluation builds
//! a one-row batch and runs the very same code, so `route test` and the engine can never disagree.

use arrow::array::BooleanArray;
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::record_batch::RecordBatch;
use hubroute_message::{Message, MessageBatchBuilder, MessageColumns};

use crate::check::{Node, UniqueInputs, check};
use crate::error::{Error, Result};
use crate::extract::{extract, parse_documents, slot_repr};
use crate::parser::parse;
use crate::physical::{Dag, PhysicalPlan};
use crate::repr;

/// The outcome of one condition for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Truth {
    /// The condition holds: the message is routed.
    True,
    /// The condition does not hold (including non-boolean results such as a string).
    False,
    /// The condition evaluated to `undefined` or `null`: not routed, and IoT Hub logs it.
    Undefined,
}

impl Truth {
    /// `true`, `false` or `undefined`, as `route test` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "true",
            Self::False => "false",
            Self::Undefined => "undefined",
        }
    }
}

impl std::fmt::Display for Truth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-condition results of [`RouteSet::evaluate`], index-aligned with the compiled conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSetOutcome {
    /// One mask per condition, without nulls: `true` only where the condition is True.
    pub matched: Vec<BooleanArray>,
    /// Per condition: how many rows evaluated to `undefined`/`null` (IoT Hub logs these).
    pub undefined: Vec<usize>,
    /// Per condition, per row: valid where the condition was defined, null where it was
    /// `undefined`/`null` (so callers can count undefined results over a subset of rows).
    pub defined: Vec<NullBuffer>,
}

/// Many compiled conditions sharing input extraction and common subexpressions.
#[derive(Debug)]
pub struct RouteSet {
    inputs: UniqueInputs,
    physical: PhysicalPlan,
}

/// Per route, per row: whether the condition is true, and whether it is defined (not `undefined`).
type Verdicts = Vec<(BooleanBuffer, NullBuffer)>;

impl RouteSet {
    /// Compiles many conditions at once; index-aligned with the input.
    pub fn compile<'a>(conditions: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut inputs = UniqueInputs::default();
        let mut nodes = Vec::new();
        for (index, condition) in conditions.into_iter().enumerate() {
            let node = compile_into(condition, &mut inputs).map_err(|source| Error::Route {
                index,
                source: Box::new(source),
            })?;
            nodes.push(node);
        }
        Self::new(inputs, &nodes)
    }

    fn new(inputs: UniqueInputs, conditions: &[Option<Node>]) -> Result<Self> {
        let mut dag = Dag::default();
        let roots: Vec<Option<usize>> = conditions
            .iter()
            .map(|node| node.as_ref().map(|n| dag.intern(n)))
            .collect();
        let layouts: Vec<_> = (0..inputs.slots.len())
            .map(|slot| slot_repr(&inputs, slot))
            .collect();
        let physical = PhysicalPlan::new(&dag, &layouts, &roots)?;
        Ok(Self { inputs, physical })
    }

    /// Number of conditions.
    pub fn len(&self) -> usize {
        self.physical.route_count()
    }

    /// Whether the set has no condition.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evaluates every condition over a message batch.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<RouteSetOutcome> {
        let verdicts = self.verdicts(batch)?;
        let mut outcome = RouteSetOutcome {
            matched: Vec::with_capacity(verdicts.len()),
            undefined: Vec::with_capacity(verdicts.len()),
            defined: Vec::with_capacity(verdicts.len()),
        };
        for (matched, defined) in verdicts {
            outcome.undefined.push(defined.null_count());
            outcome.matched.push(BooleanArray::new(matched, None));
            outcome.defined.push(defined);
        }
        Ok(outcome)
    }

    /// Evaluates every condition over a batch and reports each row's [`Truth`], per condition.
    pub fn truths(&self, batch: &RecordBatch) -> Result<Vec<Vec<Truth>>> {
        Ok(self
            .verdicts(batch)?
            .into_iter()
            .map(|(matched, defined)| {
                matched
                    .iter()
                    .zip(defined.iter())
                    .map(|(matched, defined)| match (matched, defined) {
                        (true, _) => Truth::True,
                        (false, true) => Truth::False,
                        (false, false) => Truth::Undefined,
                    })
                    .collect()
            })
            .collect())
    }

    fn verdicts(&self, batch: &RecordBatch) -> Result<Verdicts> {
        let columns = MessageColumns::try_new(batch)?;
        let rows = columns.len();
        let documents = parse_documents(&columns, &self.inputs);
        let inputs = extract(&columns, &documents, &self.inputs);
        let values = self.physical.evaluate(inputs, rows)?;
        values
            .iter()
            .map(|value| match value {
                Some(value) => Ok(repr::verdicts(value, rows)?),
                None => Ok((BooleanBuffer::new_set(rows), NullBuffer::new_valid(rows))),
            })
            .collect()
    }
}

fn compile_into(condition: &str, inputs: &mut UniqueInputs) -> Result<Option<Node>> {
    parse(condition)?
        .map(|expr| check(condition, &expr, inputs))
        .transpose()
}

/// One compiled condition.
#[derive(Debug)]
pub struct RouteCondition {
    set: RouteSet,
}

/// Compiles one condition. An empty condition is always true.
///
/// Errors render as `line L, column C: message`, the offending line with a caret, and a suggestion.
pub fn compile(condition: &str) -> Result<RouteCondition> {
    let mut inputs = UniqueInputs::default();
    let node = compile_into(condition, &mut inputs)?;
    Ok(RouteCondition {
        set: RouteSet::new(inputs, &[node])?,
    })
}

impl RouteCondition {
    /// The condition's [`Truth`] for every row of a message batch.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<Truth>> {
        Ok(self.set.truths(batch)?.pop().unwrap_or_default())
    }

    /// The condition's [`Truth`] for one message (a one-row batch through the batch evaluator).
    pub fn evaluate_message(&self, message: &Message) -> Result<Truth> {
        let batch = MessageBatchBuilder::batch_of(std::slice::from_ref(message))?;
        Ok(self
            .evaluate(&batch)?
            .first()
            .copied()
            .unwrap_or(Truth::Undefined))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int32Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn compiled_conditions_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RouteSet>();
        shareable::<RouteCondition>();
    }

    #[test]
    fn subexpressions_shared_by_routes_are_interned_once() {
        let set = RouteSet::compile([
            "$body.a = 1 AND x = 'y'",
            "$body.a = 1 OR z = 'q'",
            "$body.a = 1 AND x = 'y'",
        ])
        .expect("compiles");
        // `$body.a = 1` is shared by the AND and the OR, and the AND is the root of two routes:
        // each is computed once per batch, in its own stage (the AND reads `$body.a = 1`).
        assert_eq!(set.physical.materialized(), 2, "{:#?}", set.physical);
    }

    #[test]
    fn negative_zero_equals_zero_and_keeps_its_sign() {
        let mut message = Message::telemetry(br#"{"x": -0.0}"#.to_vec());
        message.system.content_type = Some("application/json".to_owned());
        message.system.content_encoding = Some("utf-8".to_owned());
        for (condition, expected) in [
            ("$body.x = 0", Truth::True),
            ("$body.x < 0", Truth::False),
            ("-($body.x) = 0", Truth::True),
            ("1 / $body.x < 0", Truth::True),
            ("0 / $body.x = 0", Truth::Undefined),
        ] {
            let compiled = compile(condition).expect("compiles");
            let truth = compiled.evaluate_message(&message).expect("evaluates");
            assert_eq!(truth, expected, "{condition}");
        }
    }

    #[test]
    fn zero_and_negative_zero_literals_are_not_shared() {
        let set = RouteSet::compile(["1 / 0 > 0", "1 / -0 > 0"]).expect("compiles");
        let batch =
            MessageBatchBuilder::batch_of(&[Message::telemetry(Vec::new())]).expect("batch");
        let truths = set.truths(&batch).expect("evaluates");
        assert_eq!(truths, [[Truth::True], [Truth::False]]);
    }

    #[test]
    fn a_batch_without_the_message_schema_is_rejected() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![1]))])
            .expect("valid batch");
        let set = RouteSet::compile(["true"]).expect("compiles");
        let error = set.evaluate(&batch).expect_err("wrong schema");
        assert!(matches!(error, Error::Batch { .. }), "{error}");
    }

    #[test]
    fn route_set_errors_name_the_failing_condition() {
        let error = RouteSet::compile(["true", "a = 1"]).expect_err("second is ill-typed");
        assert!(matches!(error, Error::Route { index: 1, .. }), "{error}");
        assert!(error.diagnostic().is_some());
    }

    #[test]
    fn outcome_masks_cover_every_row_and_count_undefined() {
        let messages: Vec<Message> = ["1", "2", ""]
            .iter()
            .map(|v| {
                let mut m = Message::telemetry(Vec::new());
                if !v.is_empty() {
                    m.application_properties = vec![("p".to_owned(), (*v).into())];
                }
                m
            })
            .collect();
        let batch = MessageBatchBuilder::batch_of(&messages).expect("batch");
        let set = RouteSet::compile(["p = '1'", "", "p != '1'"]).expect("compiles");
        let outcome = set.evaluate(&batch).expect("evaluates");
        let masks: Vec<Vec<bool>> = outcome
            .matched
            .iter()
            .map(|m| m.iter().map(|v| v.expect("no nulls")).collect())
            .collect();
        assert_eq!(
            masks,
            vec![
                vec![true, false, false],
                vec![true, true, true],
                vec![false, true, false]
            ]
        );
        assert_eq!(outcome.undefined, vec![1, 0, 1]);
    }
}
