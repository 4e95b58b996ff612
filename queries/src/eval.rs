//! Compiled conditions and their evaluation over message batches.
//!
//! A [`RouteSet`] holds many conditions over one shared input [`Plan`]: per batch it parses each
//! referenced body/twin once and extracts every referenced input once. The conditions themselves
//! are interned into one [`Dag`] at compile time, so a subexpression that several routes share
//! (`$body.status = 'alarm'`, `as_number(severity)`) is evaluated once per batch, column-wise.
//! A [`RouteCondition`] is a set of one; single-message evaluation builds a one-row batch and runs
//! the very same code, so `route test` and the engine can never disagree.

use std::collections::HashMap;

use arrow::array::BooleanArray;
use arrow::buffer::BooleanBuffer;
use arrow::record_batch::RecordBatch;
use hubroute_message::{Message, MessageBatchBuilder, MessageColumns};

use crate::compile::{Node, Plan, lower};
use crate::error::{Error, Result};
use crate::extract::{extract, parse_documents};
use crate::parser::{BinaryOp, parse};
use crate::value::{self, Column, Function, Val};

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
    fn of(value: &Val<'_>) -> Self {
        match value {
            Val::Bool(true) => Self::True,
            Val::Undefined | Val::Null => Self::Undefined,
            _ => Self::False,
        }
    }

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
}

/// A node of the shared expression DAG; children are indices of earlier nodes.
#[derive(Debug)]
enum DagNode {
    Const(Val<'static>),
    Input(usize),
    Negate(usize),
    Not(usize),
    Binary(BinaryOp, usize, usize),
    Call(Function, Vec<usize>),
}

/// Every distinct subexpression of a route set, children before parents.
#[derive(Debug, Default)]
struct Dag {
    nodes: Vec<DagNode>,
    /// Structural key (the node's `Debug` text over child indices) → index.
    index: HashMap<String, usize>,
}

impl Dag {
    /// Adds `node` and its subtrees, reusing structurally equal nodes; returns its index.
    fn intern(&mut self, node: &Node) -> usize {
        let node = match node {
            Node::Const(value) => DagNode::Const(value.clone()),
            Node::Input(slot) => DagNode::Input(*slot),
            Node::Negate(operand) => DagNode::Negate(self.intern(operand)),
            Node::Not(operand) => DagNode::Not(self.intern(operand)),
            Node::Binary(op, left, right) => {
                let (left, right) = (self.intern(left), self.intern(right));
                DagNode::Binary(*op, left, right)
            }
            Node::Call(function, args) => {
                DagNode::Call(*function, args.iter().map(|a| self.intern(a)).collect())
            }
        };
        let key = format!("{node:?}");
        if let Some(&existing) = self.index.get(&key) {
            return existing;
        }
        self.nodes.push(node);
        self.index.insert(key, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// Evaluates every node over `inputs`, in order; `Input` nodes borrow their input.
    fn evaluate<'a>(&self, inputs: &[Column<'a>], rows: usize) -> Vec<Option<Column<'a>>> {
        let mut results: Vec<Option<Column<'a>>> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let column = evaluate_node(node, |i| column_of(&self.nodes, &results, inputs, i), rows);
            results.push(column);
        }
        results
    }
}

/// The column of node `index`: its input for an `Input` node, else its evaluated result.
fn column_of<'r, 'a>(
    nodes: &[DagNode],
    results: &'r [Option<Column<'a>>],
    inputs: &'r [Column<'a>],
    index: usize,
) -> &'r Column<'a> {
    match (&nodes[index], &results[index]) {
        (DagNode::Input(slot), _) => &inputs[*slot],
        (_, Some(column)) => column,
        (_, None) => unreachable!("children are evaluated before their parents"),
    }
}

