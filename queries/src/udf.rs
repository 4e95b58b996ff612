//! Our own DataFusion scalar functions, for what IoT Hub does and DataFusion has no function for.
//!
//! * [`DynamicChild`]: the typed view of a dynamic value (`number`, `string` or `boolean` child),
//!   zero-copy, so typed DataFusion kernels apply to body and twin values;
//! * [`DynamicKindTest`]: `IS_DEFINED`, `IS_NULL`, `IS_ARRAY`, … of a dynamic value, and the
//!   "same JSON type" mask that lets `$body.x = 'a'` be a DataFusion `=` (see `physical.rs`);
//! * [`NanToUndefined`]: IoT Hub turns a `NaN` result into `undefined`;
//! * [`RowFunction`]: every other operator and function, applied row by row with the semantics of
//!   `value.rs`: comparisons of two dynamic values, `??`, `AS_NUMBER` and `SUBSTRING`.

use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, Float64Array};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{DataType, Float64Type};
use datafusion_common::{DataFusionError, Result, ScalarValue};
use datafusion_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::parser::BinaryOp;
use crate::repr::{self, Repr, Values};
use crate::value::{self, Kind, KindSet, Val};

fn wrong_argument(function: &str, value: &ColumnarValue) -> DataFusionError {
    DataFusionError::Internal(format!(
        "{function} got an argument of type {}",
        value.data_type()
    ))
}

/// The typed child of a dynamic value: valid where the value has the wanted JSON type.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DynamicChild {
    name: &'static str,
    repr: Repr,
    signature: Signature,
}

impl DynamicChild {
    pub(crate) fn udf(repr: Repr) -> Arc<ScalarUDF> {
        let name = match repr {
            Repr::Number => "dynamic_number",
            Repr::Str => "dynamic_string",
            Repr::Truth | Repr::Dynamic => "dynamic_boolean",
        };
        Arc::new(ScalarUDF::new_from_impl(Self {
            name,
            repr,
            signature: Signature::any(1, Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for DynamicChild {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.repr.data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match &args.args[0] {
            ColumnarValue::Array(array) => match array.as_struct_opt() {
                Some(dynamic) => Ok(ColumnarValue::Array(repr::child(dynamic, self.repr))),
                None => Err(wrong_argument(self.name, &args.args[0])),
            },
            scalar @ ColumnarValue::Scalar(_) => {
                let value = Values::of(scalar)?.get(0);
                let literal = if Some(value.kind()) == self.repr.kind() {
                    repr::scalar(&value).0
                } else {
                    repr::undefined(self.repr)
                };
                Ok(ColumnarValue::Scalar(literal))
            }
        }
    }
}

/// Whether a dynamic value's kind is in a set: `true`/`false` per row, or, with
/// `undefined_outside_primitives`, `NULL` where the value is `undefined`, an object or an array.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DynamicKindTest {
    name: String,
    kinds: KindSet,
    undefined_outside_primitives: bool,
    signature: Signature,
}

impl DynamicKindTest {
    /// The predicate `IS_DEFINED`, `IS_NULL`, …: whether the value's kind is in `kinds`.
    pub(crate) fn predicate(name: &str, kinds: KindSet) -> Arc<ScalarUDF> {
        Self::udf(format!("iothub_{name}"), kinds, false)
    }

    /// `true` where the value is a primitive of kind `kind`, `false` where it is another
    /// primitive (`null`, boolean, number, string), `NULL` elsewhere.
    pub(crate) fn same_primitive(kind: Kind) -> Arc<ScalarUDF> {
        let name = format!("dynamic_same_primitive_{kind:?}").to_lowercase();
        Self::udf(name, KindSet::of(&[kind]), true)
    }

    fn udf(name: String, kinds: KindSet, undefined_outside_primitives: bool) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(Self {
            name,
            kinds,
            undefined_outside_primitives,
            signature: Signature::any(1, Volatility::Immutable),
        }))
    }

    fn test(&self, kinds: &[u8]) -> BooleanArray {
        let holds =
            BooleanBuffer::collect_bool(kinds.len(), |row| self.kinds.contains_code(kinds[row]));
        let defined = self.undefined_outside_primitives.then(|| {
            NullBuffer::new(BooleanBuffer::collect_bool(kinds.len(), |row| {
                KindSet::PRIMITIVE.contains_code(kinds[row])
            }))
        });
        BooleanArray::new(holds, defined)
    }
}

impl ScalarUDFImpl for DynamicKindTest {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match &args.args[0] {
            ColumnarValue::Array(array) => match array.as_struct_opt() {
                Some(dynamic) => Ok(ColumnarValue::Array(Arc::new(
                    self.test(repr::kinds(dynamic)),
                ))),
                None => Err(wrong_argument(&self.name, &args.args[0])),
            },
            scalar @ ColumnarValue::Scalar(_) => {
                let kind = Values::of(scalar)?.get(0).kind();
                let result = self.test(&[kind.code()]);
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                    &result, 0,
                )?))
            }
        }
    }
}

/// `NaN` → `undefined` on a number column (IoT Hub never yields `NaN`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct NanToUndefined {
    signature: Signature,
}

