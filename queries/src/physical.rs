//! A route set's conditions as DataFusion physical expressions, with shared subexpressions
//! evaluated once per batch.
//!
//! All conditions of a route set are first interned into one [`Dag`]: a subexpression several
//! routes contain (`$body.status = 'alarm'`, `as_number(severity)`) is one node. Lowering then turns
//! the DAG into DataFusion [`PhysicalExpr`]s the way DataFusion's own common-subexpression
//! elimination does: every non-trivial node with more than one use is *materialized*, computed as an
//! extra column in a projection stage, and the expressions above it read that column. A node's stage
//! is one more than the deepest materialized node below it, so a batch goes through a handful of
//! stages and then every route's expression.
//!
//! Operators map onto DataFusion with the layouts of `repr.rs`: comparisons of typed values,
//! `AND`/`OR`/`NOT`, arithmetic and `||` are DataFusion's `BinaryExpr`/`NotExpr`/`NegativeExpr`;
//! math and string functions are `datafusion-functions` where their semantics are IoT Hub's; the
//! rest are our functions of `udf.rs`. A dynamic value compared with a literal is the typed child
//! compared by DataFusion, fixed up by a "same JSON type" mask (`x = lit` is
//! `(child = lit) AND same`, `x != lit` is `(child != lit) OR NOT same`).
//!
//! Arithmetic that yields `NaN` (`0 / 0`, `x % 0`, `inf - inf`) yields `undefined` instead.
//! DataFusion's comparisons treat `-0` as `0` (Arrow alone orders floats by IEEE total order), as
//! IoT Hub's .NET comparisons do.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion_common::config::ConfigOptions;
use datafusion_common::{Result, ScalarValue};
use datafusion_expr::{ColumnarValue, Operator, ScalarUDF};
use datafusion_physical_expr::PhysicalExpr;
use datafusion_physical_expr::ScalarFunctionExpr;
use datafusion_physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, IsNotNullExpr, Literal, NegativeExpr, NotExpr,
};
use datafusion_physical_expr::utils::{collect_columns, reassign_expr_columns};

use crate::check::Node;
use crate::parser::BinaryOp;
use crate::repr::{self, Repr};
use crate::udf::{DynamicChild, DynamicKindTest, NanToUndefined, RowFunction, RowOp};
use crate::value::{Function, Kind, KindSet, Val};

