//! Reading the Parquet sink's files back into message batches, for `hubroute route test --input`.
//!
//! A file holds every column of the message schema (then the configured typed columns, which are
//! dropped here), with the Arrow schema embedded by the writer, so the message columns come back
//! with their Arrow types: the batches are message batches as the engine routed them. A file
//! without one of the columns is not one of ours, and the error names the file and the column.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use hubroute_message::message_schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::{Error, Result};

/// Reads the hubroute Parquet file `bytes`, handing `emit` message batches of at most
/// `batch_rows` rows; returns the number of rows. `file` names the file in errors.
pub fn read_parquet_file(
    file: &str,
    bytes: Bytes,
    batch_rows: usize,
    mut emit: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<usize> {
    let parquet_error = |source: parquet::errors::ParquetError| Error::Archive {
        file: file.to_owned(),
        record: 0,
        problem: format!("not a readable Parquet file: {source}"),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(parquet_error)?
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(parquet_error)?;
    let schema = message_schema();
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|source| Error::Archive {
            file: file.to_owned(),
            record: rows + 1,
            problem: format!("unreadable Parquet data: {source}"),
        })?;
        let file_schema = batch.schema();
        let columns = schema
            .fields()
            .iter()
            .map(|field| {
                let index = file_schema
                    .index_of(field.name())
                    .map_err(|_| Error::Archive {
                        file: file.to_owned(),
                        record: 0,
                        problem: format!(
                            "not a hubroute Parquet file: it has no `{}` column",
                            field.name()
                        ),
                    })?;
                Ok(Arc::clone(batch.column(index)))
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let message_batch =
            RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|source| {
                Error::Archive {
                    file: file.to_owned(),
                    record: rows + 1,
                    problem: format!(
                        "its columns do not have the message schema's types: {source}"
                    ),
                }
            })?;
        rows += message_batch.num_rows();
        emit(message_batch)?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt as _;
    use hubroute_message::{Message, MessageBatchBuilder};
    use object_store::ObjectStoreExt as _;
    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        FlushReason, ObjectStoreConfig, ParquetSink, ParquetSinkConfig, Sink, SinkBatch,
        TypedColumn, TypedColumnType,
    };

    #[tokio::test]
    async fn the_sinks_files_read_back_as_the_batches_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStoreConfig::Local {
            root: dir.path().to_owned(),
        };
        let mut config = ParquetSinkConfig::new("lake", store.clone());
        config.columns = vec![TypedColumn {
            name: "temperature".into(),
            path: "$.t".into(),
            data_type: TypedColumnType::Float64,
        }];
        let messages: Vec<Message> = (0..25)
            .map(|n| {
                let mut m = Message::telemetry(format!(r#"{{"t":{n}}}"#));
                m.sequence_number = n;
                m.system.message_id = Some(format!("m{n}"));
                m.twin = Some(format!(r#"{{"tags":{{"n":{}}}}}"#, n % 3));
                m
            })
            .collect();
        let written = MessageBatchBuilder::batch_of(&messages).unwrap();
        let (acks, _rx) = mpsc::channel(4);
        let mut sink = ParquetSink::new(config, acks).unwrap();
        sink.write(SinkBatch {
            ticket: 1,
            batch: written.clone(),
        })
        .await
        .unwrap();
        sink.flush(FlushReason::Shutdown).await.unwrap();
        let store = store.build("t").unwrap();
        let files: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert_eq!(files.len(), 1);
        let bytes = store
            .get(&files[0].location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut read = Vec::new();
        let rows = read_parquet_file("lake.parquet", bytes, 10, |b| {
            read.push(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, 25);
        assert_eq!(
            read.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let read = arrow::compute::concat_batches(&message_schema(), &read).unwrap();
        assert_eq!(read, written);

        let error = read_parquet_file(
            "notes.parquet",
            Bytes::from_static(b"PAR1 not really"),
            10,
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("notes.parquet: record 0: not a readable Parquet file"),
            "{error}"
        );
    }
}
