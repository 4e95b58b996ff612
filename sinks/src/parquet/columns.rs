//! The schema of the Parquet files: every column of the message schema, then the configured typed
//! columns computed from JSON bodies.
//!
//! Keeping the raw message columns means a file is a lossless copy of what the hub delivered (body as
//! bytes, properties as maps); typed columns are a convenience for query engines and never replace
//! the raw body. Each body is parsed once per row, whatever the number of typed columns.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use hubroute_message::{MessageColumns, message_schema, timestamp_type};
use serde_json::Value;

use super::config::{TypedColumn, TypedColumnType};
use crate::json_path::JsonPath;
use crate::{Error, Result};

#[derive(Debug)]
struct Extractor {
    path: JsonPath,
    data_type: TypedColumnType,
}

/// The file schema and how to compute its extra columns.
#[derive(Debug)]
pub(crate) struct FileSchema {
    schema: SchemaRef,
    extractors: Vec<Extractor>,
}

impl FileSchema {
    pub(crate) fn new(sink: &str, columns: &[TypedColumn]) -> Result<Self> {
        let base = message_schema();
        let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut extractors = Vec::with_capacity(columns.len());
        for column in columns {
            if fields.iter().any(|f| f.name() == &column.name) {
                return Err(Error::Config {
                    sink: sink.to_owned(),
                    problem: format!(
                        "typed column `{}` clashes with another column; choose another name",
                        column.name
                    ),
                });
            }
            let path = JsonPath::parse(&column.path).map_err(|problem| Error::Config {
                sink: sink.to_owned(),
                problem: format!("typed column `{}`: {problem}", column.name),
            })?;
            let data_type = match column.data_type {
                TypedColumnType::Utf8 => DataType::Utf8,
                TypedColumnType::Int64 => DataType::Int64,
                TypedColumnType::Float64 => DataType::Float64,
                TypedColumnType::Boolean => DataType::Boolean,
                TypedColumnType::Timestamp => timestamp_type(),
            };
            fields.push(Field::new(&column.name, data_type, true));
            extractors.push(Extractor {
                path,
                data_type: column.data_type,
            });
        }
        Ok(Self {
            schema: Arc::new(Schema::new(fields)),
            extractors,
        })
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// `batch` (message schema) with the typed columns appended.
    pub(crate) fn project(&self, batch: &RecordBatch, sink: &str) -> Result<RecordBatch> {
        if self.extractors.is_empty() {
            return Ok(batch.clone());
        }
        let view = MessageColumns::try_new(batch)?;
        let mut builders: Vec<ColumnBuilder> = self
            .extractors
            .iter()
            .map(|e| ColumnBuilder::new(e.data_type))
            .collect();
        for row in 0..view.len() {
            let body: Option<Value> = serde_json::from_slice(view.body.value(row)).ok();
            for (extractor, builder) in self.extractors.iter().zip(&mut builders) {
                builder.append(body.as_ref().and_then(|b| extractor.path.get(b)));
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.extend(builders.iter_mut().map(ColumnBuilder::finish));
        RecordBatch::try_new(self.schema(), columns).map_err(|source| Error::Arrow {
            sink: sink.to_owned(),
            source,
        })
    }
}

/// The Arrow builder of one typed column, by type.
#[derive(Debug)]
enum ColumnBuilder {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
}

impl ColumnBuilder {
    fn new(data_type: TypedColumnType) -> Self {
        match data_type {
            TypedColumnType::Utf8 => Self::Utf8(StringBuilder::new()),
            TypedColumnType::Int64 => Self::Int64(Int64Builder::new()),
            TypedColumnType::Float64 => Self::Float64(Float64Builder::new()),
            TypedColumnType::Boolean => Self::Boolean(BooleanBuilder::new()),
            TypedColumnType::Timestamp => {
                Self::Timestamp(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            }
        }
    }

    /// Appends the value found at the column's path, or null when there is none or it does not
    /// fit the column's type (any JSON value fits a string column, as its JSON text).
    fn append(&mut self, value: Option<&Value>) {
        match self {
            Self::Utf8(b) => match value {
                Some(Value::String(s)) => b.append_value(s),
                Some(Value::Null) | None => b.append_null(),
                Some(other) => b.append_value(other.to_string()),
            },
            Self::Int64(b) => b.append_option(value.and_then(Value::as_i64)),
            Self::Float64(b) => b.append_option(value.and_then(Value::as_f64)),
            Self::Boolean(b) => b.append_option(value.and_then(Value::as_bool)),
            Self::Timestamp(b) => b.append_option(value.and_then(|v| {
                match v {
                    Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                        .ok()
                        .map(|t| t.timestamp_millis()),
                    other => other.as_i64(),
                }
            })),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
    use hubroute_message::{Message, MessageBatchBuilder};

    use super::*;

    fn column(name: &str, path: &str, data_type: TypedColumnType) -> TypedColumn {
        TypedColumn {
            name: name.into(),
            path: path.into(),
            data_type,
        }
    }

    #[test]
    fn typed_columns_are_extracted_from_json_bodies_and_null_otherwise() {
        let schema = FileSchema::new(
            "lake",
            &[
                column("t", "$.temperature", TypedColumnType::Float64),
                column("n", "$.readings[1]", TypedColumnType::Int64),
                column("id", "$.device.id", TypedColumnType::Utf8),
                column("at", "$.at", TypedColumnType::Timestamp),
                column("ok", "$.ok", TypedColumnType::Boolean),
            ],
        )
        .unwrap();
        let batch = MessageBatchBuilder::batch_of(&[
            Message::telemetry(
                r#"{"temperature":21.5,"readings":[1,7],"device":{"id":"p-1"},"at":"2026-01-01T00:00:00Z","ok":true}"#,
            ),
            Message::telemetry("not json"),
            Message::telemetry(r#"{"temperature":"hot","device":{"id":5},"at":1000,"ok":"yes"}"#),
        ])
        .unwrap();
        let out = schema.project(&batch, "lake").unwrap();
        assert_eq!(out.num_columns(), batch.num_columns() + 5);
        let t = out
            .column_by_name("t")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!((t.value(0), t.is_null(1), t.is_null(2)), (21.5, true, true));
        let n = out.column_by_name("n").unwrap().as_primitive::<Int64Type>();
        assert_eq!((n.value(0), n.is_null(2)), (7, true));
        let id = out.column_by_name("id").unwrap().as_string::<i32>();
        assert_eq!(
            (id.value(0), id.is_null(1), id.value(2)),
            ("p-1", true, "5")
        );
        let at = out
            .column_by_name("at")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>();
        assert_eq!((at.value(0), at.value(2)), (1_767_225_600_000, 1000));
        let ok = out.column_by_name("ok").unwrap().as_boolean();
        assert_eq!(
            (ok.value(0), ok.is_null(1), ok.is_null(2)),
            (true, true, true)
        );
    }

    #[test]
    fn a_typed_column_path_without_dollar_is_rejected_with_the_column_name() {
        let error = FileSchema::new("lake", &[column("t", "temperature", TypedColumnType::Utf8)])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("typed column `t`: `temperature` is not a JSON path"),
            "{error}"
        );
    }

    #[test]
    fn a_typed_column_may_not_shadow_a_message_column() {
        let error = FileSchema::new("lake", &[column("body", "$.x", TypedColumnType::Utf8)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("clashes"), "{error}");
    }
}