/// A literal in the DAG. Two literals are the same node when they are the same value of the same
/// kind, numbers bit for bit: `0` and `-0` stay apart (`1 / -0` is `-Infinity`).
#[derive(Debug, Clone)]
pub(crate) struct Constant(Val<'static>);

impl Constant {
    /// Everything that tells one literal from another: its kind, and the bits of a number, the
    /// value of a boolean or the text of a string.
    fn identity(&self) -> (Kind, u64, &str) {
        match &self.0 {
            Val::Bool(b) => (Kind::Bool, u64::from(*b), ""),
            Val::Number(n) => (Kind::Number, n.to_bits(), ""),
            Val::Str(s) => (Kind::String, 0, s),
            other @ (Val::Undefined | Val::Null | Val::Object | Val::Array) => {
                (other.kind(), 0, "")
            }
        }
    }
}

impl PartialEq for Constant {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for Constant {}

impl Hash for Constant {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// A node of the shared expression DAG; children are indices of earlier nodes, so structural
/// equality of nodes is equality of the subexpressions they stand for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum DagNode {
    Const(Constant),
    Input(usize),
    Negate(usize),
    Not(usize),
    Binary(BinaryOp, usize, usize),
    Call(Function, Vec<usize>),
}

/// Every distinct subexpression of a route set, children before parents.
#[derive(Debug, Default)]
pub(crate) struct Dag {
    pub(crate) nodes: Vec<DagNode>,
    /// Node → its index in `nodes`.
    index: HashMap<DagNode, usize>,
}

impl Dag {
    /// Adds `node` and its subtrees, reusing structurally equal nodes; returns its index.
    pub(crate) fn intern(&mut self, node: &Node) -> usize {
        let node = match node {
            Node::Const(value) => DagNode::Const(Constant(value.clone())),
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
        if let Some(&existing) = self.index.get(&node) {
            return existing;
        }
        self.nodes.push(node.clone());
        self.index.insert(node, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn children(node: &DagNode) -> Vec<usize> {
        match node {
            DagNode::Const(_) | DagNode::Input(_) => Vec::new(),
            DagNode::Negate(x) | DagNode::Not(x) => vec![*x],
            DagNode::Binary(_, l, r) => vec![*l, *r],
            DagNode::Call(_, args) => args.clone(),
        }
    }
}

/// An expression over just the columns it reads.
///
/// Each expression gets a batch of only its own columns (as under a DataFusion `ProjectionExec`):
/// DataFusion's short-circuiting `AND`/`OR` filters the whole batch it is given before evaluating
/// the right side, which over every input and shared column would cost more than the conditions.
#[derive(Debug)]
struct Projected {
    expr: Arc<dyn PhysicalExpr>,
    /// Indexes of the columns read, in the plan's column numbering.
    columns: Vec<usize>,
    schema: SchemaRef,
}

impl Projected {
    fn new(expr: Arc<dyn PhysicalExpr>, fields: &[Field]) -> Result<Self> {
        let mut columns: Vec<usize> = collect_columns(&expr).iter().map(Column::index).collect();
        columns.sort_unstable();
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|&c| fields[c].clone())
                .collect::<Vec<_>>(),
        ));
        let expr = reassign_expr_columns(expr, &schema)?;
        Ok(Self {
            expr,
            columns,
            schema,
        })
    }

    fn evaluate(
        &self,
        columns: &[ArrayRef],
        options: &RecordBatchOptions,
    ) -> Result<ColumnarValue> {
        let own = self
            .columns
            .iter()
            .map(|&c| Arc::clone(&columns[c]))
            .collect();
        let batch = RecordBatch::try_new_with_options(Arc::clone(&self.schema), own, options)?;
        self.expr.evaluate(&batch)
    }
}

/// The compiled physical plan of a route set.
#[derive(Debug)]
pub(crate) struct PhysicalPlan {
    /// Projection stages: each stage's expressions read the inputs and earlier stages' outputs,
    /// and each result is appended as a column.
    stages: Vec<Vec<Projected>>,
    /// Per route: its expression, `None` for an empty (always true) condition.
    routes: Vec<Option<Projected>>,
}

impl PhysicalPlan {
    /// Lowers the DAG; `inputs` is the layout of each input slot, `roots` each route's root node.
    pub(crate) fn new(dag: &Dag, inputs: &[Repr], roots: &[Option<usize>]) -> Result<Self> {
        let nodes = &dag.nodes;
        let mut uses = vec![0_usize; nodes.len()];
        for node in nodes {
            Dag::children(node).into_iter().for_each(|c| uses[c] += 1);
        }
        roots.iter().flatten().for_each(|&r| uses[r] += 1);
        let materialized: Vec<bool> = nodes
            .iter()
            .zip(&uses)
            .map(|(node, &uses)| uses > 1 && !matches!(node, DagNode::Const(_) | DagNode::Input(_)))
            .collect();
        // The deepest materialized stage below each node (children come before parents).
        let mut below = vec![0_usize; nodes.len()];
        let mut stage_of = vec![0_usize; nodes.len()];
        for (index, node) in nodes.iter().enumerate() {
            below[index] = Dag::children(node)
                .into_iter()
                .map(|c| {
                    if materialized[c] {
                        stage_of[c]
                    } else {
                        below[c]
                    }
                })
                .max()
                .unwrap_or(0);
            if materialized[index] {
                stage_of[index] = below[index] + 1;
            }
        }
        let stage_count = stage_of.iter().copied().max().unwrap_or(0);

        let mut lowering = Lowering {
            nodes,
            fields: inputs
                .iter()
                .enumerate()
                .map(|(i, r)| Field::new(format!("slot_{i}"), r.data_type(), true))
                .collect(),
            columns: HashMap::new(),
            config: Arc::new(ConfigOptions::default()),
        };
        let mut stages = Vec::with_capacity(stage_count);
        for stage in 1..=stage_count {
            let members: Vec<usize> = (0..nodes.len())
                .filter(|&n| materialized[n] && stage_of[n] == stage)
                .collect();
            let lowered = members
                .iter()
                .map(|&node| lowering.lower(node))
                .collect::<Result<Vec<_>>>()?;
            let exprs = lowered
                .iter()
                .map(|l| Projected::new(Arc::clone(&l.expr), &lowering.fields))
                .collect::<Result<_>>()?;
            for (node, lowered) in members.into_iter().zip(lowered) {
                lowering.materialize(node, lowered.repr);
            }
            stages.push(exprs);
        }
        let routes = roots
            .iter()
            .map(|root| {
                root.map(|r| {
                    let lowered = lowering.lower(r)?;
                    Projected::new(lowered.expr, &lowering.fields)
                })
                .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(Self { stages, routes })
    }

    /// Number of routes.
    pub(crate) fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// How many subexpressions are computed once and shared.
    #[cfg(test)]
    pub(crate) fn materialized(&self) -> usize {
        self.stages.iter().map(Vec::len).sum()
    }

    /// Evaluates every route over the input columns; `None` for an always-true route.
    pub(crate) fn evaluate(
        &self,
        mut columns: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<Vec<Option<ColumnarValue>>> {
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        for stage in &self.stages {
            let outputs = stage
                .iter()
                .map(|expr| expr.evaluate(&columns, &options)?.into_array(rows))
                .collect::<Result<Vec<_>>>()?;
            columns.extend(outputs);
        }
        self.routes
            .iter()
            .map(|route| {
                route
                    .as_ref()
                    .map(|e| e.evaluate(&columns, &options))
                    .transpose()
            })
            .collect()
    }
}

/// A lowered node: its expression and the layout of its values.
#[derive(Debug, Clone)]
struct Lowered {
    expr: Arc<dyn PhysicalExpr>,
    repr: Repr,
}

impl Lowered {
    fn ok(expr: Arc<dyn PhysicalExpr>, repr: Repr) -> Result<Self> {
        Ok(Self { expr, repr })
    }
}

/// Turns DAG nodes into DataFusion expressions over the columns available so far.
struct Lowering<'d> {
    nodes: &'d [DagNode],
    /// Columns available to the expressions being lowered: inputs, then materialized nodes.
    fields: Vec<Field>,
    /// Materialized node → its column.
    columns: HashMap<usize, usize>,
    config: Arc<ConfigOptions>,
}

fn literal(value: ScalarValue) -> Arc<dyn PhysicalExpr> {
    Arc::new(Literal::new(value))
}

fn binary(
    left: Arc<dyn PhysicalExpr>,
    op: Operator,
    right: Arc<dyn PhysicalExpr>,
) -> Arc<dyn PhysicalExpr> {
    Arc::new(BinaryExpr::new(left, op, right))
}

/// DataFusion's operator for a comparison (`compare` is only called with comparisons).
fn comparison_operator(op: BinaryOp) -> Operator {
    match op {
        BinaryOp::Eq => Operator::Eq,
        BinaryOp::NotEq => Operator::NotEq,
        BinaryOp::Lt => Operator::Lt,
        BinaryOp::LtEq => Operator::LtEq,
        BinaryOp::Gt => Operator::Gt,
        BinaryOp::GtEq => Operator::GtEq,
        other => unreachable!("`{}` is not a comparison", other.symbol()),
    }
}

/// `a op b` as `b op' a`.
fn flipped(op: BinaryOp) -> BinaryOp {
    match op {
        BinaryOp::Lt => BinaryOp::Gt,
        BinaryOp::LtEq => BinaryOp::GtEq,
        BinaryOp::Gt => BinaryOp::Lt,
        BinaryOp::GtEq => BinaryOp::LtEq,
        other => other,
    }
}

/// Whether `expr` is a literal that is not `undefined`.
fn defined_literal(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.downcast_ref::<Literal>()
        .is_some_and(|l| !l.value().is_null())
}

impl Lowering<'_> {
    fn materialize(&mut self, node: usize, repr: Repr) {
        self.columns.insert(node, self.fields.len());
        self.fields
            .push(Field::new(format!("node_{node}"), repr.data_type(), true));
    }

    fn column(&self, index: usize) -> Lowered {
        let field = &self.fields[index];
        let repr = Repr::of(field.data_type()).unwrap_or(Repr::Dynamic);
        Lowered {
            expr: Arc::new(Column::new(field.name(), index)),
            repr,
        }
    }

    fn call(
        &self,
        function: Arc<ScalarUDF>,
        args: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let schema = Schema::new(self.fields.clone());
        let expr = ScalarFunctionExpr::try_new(function, args, &schema, Arc::clone(&self.config))?;
        Ok(Arc::new(expr))
    }

    /// `x` in layout `want` (`Truth`, `Number` or `Str`): a dynamic value's typed child, or
    /// `undefined` for a value of another static type.
    fn typed(&self, x: &Lowered, want: Repr) -> Result<Arc<dyn PhysicalExpr>> {
        if x.repr == want {
            Ok(Arc::clone(&x.expr))
        } else if x.repr == Repr::Dynamic {
            self.call(DynamicChild::udf(want), vec![Arc::clone(&x.expr)])
        } else {
            Ok(literal(repr::undefined(want)))
        }
    }

    fn nan_to_undefined(&self, number: Arc<dyn PhysicalExpr>) -> Result<Lowered> {
        Lowered::ok(
            self.call(NanToUndefined::udf(), vec![number])?,
            Repr::Number,
        )
    }

    fn row_function(&self, op: RowOp, output: Repr, args: &[Lowered]) -> Result<Lowered> {
        let args = args.iter().map(|a| Arc::clone(&a.expr)).collect();
        Lowered::ok(self.call(RowFunction::udf(op, output), args)?, output)
    }

    fn lower(&self, node: usize) -> Result<Lowered> {
        if let Some(&column) = self.columns.get(&node) {
            return Ok(self.column(column));
        }
        match &self.nodes[node] {
            DagNode::Const(Constant(value)) => {
                let (value, repr) = repr::scalar(value);
                Lowered::ok(literal(value), repr)
            }
            DagNode::Input(slot) => Ok(self.column(*slot)),
            DagNode::Negate(operand) => {
                let operand = self.typed(&self.lower(*operand)?, Repr::Number)?;
                Lowered::ok(Arc::new(NegativeExpr::new(operand)), Repr::Number)
            }
            DagNode::Not(operand) => {
                let operand = self.typed(&self.lower(*operand)?, Repr::Truth)?;
                Lowered::ok(Arc::new(NotExpr::new(operand)), Repr::Truth)
            }
            DagNode::Binary(op, left, right) => {
                self.binary(*op, &self.lower(*left)?, &self.lower(*right)?)
            }
            DagNode::Call(function, args) => {
                let args = args
                    .iter()
                    .map(|a| self.lower(*a))
                    .collect::<Result<Vec<_>>>()?;
                self.function(*function, &args)
            }
        }
    }

    fn binary(&self, op: BinaryOp, left: &Lowered, right: &Lowered) -> Result<Lowered> {
        let typed_pair =
            |repr: Repr| -> Result<_> { Ok((self.typed(left, repr)?, self.typed(right, repr)?)) };
        match op {
            BinaryOp::And | BinaryOp::Or => {
                let (l, r) = typed_pair(Repr::Truth)?;
                let op = if op == BinaryOp::And {
                    Operator::And
                } else {
                    Operator::Or
                };
                Lowered::ok(binary(l, op, r), Repr::Truth)
            }
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
                let (l, r) = typed_pair(Repr::Number)?;
                let op = match op {
                    BinaryOp::Add => Operator::Plus,
                    BinaryOp::Sub => Operator::Minus,
                    BinaryOp::Mul => Operator::Multiply,
                    BinaryOp::Div => Operator::Divide,
                    _ => Operator::Modulo,
                };
                self.nan_to_undefined(binary(l, op, r))
            }
            BinaryOp::Concat => {
                let (l, r) = typed_pair(Repr::Str)?;
                Lowered::ok(binary(l, Operator::StringConcat, r), Repr::Str)
            }
            BinaryOp::Coalesce => {
                let output = if left.repr == right.repr {
                    left.repr
                } else {
                    Repr::Dynamic
                };
                self.row_function(RowOp::Coalesce, output, &[left.clone(), right.clone()])
            }
            BinaryOp::Eq
            | BinaryOp::NotEq
            | BinaryOp::Lt
            | BinaryOp::LtEq
            | BinaryOp::Gt
            | BinaryOp::GtEq => self.compare(op, left, right),
        }
    }

    fn compare(&self, op: BinaryOp, left: &Lowered, right: &Lowered) -> Result<Lowered> {
        let equality = matches!(op, BinaryOp::Eq | BinaryOp::NotEq);
        match (left.repr, right.repr) {
            (Repr::Truth, Repr::Truth) if !equality => {
                Lowered::ok(literal(ScalarValue::Boolean(None)), Repr::Truth)
            }
            (l, r) if l == r && l != Repr::Dynamic => {
                let (l, r) = (Arc::clone(&left.expr), Arc::clone(&right.expr));
                Lowered::ok(binary(l, comparison_operator(op), r), Repr::Truth)
            }
            (Repr::Dynamic, r) if r != Repr::Dynamic && defined_literal(&right.expr) => {
                self.dynamic_against_literal(op, left, right)
            }
            (l, Repr::Dynamic) if l != Repr::Dynamic && defined_literal(&left.expr) => {
                self.dynamic_against_literal(flipped(op), right, left)
            }
            _ => self.row_function(
                RowOp::Compare(op),
                Repr::Truth,
                &[left.clone(), right.clone()],
            ),
        }
    }

    /// `dynamic op literal` with DataFusion's typed comparison on the dynamic value's child.
    fn dynamic_against_literal(
        &self,
        op: BinaryOp,
        dynamic: &Lowered,
        literal_side: &Lowered,
    ) -> Result<Lowered> {
        let literal_repr = literal_side.repr;
        let Some(literal_kind) = literal_repr.kind() else {
            let args = [dynamic.clone(), literal_side.clone()];
            return self.row_function(RowOp::Compare(op), Repr::Truth, &args);
        };
        let truth = |expr| Lowered::ok(expr, Repr::Truth);
        if literal_repr == Repr::Truth && !matches!(op, BinaryOp::Eq | BinaryOp::NotEq) {
            return truth(literal(ScalarValue::Boolean(None)));
        }
        let compared = binary(
            self.typed(dynamic, literal_repr)?,
            comparison_operator(op),
            Arc::clone(&literal_side.expr),
        );
        let same = || {
            self.call(
                DynamicKindTest::same_primitive(literal_kind),
                vec![Arc::clone(&dynamic.expr)],
            )
        };
        match op {
            BinaryOp::Eq => truth(binary(compared, Operator::And, same()?)),
            BinaryOp::NotEq => truth(binary(
                compared,
                Operator::Or,
                Arc::new(NotExpr::new(same()?)),
            )),
            _ => truth(compared),
        }
    }

    fn function(&self, function: Function, args: &[Lowered]) -> Result<Lowered> {
        use datafusion_functions::{math, string, unicode};
        let number = |i: usize| self.typed(&args[i], Repr::Number);
        let string = |i: usize| self.typed(&args[i], Repr::Str);
        // Of a number that is not NaN, none of these is NaN.
        let math_of = |f: Arc<ScalarUDF>, args: Vec<Arc<dyn PhysicalExpr>>| -> Result<Lowered> {
            Lowered::ok(self.call(f, args)?, Repr::Number)
        };
        let typed_result = Lowered::ok;
        let is_one_of = |kinds| self.kind_test(function, kinds, &args[0]);
        match function {
            Function::Abs => math_of(math::abs(), vec![number(0)?]),
            Function::Exp => math_of(math::exp(), vec![number(0)?]),
            Function::Ceiling => math_of(math::ceil(), vec![number(0)?]),
            Function::Floor => math_of(math::floor(), vec![number(0)?]),
            Function::Sign => math_of(math::signum(), vec![number(0)?]),
            Function::Square => typed_result(
                binary(number(0)?, Operator::Multiply, number(0)?),
                Repr::Number,
            ),
            Function::AsNumber if args[0].repr == Repr::Number => Ok(args[0].clone()),
            Function::IsArray => is_one_of(KindSet::of(&[Kind::Array])),
            Function::IsBool => is_one_of(KindSet::of(&[Kind::Bool])),
            Function::IsDefined => is_one_of(KindSet::DEFINED),
            Function::IsNull => is_one_of(KindSet::of(&[Kind::Null])),
            Function::IsNumber => is_one_of(KindSet::of(&[Kind::Number])),
            Function::IsObject => is_one_of(KindSet::of(&[Kind::Object])),
            Function::IsPrimitive => is_one_of(KindSet::PRIMITIVE),
            Function::IsString => is_one_of(KindSet::of(&[Kind::String])),
            Function::Concat => {
                let mut joined = string(0)?;
                for i in 1..args.len() {
                    joined = binary(joined, Operator::StringConcat, string(i)?);
                }
                typed_result(joined, Repr::Str)
            }
            Function::Length => {
                let length = self.call(unicode::character_length(), vec![string(0)?])?;
                typed_result(
                    Arc::new(CastExpr::new(length, DataType::Float64, None)),
                    Repr::Number,
                )
            }
            Function::Lower => {
                typed_result(self.call(string::lower(), vec![string(0)?])?, Repr::Str)
            }
            Function::Upper => {
                typed_result(self.call(string::upper(), vec![string(0)?])?, Repr::Str)
            }
            Function::IndexOf => {
                let position = self.call(unicode::strpos(), vec![string(0)?, string(1)?])?;
                let position: Arc<dyn PhysicalExpr> =
                    Arc::new(CastExpr::new(position, DataType::Float64, None));
                typed_result(
                    binary(
                        position,
                        Operator::Minus,
                        literal(ScalarValue::Float64(Some(1.0))),
                    ),
                    Repr::Number,
                )
            }
            Function::StartsWith => typed_result(
                self.call(string::starts_with(), vec![string(0)?, string(1)?])?,
                Repr::Truth,
            ),
            Function::EndsWith => typed_result(
                self.call(string::ends_with(), vec![string(0)?, string(1)?])?,
                Repr::Truth,
            ),
            Function::Contains => typed_result(
                self.call(string::contains(), vec![string(0)?, string(1)?])?,
                Repr::Truth,
            ),
            Function::AsNumber => self.row_function(RowOp::AsNumber, Repr::Number, args),
            // DataFusion's `sqrt` and `power` fail where IoT Hub yields `undefined` or infinity.
            Function::Sqrt => self.row_function(RowOp::Sqrt, Repr::Number, args),
            Function::Power => self.row_function(RowOp::Power, Repr::Number, args),
            Function::Substring => self.row_function(RowOp::Substring, Repr::Str, args),
        }
    }

    /// `IS_DEFINED`, `IS_NULL`, `IS_STRING`, …: the value's kind is in `kinds`.
    fn kind_test(&self, function: Function, kinds: KindSet, arg: &Lowered) -> Result<Lowered> {
        let expr = match arg.repr.kind() {
            None => {
                let name = format!("{function:?}").to_lowercase();
                self.call(
                    DynamicKindTest::predicate(&name, kinds),
                    vec![Arc::clone(&arg.expr)],
                )?
            }
            // A typed value is `undefined` (NULL) or of its kind.
            Some(kind) if kinds.contains(kind) => {
                Arc::new(IsNotNullExpr::new(Arc::clone(&arg.expr)))
            }
            Some(_) => literal(ScalarValue::Boolean(Some(false))),
        };
        Lowered::ok(expr, Repr::Truth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_one_node_exactly_when_they_are_the_same_value() {
        let cases = [
            (Val::Number(2.5), Val::Number(2.5), true),
            (Val::Number(0.0), Val::Number(-0.0), false),
            (Val::Number(1.0), Val::Str("1".into()), false),
            (Val::Number(1.0), Val::Bool(true), false),
            (Val::Bool(true), Val::Bool(true), true),
            (Val::Bool(true), Val::Bool(false), false),
            (Val::Str("a".into()), Val::Str("a".into()), true),
            (Val::Str("a".into()), Val::Str("a ".into()), false),
            (Val::Str(String::new().into()), Val::Null, false),
            (Val::Null, Val::Undefined, false),
            (Val::Undefined, Val::Undefined, true),
        ];
        for (a, b, same) in cases {
            let mut dag = Dag::default();
            let (x, y) = (
                dag.intern(&Node::Const(a.clone())),
                dag.intern(&Node::Const(b.clone())),
            );
            assert_eq!(x == y, same, "{a:?} and {b:?}");
        }
    }

    #[test]
    fn equal_subtrees_are_one_node_and_different_ones_are_not() {
        let compare = |slot: usize, value: f64| {
            Node::Binary(
                BinaryOp::Gt,
                Box::new(Node::Input(slot)),
                Box::new(Node::Const(Val::Number(value))),
            )
        };
        let mut dag = Dag::default();
        let first = dag.intern(&compare(0, 30.0));
        assert_eq!(dag.intern(&compare(0, 30.0)), first);
        assert_ne!(dag.intern(&compare(1, 30.0)), first);
        assert_ne!(dag.intern(&compare(0, 31.0)), first);
        let negated = dag.intern(&Node::Not(Box::new(compare(0, 30.0))));
        assert_eq!(dag.nodes[negated], DagNode::Not(first));
        // Inputs 0 and 1, literals 30 and 31, three comparisons and the NOT.
        assert_eq!(dag.nodes.len(), 8, "{:#?}", dag.nodes);
    }
}