impl NanToUndefined {
    pub(crate) fn udf() -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(Self {
            signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for NanToUndefined {
    fn name(&self) -> &str {
        "nan_to_undefined"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let defined = |n: f64| !n.is_nan();
        Ok(match &args.args[0] {
            ColumnarValue::Array(array) => {
                let numbers = array.as_primitive::<Float64Type>();
                if numbers.values().iter().all(|&n| defined(n)) {
                    ColumnarValue::Array(Arc::clone(array))
                } else {
                    let result: Float64Array =
                        numbers.iter().map(|n| n.filter(|&n| defined(n))).collect();
                    ColumnarValue::Array(Arc::new(result))
                }
            }
            ColumnarValue::Scalar(ScalarValue::Float64(n)) => {
                ColumnarValue::Scalar(ScalarValue::Float64(n.filter(|&n| defined(n))))
            }
            other => return Err(wrong_argument(self.name(), other)),
        })
    }
}

/// An operator or function applied row by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RowOp {
    Compare(BinaryOp),
    Coalesce,
    AsNumber,
    Sqrt,
    Power,
    Substring,
}

impl RowOp {
    fn apply<'a>(self, args: &[Val<'a>]) -> Val<'a> {
        match self {
            Self::Compare(op) => value::compare(op, &args[0], &args[1]),
            Self::Coalesce => value::coalesce(&args[0], &args[1]),
            Self::AsNumber => value::as_number(&args[0]),
            Self::Sqrt => value::sqrt(&args[0]),
            Self::Power => value::power(&args[0], &args[1]),
            Self::Substring => value::substring(args),
        }
    }
}

/// [`RowOp`] as a DataFusion function producing layout `output`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct RowFunction {
    name: String,
    op: RowOp,
    output: Repr,
    signature: Signature,
}

impl RowFunction {
    pub(crate) fn udf(op: RowOp, output: Repr) -> Arc<ScalarUDF> {
        let name = match op {
            RowOp::Compare(op) => format!("iothub_{op:?}"),
            other => format!("iothub_{other:?}"),
        }
        .to_lowercase();
        Arc::new(ScalarUDF::new_from_impl(Self {
            name,
            op,
            output,
            signature: Signature::variadic_any(Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for RowFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.output.data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let inputs = args
            .args
            .iter()
            .map(Values::of)
            .collect::<Result<Vec<_>>>()?;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let mut row_args: Vec<Val<'_>> = Vec::with_capacity(inputs.len());
        let results = (0..rows).map(|row| {
            row_args.clear();
            row_args.extend(inputs.iter().map(|input| input.get(row)));
            self.op.apply(&row_args)
        });
        let array = repr::build(self.output, rows, results);
        Ok(if all_scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
        } else {
            ColumnarValue::Array(array)
        })
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::ArrayRef;
    use arrow::datatypes::Field;
    use datafusion_common::config::ConfigOptions;

    use super::*;
    use crate::repr::DynamicBuilder;

    fn dynamic(values: &[Val<'_>]) -> ArrayRef {
        let mut builder = DynamicBuilder::with_capacity(values.len());
        values.iter().for_each(|v| builder.push(v));
        Arc::new(builder.finish())
    }

    fn invoke(udf: &ScalarUDF, args: Vec<ColumnarValue>, rows: usize) -> ColumnarValue {
        let arg_fields = args
            .iter()
            .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
            .collect();
        let return_type = udf.return_type(&[]).expect("fixed return type");
        udf.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(Field::new("r", return_type, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
        .expect("invokes")
    }

    #[test]
    fn same_primitive_is_true_false_or_undefined() {
        let values = [
            Val::Str("a".into()),
            Val::Number(1.0),
            Val::Null,
            Val::Undefined,
            Val::Object,
        ];
        let udf = DynamicKindTest::same_primitive(Kind::String);
        let result = invoke(
            &udf,
            vec![ColumnarValue::Array(dynamic(&values))],
            values.len(),
        );
        let array = result.to_array(values.len()).expect("array");
        let got: Vec<Option<bool>> = array.as_boolean().iter().collect();
        assert_eq!(got, vec![Some(true), Some(false), Some(false), None, None]);
    }

    #[test]
    fn dynamic_children_are_typed_views() {
        let values = [Val::Number(2.5), Val::Str("x".into()), Val::Bool(true)];
        let array = ColumnarValue::Array(dynamic(&values));
        let numbers = invoke(&DynamicChild::udf(Repr::Number), vec![array.clone()], 3);
        let numbers = numbers.to_array(3).expect("array");
        let got: Vec<Option<f64>> = numbers.as_primitive::<Float64Type>().iter().collect();
        assert_eq!(got, vec![Some(2.5), None, None]);
        let booleans = invoke(&DynamicChild::udf(Repr::Truth), vec![array], 3);
        let got: Vec<Option<bool>> = booleans
            .to_array(3)
            .expect("array")
            .as_boolean()
            .iter()
            .collect();
        assert_eq!(got, vec![None, None, Some(true)]);
    }

    #[test]
    fn nan_becomes_undefined() {
        let numbers = Float64Array::from(vec![Some(1.0), Some(f64::NAN), None, Some(-0.0)]);
        let result = invoke(
            &NanToUndefined::udf(),
            vec![ColumnarValue::Array(Arc::new(numbers))],
            4,
        );
        let got: Vec<Option<f64>> = result
            .to_array(4)
            .expect("array")
            .as_primitive::<Float64Type>()
            .iter()
            .collect();
        assert_eq!(got, vec![Some(1.0), None, None, Some(-0.0)]);
    }

    #[test]
    fn row_functions_over_scalars_stay_scalar() {
        let udf = RowFunction::udf(RowOp::AsNumber, Repr::Number);
        let result = invoke(
            &udf,
            vec![ColumnarValue::Scalar(ScalarValue::Utf8(Some(" 7 ".into())))],
            10,
        );
        assert!(matches!(result, ColumnarValue::Scalar(ScalarValue::Float64(Some(n))) if n == 7.0));
    }
}