/// Evaluates one node column-wise given its children's columns (`None` for an `Input` node).
fn evaluate_node<'r, 'a: 'r>(
    node: &DagNode,
    child: impl Fn(usize) -> &'r Column<'a>,
    rows: usize,
) -> Option<Column<'a>> {
    Some(match node {
        DagNode::Const(value) => Column::Scalar(value.clone()),
        DagNode::Input(_) => return None,
        DagNode::Negate(operand) => child(*operand).map(rows, value::negate),
        DagNode::Not(operand) => child(*operand).not(rows),
        DagNode::Binary(op, left, right) => {
            let (l, r) = (child(*left), child(*right));
            let op = *op;
            match op {
                BinaryOp::And => l.logic(r, rows, false),
                BinaryOp::Or => l.logic(r, rows, true),
                BinaryOp::Coalesce => l.zip(r, rows, value::coalesce),
                BinaryOp::Concat => l.zip(r, rows, value::concat),
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
                    l.zip(r, rows, |a, b| value::arithmetic(op, a, b))
                }
                _ => l.zip_truths(r, rows, |a, b| value::compare(op, a, b)),
            }
        }
        DagNode::Call(function, args) => {
            let columns: Vec<&Column<'a>> = args.iter().map(|a| child(*a)).collect();
            if columns.iter().all(|c| matches!(c, Column::Scalar(_))) {
                let values: Vec<&Val<'a>> = columns.iter().map(|c| c.get(0)).collect();
                Column::Scalar(value::call(*function, &values))
            } else {
                let mut values: Vec<&Val<'a>> = Vec::with_capacity(columns.len());
                let mut row_result = |row: usize| {
                    values.clear();
                    values.extend(columns.iter().map(|c| c.get(row)));
                    value::call(*function, &values)
                };
                if function.is_predicate() {
                    Column::Truths(
                        (0..rows)
                            .map(|row| value::truth_byte(&row_result(row)))
                            .collect(),
                    )
                } else {
                    Column::Rows((0..rows).map(row_result).collect())
                }
            }
        }
    })
}

/// Many compiled conditions sharing input extraction and common subexpressions.
#[derive(Debug)]
pub struct RouteSet {
    plan: Plan,
    dag: Dag,
    /// Root node of each condition; `None` for an empty condition, which is always true.
    routes: Vec<Option<usize>>,
}

impl RouteSet {
    /// Compiles many conditions at once; index-aligned with the input.
    pub fn compile<'a>(conditions: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut plan = Plan::default();
        let mut dag = Dag::default();
        let mut routes = Vec::new();
        for (index, condition) in conditions.into_iter().enumerate() {
            let node = compile_into(condition, &mut plan).map_err(|source| Error::Route {
                index,
                source: Box::new(source),
            })?;
            routes.push(node.map(|node| dag.intern(&node)));
        }
        Ok(Self { plan, dag, routes })
    }

    /// Number of conditions.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the set has no condition.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Evaluates every condition over a message batch.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<RouteSetOutcome> {
        let mut outcome = RouteSetOutcome {
            matched: Vec::with_capacity(self.routes.len()),
            undefined: Vec::with_capacity(self.routes.len()),
        };
        self.for_each_result(batch, |rows, column| {
            let truth = |row: usize| column.map_or(Truth::True, |c| Truth::of(c.get(row)));
            let matched = BooleanBuffer::collect_bool(rows, |row| truth(row) == Truth::True);
            let undefined = (0..rows)
                .filter(|&row| truth(row) == Truth::Undefined)
                .count();
            let matched = BooleanArray::new(matched, None);
            outcome.matched.push(matched);
            outcome.undefined.push(undefined);
        })?;
        Ok(outcome)
    }

    /// Evaluates every condition over a batch and reports each row's [`Truth`], per condition.
    pub fn truths(&self, batch: &RecordBatch) -> Result<Vec<Vec<Truth>>> {
        let mut out = Vec::with_capacity(self.routes.len());
        self.for_each_result(batch, |rows, column| {
            out.push(
                (0..rows)
                    .map(|row| column.map_or(Truth::True, |c| Truth::of(c.get(row))))
                    .collect(),
            );
        })?;
        Ok(out)
    }

    fn for_each_result(
        &self,
        batch: &RecordBatch,
        mut each: impl FnMut(usize, Option<&Column<'_>>),
    ) -> Result<()> {
        let columns = MessageColumns::try_new(batch)?;
        let rows = columns.len();
        let documents = parse_documents(&columns, &self.plan);
        let inputs = extract(&columns, &documents, &self.plan);
        let results = self.dag.evaluate(&inputs, rows);
        for route in &self.routes {
            match route {
                Some(root) => each(
                    rows,
                    Some(column_of(&self.dag.nodes, &results, &inputs, *root)),
                ),
                None => each(rows, None),
            }
        }
        Ok(())
    }
}

fn compile_into(condition: &str, plan: &mut Plan) -> Result<Option<Node>> {
    parse(condition)?
        .map(|expr| lower(condition, &expr, plan))
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
    let mut plan = Plan::default();
    let mut dag = Dag::default();
    let node = compile_into(condition, &mut plan)?;
    let routes = vec![node.map(|node| dag.intern(&node))];
    Ok(RouteCondition {
        set: RouteSet { plan, dag, routes },
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
        // First route: a, 1, a = 1, x, 'y', x = 'y', AND (7). The second adds z, 'q', z = 'q', OR
        // (4); the third is the first again (0).
        assert_eq!(set.dag.nodes.len(), 11);
        assert_eq!(set.routes[0], set.routes[2]);
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
